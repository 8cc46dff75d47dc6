"""The training SSD on one GPU: H1R's grouped chunked SSD (h1r.model.ssd_packed) against fla's parallel
simple-GLA kernels (what training used before), over packed documents.

    python bench/ssd_train_gpu.py [--tokens 16384] [--shapes falcon-h1-1.5b-deep] [--scan] [--fused] [--profile]
                                  [--out bench/results/ssd_train_gpu.json]

First checks the bf16 path (its elementwise pieces compiled, the default on CUDA) against the fp32 path
(tested against an fp64 recurrence in tests/test_ssd_packed.py) and against fla, values and gradients;
then times forward (under no_grad: for fla that is its chunked forward) and forward+backward (fla: parallel)
for the Falcon-H1-1.5B-deep and -7B SSD shapes at several chunk lengths (the algorithm is exact for any
chunk length, so it is a speed knob). FLOPs per call (what the chunked form must do, fwd):
    C.B per group 2*T*Q*N*G + intra 2*T*Q*P*H + states 2*T*N*P*H + state passing 2*nc^2*N*P*H + output 2*T*N*P*H
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h1r.model.ssd_packed as SP  # noqa: E402
from train_gpu import documents  # noqa: E402  (bench/ is the script's directory)
from h1r.model.ssd_packed import doc_ids_from_cu, ssd_packed  # noqa: E402

SHAPES = {"falcon-h1-1.5b-deep": dict(H=24, P=64, N=256, G=1), "falcon-h1-7b": dict(H=24, P=128, N=256, G=1)}


def inputs(lens, H, P, N, G, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    x = torch.randn(T, H, P, generator=g).to(dev, torch.bfloat16)
    dt = F.softplus(torch.randn(T, H, generator=g) - 2).to(dev)
    A = -(torch.rand(H, generator=g) * 4 + 0.5).to(dev)
    B = (torch.randn(T, G, N, generator=g) * N ** -0.5).to(dev, torch.bfloat16)
    C = (torch.randn(T, G, N, generator=g) * N ** -0.5).to(dev, torch.bfloat16)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=dev, dtype=torch.int32)
    return x, dt, A, B, C, cu


def fla_parallel(x, dt, A, B, C, cu):
    """fla as training used it: parallel kernels when gradients are needed, chunked forward otherwise."""
    from h1r.model.kernels.train import _ssd_fla

    return _ssd_fla(x, dt, A, B, C, cu.long())


def step_inputs(T: int, shp: dict, dev):
    """The timed call's inputs: packed documents of T tokens -> ([x, dt, A, B, C] requiring grad, cu, doc, dy)."""
    x, dt, A, B, C, cu = inputs(documents(T, torch.Generator().manual_seed(0)), **shp, dev=dev)
    return [t.requires_grad_() for t in (x, dt, A, B, C)], cu, doc_ids_from_cu(cu, T), torch.randn(x.shape, device=dev)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def grads(fn, x, dt, A, B, C, dy):
    ins = [t.detach().clone().requires_grad_() for t in (x, dt, A, B, C)]
    y = fn(*ins)
    y.backward(dy)
    return y.detach(), [t.grad for t in ins]


def check(dev, shapes) -> dict:
    """bf16 chunked vs fp32 chunked vs fla parallel: values and gradients."""
    out = {}
    for name, shp in shapes.items():
        lens = [700, 1, 129, 2000, 128, 1200]  # one-token, chunk-sized and multi-chunk documents
        x, dt, A, B, C, cu = inputs(lens, **shp, dev=dev, seed=1)
        doc = doc_ids_from_cu(cu, x.shape[0])
        dy = torch.randn(x.shape, device=dev)
        SP.COMPILE = False  # the fp32 reference and the bf16 eager path: no compilation
        y32, g32 = grads(lambda *t: ssd_packed(t[0].float(), t[1], t[2], t[3].float(), t[4].float(), doc, 128),
                         x, dt, A, B, C, dy)
        ye, ge = grads(lambda *t: ssd_packed(*t, doc, 128), x, dt, A, B, C, dy)
        SP.COMPILE = True
        yb, gb = grads(lambda *t: ssd_packed(*t, doc, 128), x, dt, A, B, C, dy)
        SP.FUSED = SP.SCAN = True
        yk, gk = grads(lambda *t: ssd_packed(*t, doc, 128), x, dt, A, B, C, dy)
        SP.FUSED = SP.SCAN = False
        yf, gf = grads(lambda *t: fla_parallel(*t, cu), x, dt, A, B, C, dy)
        names = "y dx ddt dA dB dC".split()
        row = {"chunked_bf16_vs_fp32": dict(zip(names, [rel(yb, y32)] + [rel(a, b) for a, b in zip(gb, g32)])),
               "compiled_vs_eager_bf16": dict(zip(names, [rel(yb, ye)] + [rel(a, b) for a, b in zip(gb, ge)])),
               "fused_scan_bf16_vs_fp32": dict(zip(names, [rel(yk, y32)] + [rel(a, b) for a, b in zip(gk, g32)])),
               "fla_parallel_vs_fp32": dict(zip(names, [rel(yf, y32)] + [rel(a, b) for a, b in zip(gf, g32)]))}
        for k, v in row.items():
            print(f"{name:<22}{k:<24}" + " ".join(f"{n}={e:.1e}" for n, e in v.items()), flush=True)
        out[name] = row
    return out


def time_ms(fn, reps=10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def flops(T, H, P, N, G, Q) -> float:
    nc = -(-T // Q)
    return 2 * T * Q * N * G + 2 * T * Q * P * H + 4 * T * N * P * H + 2 * nc * nc * N * P * H


def timings(dev, T: int, chunks, shapes, scan: bool, fused: bool) -> list[dict]:
    """`scan`: also time the first chunk length with the Triton scan between chunks (H1R_SSD_SCAN=1);
    `fused`: every chunk length with the fused chunk-output kernels and the scan (H1R_SSD_FUSED=1)."""
    from h1r.model.kernels import ssd_chunk  # needs triton

    rows = []
    for name, shp in shapes.items():
        ins, cu, doc, dy = step_inputs(T, shp, dev)
        variants = {f"chunked Q={q}": (lambda q: lambda: ssd_packed(*ins, doc, q))(q) for q in chunks}
        variants["chunked eager"] = lambda: ssd_packed(*ins, doc, chunks[0])  # the glue between GEMMs unfused
        if scan:
            variants[f"chunked Q={chunks[0]} scan"] = lambda: ssd_packed(*ins, doc, chunks[0])
        if fused:
            variants.update({f"chunked Q={q} fused scan": (lambda q: lambda: ssd_packed(*ins, doc, q))(q)
                             for q in chunks})
            # dCB summed per head then by torch, not by atomic adds (H1R_SSD_DCB_ATOMIC=0)
            variants[f"chunked Q={chunks[0]} fused dcb-heads scan"] = lambda: ssd_packed(*ins, doc, chunks[0])
        variants["fla"] = lambda: fla_parallel(*ins, cu)  # fwd under no_grad: fla's chunked forward
        for vname, fn in variants.items():
            SP.COMPILE = vname != "chunked eager"
            SP.SCAN = vname.endswith(" scan")
            SP.FUSED = " fused" in vname
            ssd_chunk.DCB_ATOMIC = "dcb-heads" not in vname
            with torch.no_grad():
                fwd = time_ms(fn)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fb = time_ms(lambda: fn().backward(dy))
            peak = (torch.cuda.max_memory_allocated() - base) / 1e9
            SP.COMPILE, SP.SCAN, SP.FUSED, ssd_chunk.DCB_ATOMIC = True, False, False, True
            q = int(vname.split("=")[1].split()[0]) if "=" in vname else (chunks[0] if "chunked" in vname else None)
            r = {"shape": name, "variant": vname, "tokens": T, "fwd_ms": fwd, "fwd_bwd_ms": fb, "peak_extra_GB": peak}
            if q:
                r["fwd_TFLOPs"] = flops(T, **shp, Q=q) / fwd / 1e9
            rows.append(r)
            print(f"{name:<22}{vname:<16}fwd {fwd:7.3f} ms  fwd+bwd {fb:7.3f} ms  peak +{peak:5.2f} GB"
                  + (f"  fwd {r['fwd_TFLOPs']:.0f} TFLOP/s" if q else ""), flush=True)
            for t in ins:
                t.grad = None
    return rows


def profile(dev, T: int, Q: int, shapes, scan: bool, fused: bool) -> None:
    """Print the top CUDA kernels of forward+backward (compiled, steady state): where the time goes."""
    from torch.profiler import ProfilerActivity, profile as prof_ctx

    for name, shp in shapes.items():
        ins, cu, doc, dy = step_inputs(T, shp, dev)
        for use_scan, use_fused in sorted({(False, False), (scan, False), (fused or scan, fused)}):
            SP.SCAN, SP.FUSED = use_scan, use_fused
            for _ in range(3):
                ssd_packed(*ins, doc, Q).backward(dy)
            torch.cuda.synchronize()
            with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    ssd_packed(*ins, doc, Q).backward(dy)
                torch.cuda.synchronize()
            ev = prof.key_averages()
            key = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
            total = sum(getattr(e, key) for e in ev) / 1e3 / 5  # CUDA activity only: kernels, each once
            print(f"profile {name} Q={Q} scan={use_scan} fused={use_fused}: kernels {total:.2f} ms per fwd+bwd",
                  flush=True)
            print(ev.table(sort_by=key, row_limit=25, max_name_column_width=70), flush=True)
        SP.SCAN = SP.FUSED = False


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--chunks", default="128,64,256", help="the first is also timed eager")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--scan", action="store_true", help="also time the Triton scan between chunks")
    ap.add_argument("--fused", action="store_true", help="also time the fused chunk-output kernels (with the scan)")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of fwd+bwd at the first chunk length")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--out", default="bench/results/ssd_train_gpu.json")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        ap.error(f"--shapes: unknown {sorted(unknown)}; known: {', '.join(SHAPES)}")
    shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
    chunks = [int(c) for c in args.chunks.split(",")]
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile(dev, args.tokens, chunks[0], shapes, args.scan, args.fused)
    if not args.no_check:
        res["check"] = check(dev, shapes)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")  # a cut-off run keeps the check
    res["timings"] = timings(dev, args.tokens, chunks, shapes, args.scan, args.fused)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

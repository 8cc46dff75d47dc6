"""The training conv's three kernels (kernels/doc_conv.py: forward, backward g/dw/db, backward dx) swept over
their launch at a 1.5B-deep layer's shape: 16k packed tokens, 2048 channels sliced from the bf16 input
projection, fp32 weight, bf16 output gradient.

    python bench/doc_conv_gpu.py [--tokens 16384] [--out bench/results/doc_conv_gpu.json]

Each launch is checked against the default launch (values and gradients) and timed from a CUDA graph of
`reps` calls; GB/s counts each kernel's compulsory bytes. Prints the fastest correct launch per kernel as a
LAUNCH dict for kernels/doc_conv.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decode_gpu import copy_rate, time_graph  # noqa: E402  (bench/ is the script's directory)
from decode_kernels_gpu import rel  # noqa: E402
from train_gpu import documents  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--out", default="bench/results/doc_conv_gpu.json")
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.channels < 1:
        ap.error("--tokens and --channels must be >= 1")
    if not torch.cuda.is_available():
        sys.exit("doc_conv_gpu.py needs a CUDA GPU")
    import triton

    import h1r.model.kernels.doc_conv as DC
    from h1r.model.ssd_packed import doc_ids_from_cu

    N, C, K, dev = args.tokens, args.channels, 4, "cuda"
    g = torch.Generator().manual_seed(0)
    lens = documents(N, g)
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), device=dev)
    doc = doc_ids_from_cu(cu, N)
    wide = torch.randn(N, C + 1560, generator=g).to(dev, torch.bfloat16)
    x = wide[:, 1536:1536 + C]  # the conv's slice of the input projection
    w = (torch.randn(C, K, generator=g) * 0.5).to(dev)
    b = torch.randn(C, generator=g).to(dev)
    dy = torch.randn(N, C, generator=g).to(dev, torch.bfloat16)
    default = dict(DC.LAUNCH)

    def run(launch):
        DC.LAUNCH = launch
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = DC.doc_conv(xs, ws, bs, doc)
        y.backward(dy)
        return [y.detach(), xs.grad, ws.grad, bs.grad]

    ref = run(default)
    bw = copy_rate(dev)
    # compulsory bytes: fwd reads x, writes y; bwd_g reads x and dy, writes g (fp32); bwd_dx reads g, writes dx
    nbytes = {"fwd": N * C * 4, "bwd_g": N * C * (2 + 2 + 4), "bwd_dx": N * C * (4 + 2)}
    g32 = torch.empty(N, C, device=dev)
    dx = torch.empty(N, C, device=dev, dtype=torch.bfloat16)
    ys = torch.empty(N, C, device=dev, dtype=torch.bfloat16)
    rows = []
    for kernel in ("fwd", "bwd_g", "bwd_dx"):
        launches = [(BT, BC, warps, 1) for BT, BC, warps in itertools.product([16, 32, 64, 128], [64, 128, 256], [4, 8])
                    if BT * BC <= 16384]
        if kernel == "bwd_g":  # _bwd_g4_kernel: several token blocks a program, sums taken once
            launches += [(BT, BC, warps, steps) for BT, BC, warps, steps in
                         itertools.product([16, 32], [64, 128], [4, 8], [4, 16]) if BT * BC <= 4096]
        for BT, BC, warps, steps in launches:
            launch = {**default, kernel: (BT, BC, warps) if steps == 1 else (BT, BC, warps, steps)}
            err = max(rel(a, r) for a, r in zip(run(launch), ref))
            nb = triton.cdiv(N, BT * steps)
            grid = (nb, triton.cdiv(C, BC))
            if kernel == "bwd_g" and steps > 1:
                dw = torch.empty(nb, C, K, device=dev)
                db = torch.empty(nb, C, device=dev)
                fn = lambda: DC._bwd_g4_kernel[grid](x, doc, w, b, dy, g32, dw, db, N, C, x.stride(0), dy.stride(0),  # noqa: E731
                                                     HAS_BIAS=True, BT=BT, BC=BC, STEPS=steps, num_warps=warps)
            elif kernel == "fwd":
                fn = lambda: DC._fwd_kernel[grid](x, doc, w, b, ys, N, C, x.stride(0), ys.stride(0), K=K, HAS_BIAS=True,  # noqa: E731
                                                  BT=BT, BC=BC, num_warps=warps)
            elif kernel == "bwd_g":
                dw = torch.empty(nb, C, K, device=dev)
                db = torch.empty(nb, C, device=dev)
                fn = lambda: DC._bwd_g_kernel[grid](x, doc, w, b, dy, g32, dw, db, N, C, x.stride(0), dy.stride(0),  # noqa: E731
                                                    K=K, HAS_BIAS=True, BT=BT, BC=BC, num_warps=warps)
            else:
                fn = lambda: DC._bwd_dx_kernel[grid](g32, doc, w, dx, N, C, dx.stride(0), K=K, BT=BT, BC=BC,  # noqa: E731
                                                     num_warps=warps)
            us = time_graph(fn, calls=10, reps=5)
            rows.append({"kernel": kernel, "BT": BT, "BC": BC, "num_warps": warps, "steps": steps, "us": us,
                         "GBps": nbytes[kernel] / us / 1e3, "fraction": nbytes[kernel] / us * 1e6 / bw,
                         "rel_err": err, "default": launch[kernel] == tuple(default[kernel])})
    DC.LAUNCH = default
    print(f"{torch.cuda.get_device_name()}, copy {bw / 1e9:,.0f} GB/s, {N} tokens x {C} channels")
    print(f"{'kernel':7s} {'BT':>4s} {'BC':>4s} {'warps':>5s} {'steps':>5s} {'us':>8s} {'GB/s':>7s} {'of copy':>7s} "
          f"{'rel err':>8s}")
    for r in rows:
        print(f"{r['kernel']:7s} {r['BT']:4d} {r['BC']:4d} {r['num_warps']:5d} {r['steps']:5d} {r['us']:8.1f} {r['GBps']:7.0f} "
              f"{r['fraction']:7.1%} {r['rel_err']:8.1e}" + (" (default)" if r["default"] else ""))
    best = {}
    for r in rows:
        if r["rel_err"] < 1e-3 and (r["kernel"] not in best or r["us"] < best[r["kernel"]]["us"]):
            best[r["kernel"]] = r
    launch = {k: (v["BT"], v["BC"], v["num_warps"]) + ((v["steps"],) if v["steps"] > 1 else ()) for k, v in best.items()}
    print("fastest correct launch: LAUNCH =", launch,
          "  per layer:", f"{sum(v['us'] for v in best.values()):.0f} us against the default's",
          f"{sum(r['us'] for r in rows if r['default']):.0f} us")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                          "tokens": N, "channels": C, "copy_GBps": bw / 1e9, "rows": rows,
                                          "best": launch}, indent=1))


if __name__ == "__main__":
    main()

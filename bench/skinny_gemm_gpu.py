"""Decode projections at 8-64 rows: the split-K Triton GEMM (kernels/skinny_gemm.py) against cuBLAS on
the 7B's shapes, timed inside CUDA graphs with enough weight copies that nothing is served from L2.

    python bench/skinny_gemm_gpu.py [--rows 8,16,32,64] [--sweep-rows 64] [--out bench/results/skinny_gemm_gpu.json]

(bench/results/skinny_gemm_gpu_sweep.json: the first run, with the M=64 sweep that set default_config.)

For every projection and row count: relative error against the fp32 reference, microseconds and the
weight-streaming rate of cuBLAS F.linear and of the Triton kernel with its default config (a split-K
launch includes zeroing its fp32 output, which it needs); at the sweep row counts, the best of a grid
(BLOCK_N, BLOCK_K, SPLIT, warps, stages, pointer loads or TMA descriptors). Then one layer's four
projections as a chain at each row count, cuBLAS against the best configs found.
"""
import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, ".")
import torch
import torch.nn.functional as F

from bench.gemv_gpu import shapes, timed, weights
from h1r.config import preset
from h1r.model.kernels import skinny_gemm as SG


def run_skinny(x, cfg_, tma, N):
    split = cfg_[2] if cfg_ else SG.default_config(x.shape[0], N, x.shape[1])[2]
    buf = torch.zeros(x.shape[0], N, device=x.device, dtype=torch.float32) if split > 1 else None

    def call(w):
        if buf is not None:
            buf.zero_()
        return SG.skinny_linear(x, w, out=buf, config=cfg_, tma=tma)
    return call


def grid(K):
    for bn, bk, split, nw, st, tma in itertools.product([32, 64, 128], [128], [1, 2, 4, 8], [4], [3, 5], [0, 1]):
        if K // split >= 2 * bk:
            yield (bn, bk, split, nw, st), tma


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="falcon-h1-7b")
    ap.add_argument("--rows", default="8,16,32,64")
    ap.add_argument("--sweep-rows", default="")
    ap.add_argument("--out", default="bench/results/skinny_gemm_gpu.json")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    cfg = preset(args.preset)
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "preset": args.preset,
           "date": time.strftime("%Y-%m-%d"), "rows": {}, "chain": {}}

    def save():
        for out in [args.out] + ([os.path.join(os.environ["OUT"], Path(args.out).name)] if os.environ.get("OUT") else []):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=2) + "\n")

    rows = [int(r) for r in args.rows.split(",")]
    sweep_rows = {int(r) for r in args.sweep_rows.split(",") if r}
    sh = {k: v[:2] for k, v in shapes(cfg).items()}
    ws = {k: weights(N, K, dev) for k, (N, K) in sh.items()}
    best_cfg = {}
    print(f"{'proj':8} {'M':>3} {'N x K':>14} {'err':>8} {'cuBLAS':>17} {'triton default':>26} {'best':>40}", flush=True)
    for name, (N, K) in sh.items():
        for M in rows:
            x = (torch.randn(M, K, device=dev) * 0.5).to(torch.bfloat16)
            ref = F.linear(x.float(), ws[name][0].float())
            got = run_skinny(x, None, False, N)(ws[name][0]).float()
            err = ((got - ref).norm() / ref.norm()).item()
            gb = N * K * 2 / 1e9
            row = {"M": M, "N": N, "K": K, "rel_err": err, "default_config": list(SG.default_config(M, N, K)),
                   "cublas_us": timed(lambda w: F.linear(x, w), ws[name]),
                   "default_us": timed(run_skinny(x, None, False, N), ws[name])}
            best = (row["default_us"], row["default_config"], 0)
            if M in sweep_rows and name != "lm_head":
                row["sweep"] = []
                for c, tma in grid(K):
                    try:
                        e = ((run_skinny(x, c, bool(tma), N)(ws[name][0]).float() - ref).norm() / ref.norm()).item()
                        us = timed(run_skinny(x, c, bool(tma), N), ws[name])
                    except Exception as ex:  # a config that does not fit (shared memory) is skipped
                        row["sweep"].append({"config": list(c), "tma": tma, "error": str(ex)[:120]})
                        continue
                    row["sweep"].append({"config": list(c), "tma": tma, "us": us, "rel_err": e})
                    if e < 1e-2:
                        best = min(best, (us, list(c), tma))
                best_cfg[name] = best
            row["best_us"], row["best_config"], row["best_tma"] = best
            for k in ("cublas", "default", "best"):
                row[f"{k}_TBps"] = gb / row[f"{k}_us"] * 1e3
            res["rows"][f"{name}_M{M}"] = row
            print(f"{name:8} {M:>3} {N:>6} x {K:<6} {err:8.1e} {row['cublas_us']:6.1f}us {row['cublas_TBps']:4.2f}TB/s "
                  f"{row['default_us']:6.1f}us {row['default_TBps']:4.2f}TB/s {str(row['default_config']):>13} "
                  f"{row['best_us']:6.1f}us {row['best_TBps']:4.2f}TB/s {str(row['best_config'])} tma={row['best_tma']}",
                  flush=True)
            save()
    # one layer's projections in sequence (different weights each layer: nothing from L2)
    Ls = [{n: ws[n][i % len(ws[n])] for n in ("w_in", "w_mo", "w_gu", "w_down")} for i in range(4)]
    for M in rows:
        xs = {n: (torch.randn(M, sh[n][1], device=dev) * 0.5).to(torch.bfloat16) for n in Ls[0]}
        cub = lambda L: [F.linear(xs[n], L[n]) for n in L]
        calls = {n: run_skinny(xs[n], tuple(best_cfg[n][1]) if n in best_cfg else None,
                               bool(best_cfg[n][2]) if n in best_cfg else False, sh[n][0]) for n in Ls[0]}
        tri = lambda L: [calls[n](L[n]) for n in L]
        gb = sum(w.numel() * 2 for w in Ls[0].values()) / 1e9
        c = {"cublas_us": timed(cub, Ls), "triton_us": timed(tri, Ls)}
        c["cublas_TBps"], c["triton_TBps"] = gb / c["cublas_us"] * 1e3, gb / c["triton_us"] * 1e3
        res["chain"][str(M)] = c
        print(f"layer chain M={M}: cuBLAS {c['cublas_us']:.1f} us ({c['cublas_TBps']:.2f} TB/s), "
              f"triton {c['triton_us']:.1f} us ({c['triton_TBps']:.2f} TB/s)", flush=True)
        save()


if __name__ == "__main__":
    main()

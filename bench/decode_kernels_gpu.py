"""The decode step's two state kernels on one GPU, swept over their launch: the fused SSM state update
(kernels/ssm_update.py, BLOCK_P rows of a head's state per program) and the conv state update
(kernels/conv_update.py, BLOCK_C channels per program), at the Falcon-H1-7B shape and bf16 state.

    python bench/decode_kernels_gpu.py [--batches 1,64] [--out bench/results/decode_kernels_gpu.json]

Every launch is first checked against the PyTorch reference (h1r.model.ssd.ssd_step / conv_step); then a
CUDA graph of `reps` back-to-back calls is replayed and timed, so launch latency does not hide the kernel.
GB/s counts the state read and written once plus the per-row inputs and outputs; the fraction is of the
card's measured copy rate. Sequences sit in random slots of a pool larger than L2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decode_gpu import copy_rate, time_graph  # noqa: E402  (bench/ is the script's directory)
from h1r.config import preset  # noqa: E402
from h1r.model import ssd  # noqa: E402


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def ssm_rows(cfg, S, pool_slots, bw, launches):
    from h1r.model.kernels import ssm_update as SU  # Triton: imported once a GPU is known to be there

    H, P, N, G = cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_d_state, cfg.mamba_n_groups
    g = torch.Generator().manual_seed(S)
    dev = "cuda"
    pool = (torch.randn(pool_slots, H, P, N, generator=g) * 0.1).to(dev, torch.bfloat16)
    slots = torch.randperm(pool_slots, generator=g)[:S].to(dev)
    x = torch.randn(S, H * P, generator=g).to(dev, torch.bfloat16)
    dt = torch.randn(S, H, generator=g).to(dev, torch.bfloat16)
    dtb, A, D = torch.randn(H, generator=g).to(dev), -torch.rand(H, generator=g).to(dev) - 0.1, torch.randn(H).to(dev)
    B = torch.randn(S, G * N, generator=g).to(dev, torch.bfloat16)
    C = torch.randn(S, G * N, generator=g).to(dev, torch.bfloat16)
    d = F.softplus(dt.float() + dtb)
    yr, sr = ssd.ssd_step(x.view(S, H, P), d, A, B.view(S, G, N), C.view(S, G, N), pool[slots])
    yr = yr + D[:, None] * x.view(S, H, P).float()
    nbytes = S * (H * P * N * 2 * 2 + H * P * (2 + 4) + 2 * G * N * 2 + H * 2)
    rows = []
    for bp, nw in launches:
        if bp > P:
            continue
        p = pool.clone()
        y = SU.ssm_state_update(p, slots, x, dt, dtb, A, B, C, D, block_p=bp, num_warps=nw)
        err = max(rel(y.view(S, H, P), yr), rel(p[slots], sr))
        us = time_graph(lambda: SU.ssm_state_update(p, slots, x, dt, dtb, A, B, C, D, block_p=bp, num_warps=nw))
        rows.append({"kernel": "ssm_update", "batch": S, "block": bp, "num_warps": nw, "us": us,
                     "GBps": nbytes / us / 1e3, "fraction": nbytes / us * 1e6 / bw, "rel_err": err,
                     "default": (bp, nw) == (SU.BLOCK_P, SU.NUM_WARPS)})
    return rows


def conv_rows(cfg, S, pool_slots, bw, launches):
    from h1r.model.kernels import conv_update as CU

    Cc, K = cfg.conv_dim, cfg.mamba_d_conv
    g = torch.Generator().manual_seed(S + 1)
    dev = "cuda"
    pool = torch.randn(pool_slots, Cc, K - 1, generator=g).to(dev, torch.bfloat16)
    slots = torch.randperm(pool_slots, generator=g)[:S].to(dev)
    x = torch.randn(S, Cc, generator=g).to(dev, torch.bfloat16)
    w, b = torch.randn(Cc, K, generator=g).to(dev, torch.bfloat16), torch.randn(Cc, generator=g).to(dev, torch.bfloat16)
    yr, sr = ssd.conv_step(x, pool[slots], w, b)
    nbytes = S * Cc * ((K - 1) * 2 * 2 + 2 + 2)
    rows = []
    for bc, nw in launches:
        p = pool.clone()
        y = CU.conv_state_update(p, slots, x, w, b, block_c=bc, num_warps=nw)
        err = max(rel(y, yr), float(not torch.equal(p[slots], sr.to(p.dtype))))
        us = time_graph(lambda: CU.conv_state_update(p, slots, x, w, b, block_c=bc, num_warps=nw))
        rows.append({"kernel": "conv_update", "batch": S, "block": bc, "num_warps": nw, "us": us,
                     "GBps": nbytes / us / 1e3, "fraction": nbytes / us * 1e6 / bw, "rel_err": err,
                     "default": (bc, nw) == (CU.BLOCK_C, CU.NUM_WARPS)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="falcon-h1-7b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--pool-slots", type=int, default=256, help="state slots allocated (sequences use a random subset)")
    ap.add_argument("--out", default="bench/results/decode_kernels_gpu.json")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches: not a comma-separated list of integers: {args.batches!r}")
    if any(b < 1 or b > args.pool_slots for b in batches):
        ap.error(f"--batches must lie in 1..--pool-slots ({args.pool_slots})")
    if not torch.cuda.is_available():
        sys.exit("decode_kernels_gpu.py needs a CUDA GPU")
    cfg = preset(args.preset)
    bw = copy_rate("cuda")
    rows = []
    for S in batches:
        rows += ssm_rows(cfg, S, args.pool_slots, bw, itertools.product([8, 16, 32, 64], [2, 4, 8]))
        rows += conv_rows(cfg, S, args.pool_slots, bw, itertools.product([128, 256, 512, 1024, 2048], [1, 2, 4, 8]))
    print(f"{torch.cuda.get_device_name()}, copy {bw / 1e9:,.0f} GB/s, {args.preset}, bf16 state")
    print(f"{'kernel':12s} {'batch':>5s} {'block':>5s} {'warps':>5s} {'us':>8s} {'GB/s':>7s} {'of copy':>7s} {'rel err':>8s}")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['kernel']:12s} {r['batch']:5d} {r['block']:5d} {r['num_warps']:5d} {r['us']:8.2f} {r['GBps']:7.0f} "
              f"{r['fraction']:7.1%} {r['rel_err']:8.1e}{mark}")
    best = {}
    for r in rows:
        k = f"{r['kernel']} batch {r['batch']}"
        if r["rel_err"] < 2e-2 and (k not in best or r["us"] < best[k]["us"]):
            best[k] = r
    print("fastest correct launch:", {k: (v["block"], v["num_warps"], round(v["us"], 2)) for k, v in best.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset,
        "copy_GBps": bw / 1e9, "rows": rows,
        "best": {k: {"block": v["block"], "num_warps": v["num_warps"], "us": v["us"]} for k, v in best.items()},
    }, indent=1))


if __name__ == "__main__":
    main()

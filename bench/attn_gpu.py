"""Paged decode attention on one GPU: correctness against the PyTorch reference, then the launch shape
(context splits, block, warps, stages) swept at the shapes the engine runs, as achieved bandwidth.

    python bench/attn_gpu.py                  # writes bench/results/attn_gpu.json

(The committed attn_gpu.json predates MIN_SPLIT_TOKENS = 64 and the b1 / max 32k and b8 shapes: its
splits stop at max_model_len // 256 and its keys carry no _max suffix.)

7B shape: 12 query heads, 2 KV heads of 128, 16-token pages scattered over the pool. The K/V bytes a
step must read are batch x context x 2 heads x 128 x 2 (K and V) x 2 bytes; the ceiling is the card's
measured copy bandwidth (bench/decode_gpu.py's `ceilings`).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.decode_gpu import ceilings, time_graph  # noqa: E402
from h1r.engine.context import paged_decode_attention as reference  # noqa: E402
from h1r.model.kernels import paged_attention as PA  # noqa: E402

HQ, HKV, HD, PAGE = 12, 2, 128, 16


def setup(batch, ctx, dev, g):
    pages_per = -(-ctx // PAGE)
    P = batch * pages_per + 1
    kp = torch.randn(P, PAGE, HKV, HD, device=dev, dtype=torch.bfloat16, generator=g)
    vp = torch.randn(P, PAGE, HKV, HD, device=dev, dtype=torch.bfloat16, generator=g)
    table = torch.randperm(P - 1, device=dev, generator=g)[:batch * pages_per].view(batch, pages_per)
    context = torch.full((batch,), ctx, device=dev)
    q = torch.randn(batch, HQ, HD, device=dev, dtype=torch.bfloat16, generator=g)
    return q, kp, vp, table, context


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/attn_gpu.json")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    bw, _ = ceilings(dev)
    res = {"device": torch.cuda.get_device_name(0), "copy_GBps": bw / 1e9, "defaults": {
        "BLOCK_N": PA.BLOCK_N, "NUM_WARPS": PA.NUM_WARPS, "NUM_STAGES": PA.NUM_STAGES,
        "PROGRAMS_PER_SM": PA.PROGRAMS_PER_SM}, "shapes": {}}
    print(f"copy {bw / 1e9:.0f} GB/s", flush=True)
    shapes = [(64, 1536, 2112), (64, 4608, 8768), (1, 1536, 2112), (1, 1536, 32768), (8, 1536, 2112),
              (1, 32768, 32768), (16, 8192, 32768)]
    for batch, ctx, max_len in shapes:
        q, kp, vp, table, context = setup(batch, ctx, dev, g)
        ref = reference(q.float(), kp.float(), vp.float(), table, context, HD ** -0.5)
        nbytes = batch * ctx * HKV * HD * 2 * 2
        rows = []

        def run(splits, block_n, warps, stages):
            f = lambda: PA.paged_decode_attention(q, kp, vp, table, context, HD ** -0.5, splits, block_n=block_n,
                                                  num_warps=warps, num_stages=stages)
            out = f()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            assert err < 2e-2, (batch, ctx, splits, block_n, warps, stages, err)
            us = time_graph(f)
            rows.append({"splits": splits, "block_n": block_n, "warps": warps, "stages": stages, "us": us,
                         "GBps": nbytes / us / 1e3, "roofline": nbytes / us / 1e3 / (bw / 1e9), "rel_err": err})
            return us

        default_splits = PA.num_splits_for(batch, HKV, max_len)
        base = run(default_splits, PA.BLOCK_N, PA.NUM_WARPS, PA.NUM_STAGES)
        for sp in sorted({1, 2, 4, 8, 16, 32, 64} - {default_splits}):
            if sp <= max(1, max_len // PA.MIN_SPLIT_TOKENS):
                run(sp, PA.BLOCK_N, PA.NUM_WARPS, PA.NUM_STAGES)
        best_sp = min(rows, key=lambda r: r["us"])["splits"]
        for bn in (32, 64, 128):
            for w in (4, 8):
                for st in (2, 3, 4):
                    if (bn, w, st) != (PA.BLOCK_N, PA.NUM_WARPS, PA.NUM_STAGES):
                        run(best_sp, bn, w, st)
        best = min(rows, key=lambda r: r["us"])
        key = f"b{batch}_ctx{ctx}_max{max_len}"  # max_model_len sets the default split count
        res["shapes"][key] = {"batch": batch, "context": ctx, "max_model_len": max_len, "bytes": nbytes,
                              "default_splits": default_splits, "default_us": base,
                              "default_roofline": nbytes / base / 1e3 / (bw / 1e9), "best": best, "rows": rows}
        print(f"{key}: default splits={default_splits} {base:.1f} us ({100 * nbytes / base / 1e3 / (bw / 1e9):.0f}% of"
              f" copy bw); best {best}", flush=True)
        del q, kp, vp, table, context, ref
        torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "attn_gpu.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

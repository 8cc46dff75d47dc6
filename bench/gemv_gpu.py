"""The one-row decode projections with the norms folded in (kernels/gemv.py) against cuBLAS plus the
separate kernels they replace, on the 7B's shapes, timed inside CUDA graphs as the engine runs them,
with enough weight copies that nothing is served from L2.

    python bench/gemv_gpu.py [--sweep] [--out bench/results/gemv_gpu.json]

(An earlier version also timed a Triton GEMM with the norm as its epilogue at 8-64 rows: 0.8-2.9 TB/s
with its default tiles, 3.2 at best after a sweep, against cuBLAS's 2.6-3.9, so the model keeps cuBLAS
there and that kernel was dropped: bench/results/gemv_gpu_norm_matmul_dropped.json.)

1. One row, each projection: relative error against the fp32 reference; microseconds and the
   weight-streaming rate for cuBLAS F.linear alone, cuBLAS plus the elementwise kernel the fusion
   removes (add_rmsnorm before w_in / w_gu / lm_head, silu_mul before w_down), and the fused GEMV with
   its default config (and, with --sweep, the best of a grid).
2. A layer's projections as a chain, before (add_rmsnorm + cuBLAS, as the model ran them) and after
   (the GEMVs the model now runs, the output projection with the gated norm inside).
"""
import argparse
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, ".")
import torch
import torch.nn.functional as F

from bench.decode_gpu import time_graph
from h1r.config import preset
from h1r.model.kernels import gemv as G
from h1r.model.kernels.fused import add_rmsnorm, gated_rmsnorm, silu_mul

L2_BYTES = 256 << 20  # copies of each weight to cycle through: more than the H200's 50 MB L2, many times over


def shapes(cfg):
    D, I = cfg.hidden_size, cfg.intermediate_size
    w_in = cfg.d_ssm + cfg.conv_dim + cfg.mamba_n_heads + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.attn_head_dim
    d_mo = cfg.d_ssm + cfg.num_attention_heads * cfg.attn_head_dim
    V = -(-cfg.vocab_size // 256) * 256
    return {"w_in": (w_in, D, "norm"), "w_mo": (D, d_mo, "residual"), "w_gu": (2 * I, D, "norm"),
            "w_down": (D, I, "silu_mul+residual"), "lm_head": (V, D, "norm")}


def weights(N, K, dev):
    copies = max(1, -(-L2_BYTES // (N * K * 2)))
    return [(torch.randn(N, K, device=dev) / K ** 0.5).to(torch.bfloat16) for _ in range(copies)]


def rotating(fn_of_w, ws):
    """A callable that uses the next weight copy on every call (the graph bakes in the sequence)."""
    state = {"i": 0}

    def call():
        w = ws[state["i"] % len(ws)]
        state["i"] += 1
        return fn_of_w(w)
    return call


def timed(fn_of_w, ws):
    return time_graph(rotating(fn_of_w, ws), calls=max(20, 2 * len(ws)), reps=20)


def one_row(cfg, dev, sweep):
    out = {}
    print(f"{'1 row':8} {'N x K':>14} {'err':>8} {'cuBLAS':>16} {'+sep. kernel':>14} {'fused':>16} {'best (cfg)':>26}")
    for name, (N, K, mode) in shapes(cfg).items():
        ws = weights(N, K, dev)
        a = torch.randn(1, 2 * K if "silu" in mode else K, device=dev).to(torch.bfloat16)
        h = torch.randn(1, N if "residual" in mode else K, device=dev).to(torch.bfloat16)
        kw = {"norm_eps": 1e-5} if mode == "norm" else {"silu_mul": True} if "silu" in mode else {}
        res_t = h.clone() if "residual" in mode else None
        ref = G.gemv_reference(a.float(), ws[0].float(), residual=res_t.float() if res_t is not None else None, **kw)
        got = G.gemv(a, ws[0], residual=res_t.clone() if res_t is not None else None, **kw).float()
        err = ((got - ref).norm() / ref.norm()).item()
        x = a[:, :K].contiguous()
        ones = torch.ones(K, device=dev, dtype=torch.bfloat16)
        gb = N * K * 2 / 1e9

        def separate(w):
            if mode == "norm":
                add_rmsnorm(a, ones, 1e-5, h)
            elif "silu" in mode:
                silu_mul(a)
            F.linear(x, w)

        def fused(cfg_=None):
            return lambda w: (G.gemv(a, w, residual=res_t, out=res_t, config=cfg_, **kw) if res_t is not None
                              else G.gemv(a, w, config=cfg_, **kw))

        row = {"N": N, "K": K, "mode": mode, "rel_err": err, "weight_copies": len(ws),
               "default_config": list(G._config(N, K)),
               "cublas_us": timed(lambda w: F.linear(x, w), ws), "cublas_plus_kernel_us": timed(separate, ws),
               "fused_us": timed(fused(), ws)}
        row["cublas_TBps"], row["fused_TBps"] = gb / row["cublas_us"] * 1e3, gb / row["fused_us"] * 1e3
        best = (row["fused_us"], row["default_config"])
        if sweep:
            row["sweep"] = []
            for bn, bk, nw in itertools.product([4, 8, 16], [256, 512, 1024], [4, 8]):
                if bk > K:
                    continue
                us = timed(fused((bn, bk, nw)), ws)
                row["sweep"].append({"config": [bn, bk, nw], "us": us})
                best = min(best, (us, [bn, bk, nw]))
        row["best_us"], row["best_config"] = best
        out[name] = row
        print(f"{name:8} {N:>6} x {K:<6} {err:8.1e} {row['cublas_us']:7.1f}us {row['cublas_TBps']:4.2f}TB/s "
              f"{row['cublas_plus_kernel_us']:11.1f}us {row['fused_us']:7.1f}us {row['fused_TBps']:4.2f}TB/s "
              f"{best[0]:7.1f}us {str(best[1]):>16}", flush=True)
    return out


def chains(cfg, dev, layers=4):
    """One row through a layer's four projections and the kernels around them, before (gated_rmsnorm,
    add_rmsnorm and cuBLAS, as the model ran them) and after (the GEMVs it now runs), cycling over
    `layers` layers' weights (> L2)."""
    sh = shapes(cfg)
    Ls = [{n: weights(*sh[n][:2], dev)[0] for n in ("w_in", "w_mo", "w_gu", "w_down")} for _ in range(layers)]
    D, d_ssm, G_ = cfg.hidden_size, cfg.d_ssm, cfg.mamba_n_groups
    d_attn = sh["w_mo"][1] - d_ssm
    ones = torch.ones(D, device=dev, dtype=torch.bfloat16)
    h0 = torch.randn(1, D, device=dev).to(torch.bfloat16) * 0.1
    y, z = torch.randn(1, d_ssm, device=dev), torch.randn(1, d_ssm, device=dev).to(torch.bfloat16)
    nw = torch.rand(d_ssm, device=dev) + 0.5
    mo = torch.randn(1, d_ssm + d_attn, device=dev).to(torch.bfloat16) * 0.1

    def before(L):
        h, x = add_rmsnorm(h0, ones, 1e-5)
        F.linear(x, L["w_in"])
        gated_rmsnorm(y, z, nw, G_, 1e-5, False, torch.bfloat16, out=mo[:, :d_ssm])
        h, x = add_rmsnorm(h, ones, 1e-5, F.linear(mo, L["w_mo"]))
        dn = F.linear(silu_mul(F.linear(x, L["w_gu"])), L["w_down"])
        add_rmsnorm(h, ones, 1e-5, dn)

    def after(L):
        h = h0.clone()
        G.gemv(h, L["w_in"], norm_eps=1e-5)
        G.gated_gemv(y, z, nw, G_, 1e-5, False, mo[:, d_ssm:], L["w_mo"], None, residual=h, out=h)
        G.gemv(G.gemv(h, L["w_gu"], norm_eps=1e-5), L["w_down"], silu_mul=True, residual=h, out=h)

    out = {"before_us": timed(before, Ls), "after_us": timed(after, Ls)}
    gb = sum(w.numel() * 2 for w in Ls[0].values()) / 1e9
    print(f"layer chain, 1 row: before {out['before_us']:6.1f} us ({gb / out['before_us'] * 1e3:.2f} TB/s), "
          f"after {out['after_us']:6.1f} us ({gb / out['after_us'] * 1e3:.2f} TB/s)", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="falcon-h1-7b")
    ap.add_argument("--sweep", action="store_true", help="a grid of configs for each projection")
    ap.add_argument("--parts", default="one,chain")
    ap.add_argument("--out", default="bench/results/gemv_gpu.json")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    cfg = preset(args.preset)
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "preset": args.preset}
    parts = args.parts.split(",")

    def save():
        for out in [args.out] + ([os.path.join(os.environ["OUT"], Path(args.out).name)] if os.environ.get("OUT") else []):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=2) + "\n")

    if "one" in parts:
        res["one_row"] = one_row(cfg, dev, args.sweep)
        save()
    if "chain" in parts:
        res["layer_chain"] = chains(cfg, dev)
        save()


if __name__ == "__main__":
    main()

"""Training speed on one GPU: one SFT step (forward, backward, AdamW) over a sequence of packed documents.

    python bench/train_gpu.py [--presets falcon-h1-0.5b,falcon-h1-1.5b-deep] [--lengths 8192,16384,32768]

H1R's path: fla's Triton conv/SSD and varlen flash attention over document boundaries, fused chunked
LM-head cross-entropy (no [tokens, vocab] logits, matmuls in bf16 on a 64-aligned vocabulary), µP
multipliers applied to the weights rather than the activations, the elementwise glue (norms, gate,
RoPE, SiLU) fused by torch.compile (by default from 16k tokens per call, falcon_h1.COMPILE_MIN_TOKENS;
this script compiles at every length it times), per-layer activation checkpointing, bf16 autocast with
fp32 master weights. `--eager-glue-lengths` also times the same step with the compiled glue off. The
peer: transformers' FalconH1ForCausalLM (gradient checkpointing, no compiled Mamba kernels, one
document per sequence since it has no packing), where it fits.

Model FLOPs per step (what MFU counts; recomputation from checkpointing is not counted):
    6 * P_matmul * tokens                          all Linear weights incl. the LM head (embedding excluded)
  + 6 * L * Hq * hd * sum_doc n_doc^2              causal attention: 2 matmuls x n^2/2 x hd x 2 FLOPs, fwd+bwd x3
  + 6 * L * H * tokens * (Q * (N + P) + 2 * N * P)  SSD: intra-chunk C.B and (C.B).X, chunk states, outputs
MFU = model FLOPs / step time / bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch


def matmul_rate(dev) -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t)


def model_flops(cfg, docs: list[int]) -> float:
    T = sum(docs)
    D, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    p_matmul = cfg.num_parameters() - V * D - (0 if cfg.tie_word_embeddings else 0)  # LM head stays in
    if cfg.tie_word_embeddings:
        p_matmul += V * D
    attn = 6 * L * cfg.num_attention_heads * cfg.attn_head_dim * sum(n * n for n in docs)
    H, P, N, Q = cfg.mamba_n_heads, cfg.ssm_head_dim, cfg.mamba_d_state, cfg.mamba_chunk_size
    ssd = 6 * L * H * T * (Q * (N + P) + 2 * N * P)
    return 6 * p_matmul * T + attn + ssd


def documents(T: int, g: torch.Generator) -> list[int]:
    """Packed documents of 512..4096 tokens (a reasoning-trace-like spread) filling T tokens."""
    out, left = [], T
    while left > 0:
        n = min(left, int(torch.randint(512, 4097, (1,), generator=g)))
        out.append(n)
        left -= n
    return out


def h1r_step_time(cfg, T, docs, dev, steps=3):
    from h1r.checkpoint import init_model
    from h1r.train.loss import TokenNLL

    model = init_model(cfg, seed=0, device=dev, dtype=torch.float32)
    model.gradient_checkpointing = True
    model.train()
    lossmod = TokenNLL(model, fused=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(10, cfg.vocab_size - 1, (1, T), device=dev)
    reset = torch.zeros(1, T, dtype=torch.bool, device=dev)
    pos = 0
    for n in docs:
        reset[0, pos] = True
        pos += n
    mask = torch.ones(1, T, dtype=torch.bool, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lossmod(ids, mask, reset=reset).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step()  # compile / autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 1e9
    loss = float(loss.detach())
    del model, lossmod, opt
    gc.collect()
    torch.cuda.empty_cache()
    return dt, peak, loss


def profile_step(cfg, T, docs, dev):
    """Top CUDA kernels and the CPU/GPU split of one training step."""
    from torch.profiler import ProfilerActivity, profile

    h1r_step_time(cfg, T, docs, dev, steps=1)  # warm up (compiles, autotunes)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        h1r_step_time(cfg, T, docs, dev, steps=1)
        print(f"profiled step (with setup) {time.perf_counter() - t:.2f} s", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12), flush=True)


def hf_step_time(cfg, T, dev, steps=2):
    import transformers

    hcfg = transformers.FalconH1Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                          if k not in ("architectures", "model_type", "dtype")})
    try:
        with torch.device(dev):
            model = transformers.FalconH1ForCausalLM(hcfg)
        model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        ids = torch.randint(10, cfg.vocab_size - 1, (1, T), device=dev)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return {"seconds": (time.perf_counter() - t) / steps, "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9}
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        model = opt = None
        gc.collect()
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="falcon-h1-0.5b,falcon-h1-1.5b-deep")
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--hf-lengths", default="8192")
    ap.add_argument("--eager-glue-lengths", default="8192,16384",
                    help="also time these lengths with the torch.compile'd glue off (H1R_COMPILE=0's path)")
    ap.add_argument("--out", default="bench/results/train_gpu.json")
    ap.add_argument("--profile", action="store_true", help="profile one step of the first preset/length and exit")
    args = ap.parse_args(argv)
    import h1r.model.falcon_h1 as fh
    from h1r.config import preset

    fh.COMPILE_MIN_TOKENS = 0  # time the compiled glue at every length; eager_glue rows time the other path
    dev = torch.device("cuda")
    rate = matmul_rate(dev)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "matmul_TFLOPs": rate / 1e12, "runs": []}
    print(f"bf16 matmul rate {rate / 1e12:.0f} TFLOP/s", flush=True)
    print(f"{'preset':<22}{'tokens':>7}{'tok/s':>9}{'MFU':>7}{'peak GB':>9}{'HF tok/s':>10}{'speedup':>9}", flush=True)
    g = torch.Generator().manual_seed(0)
    if args.profile:
        cfg = preset(args.presets.split(",")[0])
        T = int(args.lengths.split(",")[0])
        profile_step(cfg, T, documents(T, g), dev)
        return
    for name in args.presets.split(","):
        cfg = preset(name)
        for T in [int(x) for x in args.lengths.split(",")]:
            docs = documents(T, g)
            try:
                dt, peak, loss = h1r_step_time(cfg, T, docs, dev)
                r = {"preset": name, "tokens": T, "docs": docs, "seconds": dt, "tok_s": T / dt,
                     "model_flops": model_flops(cfg, docs), "peak_memory_GB": peak, "loss": loss}
                r["MFU"] = r["model_flops"] / dt / rate
                if str(T) in args.eager_glue_lengths.split(","):
                    fh.COMPILE_TRAINING = False
                    try:
                        e = h1r_step_time(cfg, T, docs, dev)
                    finally:
                        fh.COMPILE_TRAINING = True
                    r["eager_glue"] = {"seconds": e[0], "tok_s": T / e[0], "loss": e[2]}
            except torch.OutOfMemoryError:
                r = {"preset": name, "tokens": T, "error": "out of memory"}
                gc.collect()
                torch.cuda.empty_cache()
            if str(T) in args.hf_lengths.split(",") and "error" not in r:
                hf = hf_step_time(cfg, T, dev)
                r["transformers"] = hf
                if "seconds" in hf:
                    r["speedup_vs_transformers"] = hf["seconds"] / r["seconds"]
            res["runs"].append(r)
            hf = r.get("transformers", {})
            print(f"{name:<22}{T:>7}{r.get('tok_s', 0):>9.0f}{100 * r.get('MFU', 0):>6.1f}%{r.get('peak_memory_GB', 0):>9.1f}"
                  f"{(T / hf['seconds']) if 'seconds' in hf else 0:>10.0f}"
                  f"{r.get('speedup_vs_transformers', 0):>8.1f}x  {hf.get('error', r.get('error', ''))}"
                  + (f"  eager glue {r['eager_glue']['tok_s']:.0f} tok/s" if "eager_glue" in r else ""), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after every run: a cut-off run keeps its rows
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

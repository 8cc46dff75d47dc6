"""Scaling on several GPUs: SFT tokens/s under torchrun (FSDP2, NCCL, bf16) on 1..N GPUs, and rollout
throughput of the engine, on the synthetic curriculum with the falcon-h1-0.5b shape (random weights).

    python bench/scale_gpu.py [--gpus 1,2] [--steps 12] [--out bench/results/scale_gpu.json]

Each SFT run: `torchrun --nproc_per_node N -m h1r sft` with the same global batch, training checkpoints
(sharded torch.distributed checkpoints) and the final model in HF layout. Exact resume is tested on the
CPU (tests/test_sft_resume.py).
Scaling efficiency = tokens/s on N GPUs / (N x tokens/s on 1 GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sh(*args, env=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def sft_run(n_gpus, model, data, out, steps, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}", "-m", "h1r",
           "sft", "--model", model, "--data", data, "--output_dir", out, "--max_steps", steps, "--batch_size", 64,
           "--micro_batch_size", 8, "--max_seq_len", 2048, "--lr", 3e-4, "--save_every", steps // 2,
           "--progress", "false", "--activation_checkpointing", "true", *extra]
    t = time.perf_counter()
    sh(*cmd, env={**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"})
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default=None, help="GPU counts to run (default: 1 and every count up to the machine's)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="bench/results/scale_gpu.json")
    ap.add_argument("--preset", default="falcon-h1-0.5b")
    ap.add_argument("--device", default="cuda", help="cpu runs a smoke test of this script (gloo, one process)")
    args = ap.parse_args(argv)
    avail = torch.cuda.device_count() if args.device == "cuda" else 1
    counts = [int(x) for x in args.gpus.split(",")] if args.gpus else sorted({1, avail})
    res = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "gpus_available": avail,
           "preset": args.preset, "sft": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sh(sys.executable, "-m", "h1r", "data", "synth", "--out", tmp / "data", "--train-per-level", 200,
           "--test-per-level", 20)
        sh(sys.executable, "-m", "h1r", "data", "tokenizer", "--data", tmp / "data" / "train.jsonl", "--out", tmp / "tok")
        sh(sys.executable, "-m", "h1r", "init", args.preset, tmp / "model", "--tokenizer", tmp / "tok",
           "--dtype", "bfloat16" if args.device == "cuda" else "float32")
        for n in counts:
            if n > avail:
                res["sft"][str(n)] = {"error": f"not run: the machine has {avail} GPU(s)"}
                continue
            out = tmp / f"sft{n}"
            secs = sft_run(n, tmp / "model", tmp / "data" / "train.jsonl", out, args.steps)
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            tps = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") and r["step"] > 2]
            res["sft"][str(n)] = {"seconds": secs, "tokens_per_s": statistics.median(tps), "steps": args.steps,
                                  "losses": [r["loss"] for r in rows if "loss" in r],
                                  "checkpoints": sorted(p.name for p in (out / "checkpoints").iterdir()),
                                  "final_model": sorted(p.name for p in (out / "final").iterdir())}
            print(f"SFT on {n} GPU(s): {res['sft'][str(n)]['tokens_per_s']:,.0f} tokens/s", flush=True)
        one = res["sft"].get("1", {}).get("tokens_per_s")
        for n, r in res["sft"].items():
            if one and "tokens_per_s" in r:
                r["scaling_efficiency"] = r["tokens_per_s"] / (int(n) * one)
        # rollout throughput: GRPO-style groups through the engine (fast path, CUDA graphs)
        from h1r import LLM, SamplingParams
        from h1r.utils.io import read_jsonl

        llm = LLM(str(tmp / "model"), device=args.device, max_num_seqs=256, max_model_len=512)
        rows = read_jsonl(tmp / "data" / "train_prompts.jsonl")[:32]
        prompts = [llm.tokenizer.apply_chat_template(r["messages"], tokenize=True) for r in rows]
        sp = SamplingParams(n=16, temperature=0.85, max_tokens=128, ignore_eos=True, logprobs=0,
                            logprobs_mode="processed")
        llm.generate(prompts[:2], sp)
        t = time.perf_counter()
        outs = llm.generate(prompts, sp)
        dt = time.perf_counter() - t
        n_tok = sum(len(c.token_ids) for o in outs for c in o.outputs)
        res["rollout"] = {"device": args.device, "prompts": 32, "group": 16, "max_tokens": 128, "tokens": n_tok,
                          "seconds": dt, "tokens_per_s": n_tok / dt}
        print(f"rollouts (32 prompts x 16): {n_tok / dt:,.0f} tokens/s on one GPU", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

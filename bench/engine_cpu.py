"""H1R's engine against transformers' `generate` on the CPU: the tiny preset, 64 prompts x 128 new
tokens, greedy, same random checkpoint, same run.

Correctness is checked against transformers' one-shot forward (teacher-forced argmax over each whole
sequence), not against its `generate`: with transformers 5.17 on the CPU torch path, batched
(batch > 1) FalconH1 generation disagrees with its own one-shot forward, while batch 1 agrees.

    python bench/engine_cpu.py [--prompts 64] [--new-tokens 128] [--prompt-len 64] [--out bench/results/engine_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--out", default="bench/results/engine_cpu.json")
    args = ap.parse_args(argv)

    import transformers

    from h1r import LLM, SamplingParams
    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset
    from tests.helpers import tiny_tokenizer_dir

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        cfg = preset("tiny", vocab_size=args.vocab)
        save_model(init_model(cfg, seed=0), d)
        tiny_tokenizer_dir(Path(d))
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(10, args.vocab, (args.prompts, args.prompt_len), generator=g)

        llm = LLM(d, dtype="float32", max_num_seqs=args.prompts, max_model_len=args.prompt_len + args.new_tokens + 8,
                  max_num_batched_tokens=4096)
        sp = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
        llm.generate(prompts[:2].tolist(), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts.tolist(), sp)
        t_h1r = time.perf_counter() - t0
        n_h1r = sum(len(o.outputs[0].token_ids) for o in outs)

        hf = transformers.FalconH1ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            hf.generate(prompts[:2], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            t0 = time.perf_counter()
            ref = hf.generate(prompts, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              do_sample=False, pad_token_id=0)
            t_hf = time.perf_counter() - t0
        n_hf = (ref.shape[1] - args.prompt_len) * args.prompts
        same = sum(o.outputs[0].token_ids == r[args.prompt_len:].tolist() for o, r in zip(outs, ref))
        # ground truth: greedy tokens must be the argmax of transformers' one-shot forward over the sequence
        P = args.prompt_len
        with torch.no_grad():
            ours = torch.tensor([p.tolist() + o.outputs[0].token_ids for p, o in zip(prompts, outs)])
            h1r_ok = (hf(ours).logits[:, P - 1:-1].argmax(-1) == ours[:, P:]).all(-1).sum().item()
            hf_ok = (hf(ref).logits[:, P - 1:-1].argmax(-1) == ref[:, P:]).all(-1).sum().item()

    res = {"preset": "tiny", "params": cfg.num_parameters(), "prompts": args.prompts, "prompt_len": args.prompt_len,
           "new_tokens": args.new_tokens, "threads": torch.get_num_threads(), "cpu": platform.processor() or "",
           "h1r": {"seconds": t_h1r, "tokens": n_h1r, "tok_per_s": n_h1r / t_h1r},
           "transformers": {"seconds": t_hf, "tokens": n_hf, "tok_per_s": n_hf / t_hf,
                            "version": transformers.__version__},
           "speedup": (n_h1r / t_h1r) / (n_hf / t_hf),
           "h1r_greedy_consistent_with_transformers_one_shot": f"{h1r_ok}/{args.prompts}",
           "transformers_generate_consistent_with_its_one_shot": f"{hf_ok}/{args.prompts}",
           "identical_outputs": f"{same}/{args.prompts}"}
    print(f"{'':<14}{'tok/s':>10}{'seconds':>10}")
    print(f"{'h1r engine':<14}{res['h1r']['tok_per_s']:>10.0f}{t_h1r:>10.2f}")
    print(f"{'transformers':<14}{res['transformers']['tok_per_s']:>10.0f}{t_hf:>10.2f}")
    print(f"speedup {res['speedup']:.2f}x")
    print(f"greedy tokens = argmax of transformers' one-shot forward: h1r {h1r_ok}/{args.prompts}, "
          f"transformers' own batched generate {hf_ok}/{args.prompts}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()

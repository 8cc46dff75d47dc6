"""`h1r eval`: evaluate a model on benchmarks, print the table, write a report folder.

    h1r eval --model DIR --benchmarks aime25,math500 --n 16 --method sample|majority|deepconf-low|deepconf-high
             [--limit N] [--data-dir DIR] [--out DIR] [--system TEXT|falcon] [--temperature 0.6 --top-p 0.95 ...]

A JSONL file works as a benchmark (`--benchmarks synth=out/data/test.jsonl`): rows with `messages`
(the synthetic held-out set) or the schema given by --prompt-key/--answer-key/--kind. An evaluation
killed part-way resumes from the records in --out (same command again).
"""

from __future__ import annotations

from pathlib import Path

from h1r.errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("eval", help="evaluate a model on benchmarks (pass@1/pass@k, maj@k, DeepConf)",
                       description="Evaluate a model; prints a table and writes OUT/report.md with plots. "
                                   "Re-running the same command resumes a killed evaluation.")
    p.add_argument("--model", required=True, help="model directory (HF layout, with tokenizer)")
    p.add_argument("--benchmarks", required=True,
                   help="comma-separated: aime24, aime25, aime26, hmmt25, math500, gsm8k, amc23, gpqa_diamond, "
                        "livecodebench, or JSONL paths (NAME=PATH to name them)")
    p.add_argument("--n", type=int, default=16, help="samples per problem (DeepConf: trace budget); default 16")
    p.add_argument("--method", default="sample", choices=["sample", "majority", "deepconf-low", "deepconf-high"])
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--data-dir", default=None, help="benchmark directory (default: $H1R_BENCH_DIR or ../shared/data/benchmarks)")
    p.add_argument("--out", default="h1r-eval", help="output folder: records (JSONL), report.md, plots")
    p.add_argument("--system", default=None, help="system prompt text, or 'falcon' for the Falcon-H1R prompt")
    p.add_argument("--warmup", type=int, default=None, help="DeepConf warm-up traces (default max(2, n/4))")
    p.add_argument("--window", type=int, default=None,
                   help="DeepConf group-confidence window and tail in tokens (default 2048; use less for short traces)")
    p.add_argument("--ks", default=None, help="k values for pass@k / maj@k, e.g. 1,4,16 (default powers of 2 up to n)")
    p.add_argument("--prompt-key", default="prompt", help="schema of JSONL benchmark files: the prompt field")
    p.add_argument("--answer-key", default="answer", help="... the gold answer field")
    p.add_argument("--kind", default="math", choices=["math", "choice", "code"], help="... how answers are graded")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify check")
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=0.6)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--min-p", type=float, default=0.0)
    s.add_argument("--max-tokens", type=int, default=None, help="tokens per sample (default: up to the context)")
    s.add_argument("--seed", type=int, default=0)
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--max-num-seqs", type=int, default=64)
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is often fastest on a busy CPU)")
    p.set_defaults(func=run)


def _ks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks values must be >= 1, got {text!r}")
    return ks


def run(args) -> int:
    from h1r.engine.sampling_params import SamplingParams
    from h1r.eval.driver import FALCON_SYSTEM_PROMPT, evaluate, level_table, load_problems, write_eval_report
    from h1r.eval.report import markdown_table

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model: {args.model} is not a directory")
    ks = _ks(args.ks)
    system = FALCON_SYSTEM_PROMPT if args.system == "falcon" else args.system
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                              max_tokens=args.max_tokens)
    problems = load_problems(args.benchmarks, args.data_dir, args.limit, args.prompt_key, args.answer_key, args.kind)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from h1r.engine.llm import LLM

    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=max(2048, 8 * args.max_num_seqs))
    result = evaluate(llm, problems, args.n, args.method, sampling, args.out, system=system, seed=args.seed, ks=ks,
                      warmup=args.warmup, timeout=args.timeout, model_name=str(Path(args.model).resolve()),
                      deepconf_options={"window": args.window, "tail": args.window} if args.window else None)
    notes = (f"Model `{args.model}`, method `{args.method}`, n = {args.n}, temperature {args.temperature}, "
             f"top-p {args.top_p}, max tokens {args.max_tokens or 'context'}, seed {args.seed}"
             + (", Falcon system prompt" if args.system == "falcon" else ", system prompt given" if system else "")
             + f". Records: `{result.records_path.name}`.")
    report = write_eval_report(result, args.out, notes=notes)
    print(markdown_table(result.summary), end="")
    if result.by_level:
        print()
        print(level_table(result.by_level), end="")
    print(f"\nreport: {report}")
    return 0

"""`h1r data ACTION`: build the embedded default's data.

    h1r data synth --out DIR [--seed S --train-per-level N --test-per-level M --traces-per-problem K
                              --families arith,linear,... --system TEXT]
    h1r data tokenizer --data DIR/train.jsonl --out TOKDIR [--vocab-size V]
    h1r data difficulty --model DIR --data DIR/train.jsonl --out OUT.jsonl [--k 8 --temperature 0.6
                        --top-p 0.95 --max-tokens 512 --seed 0 --keep-difficulty]
"""

from __future__ import annotations

import sys

from h1r.errors import DataError


def add_parser(sub):
    p = sub.add_parser("data", help="synthesise the math curriculum, train the tiny tokenizer, estimate pass rates")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    s = actions.add_parser("synth", help="write train.jsonl, train_prompts.jsonl, test.jsonl (held out)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--train-per-level", type=int, default=200, help="training problems per family and level")
    s.add_argument("--test-per-level", type=int, default=50, help="held-out problems per family and level")
    s.add_argument("--traces-per-problem", type=int, default=4, help="teacher traces per training problem")
    s.add_argument("--families", default=None,
                   help="comma-separated subset of: arith, linear, modular, gcd, base (default: all)")
    s.add_argument("--system", default=None, help="a system prompt to put before every user turn (default: none)")
    s.set_defaults(func=run_synth)

    t = actions.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a chat JSONL file")
    t.add_argument("--data", required=True, help="chat JSONL (e.g. the train.jsonl of `h1r data synth`)")
    t.add_argument("--out", required=True, help="output directory (tokenizer.json, tokenizer_config.json)")
    t.add_argument("--vocab-size", type=int, default=512,
                   help="upper bound; a small corpus can have fewer merges (default 512, the tiny preset's)")
    t.set_defaults(func=run_tokenizer)

    d = actions.add_parser(
        "difficulty", help="estimate each problem's pass rate with a model (sample k, grade) for SFT weighting",
        description="Writes the rows of --data with 'pass_rate' (correct/k per problem, rows joined on 'id') "
                    "and 'pass_k'. The SFT weighting reads 'difficulty' before 'pass_rate', so an existing "
                    "'difficulty' label is moved to 'difficulty_prior' unless --keep-difficulty is given.")
    d.add_argument("--model", required=True, help="model directory (HF layout, with tokenizer and chat template)")
    d.add_argument("--data", required=True, help="JSONL rows with 'messages' (or 'prompt') and the gold 'answer'")
    d.add_argument("--out", required=True, help="output JSONL (the input rows plus pass_rate, pass_k)")
    d.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    d.add_argument("--temperature", type=float, default=0.6)
    d.add_argument("--top-p", type=float, default=0.95)
    d.add_argument("--max-tokens", type=int, default=512, help="tokens per sample (default 512)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--keep-difficulty", action="store_true",
                   help="keep existing 'difficulty' labels (they then take precedence over pass_rate in SFT)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    d.add_argument("--max-num-seqs", type=int, default=256, help="sequences decoded at once")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is often fastest on a busy CPU)")
    d.set_defaults(func=run_difficulty)


def run_synth(args) -> int:
    from h1r.data.synth import write_curriculum

    families = None
    if args.families is not None:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
    m = write_curriculum(args.out, args.seed, args.train_per_level, args.test_per_level,
                         args.traces_per_problem, families, args.system, progress=True)
    rows = m["rows"]
    print(f"wrote {args.out}: train.jsonl {rows['train']} rows (SFT), train_prompts.jsonl "
          f"{rows['train_prompts']} problems, test.jsonl {rows['test']} held-out problems "
          f"({', '.join(m['families'])}; levels 1-5)")
    return 0


def run_tokenizer(args) -> int:
    from h1r.data.tokenizer_train import length_table, train_from_jsonl
    from h1r.tokenizer import load_tokenizer
    from h1r.utils.io import read_jsonl

    if args.vocab_size is None or args.vocab_size < 1:
        raise DataError(f"--vocab-size must be a positive integer, got {args.vocab_size}")
    # tokenizers draws its bar on stdout: only where a person watches it
    out = train_from_jsonl(args.data, args.out, args.vocab_size, progress=sys.stdout.isatty())
    tok = load_tokenizer(out)
    print(f"wrote {out}: vocabulary {tok.vocab_size} tokens")
    table = length_table(tok, read_jsonl(args.data))
    if table:
        print("level  prompt tokens (mean/max)  response tokens (mean/max)")
        for level, (pm, px, rm, rx) in table.items():
            print(f"{level!s:>5}  {pm:11.1f} / {px:<4d}           {rm:11.1f} / {rx:<4d}")
    return 0


def run_difficulty(args) -> int:
    from pathlib import Path

    from h1r.data.difficulty import annotate, estimate_pass_rates, read_problems, summary_by
    from h1r.engine.sampling_params import SamplingParams
    from h1r.errors import ConfigError
    from h1r.utils.io import write_jsonl

    if args.k < 1:
        raise DataError(f"--k must be a positive integer, got {args.k}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model: {args.model} is not a directory")
    rows, keys, problems = read_problems(args.data)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from h1r.engine.llm import LLM

    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=max(2048, 8 * args.max_num_seqs))
    rates = estimate_pass_rates(llm, problems, args.k, sampling, args.seed, progress=True)
    write_jsonl(args.out, annotate(rows, keys, rates, args.keep_difficulty))
    table = summary_by(rows, keys, rates)
    print(f"wrote {args.out}: {len(rows)} rows, {len(problems)} problems, k={args.k}"
          + ("" if args.keep_difficulty else " ('difficulty' labels moved to 'difficulty_prior')"))
    print("level  problems  mean pass rate  hard/medium/easy (<=0.25 / between / >=0.75)")
    for level, s in table.items():
        print(f"{level:>5}  {s['problems']:8d}  {s['pass_rate']:14.3f}  {s['hard']}/{s['medium']}/{s['easy']}")
    return 0

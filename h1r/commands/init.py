"""`h1r init PRESET DIR`: write a randomly initialised checkpoint of a named shape (tests, benchmarks)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("init", help="write a random checkpoint of a preset shape (e.g. tiny, falcon-h1-7b)")
    p.add_argument("preset", help="preset name (h1r.config.PRESETS)")
    p.add_argument("out", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the preset's)")
    p.add_argument("--vocab-size", type=int, default=None, help="override the vocabulary size")
    p.add_argument("--tokenizer", default=None, help="directory whose tokenizer files are copied in")
    p.set_defaults(func=run)


def run(args) -> int:
    from h1r.checkpoint import init_model, resolve_dtype, save_model
    from h1r.config import preset

    over = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    tok = None
    if args.tokenizer:
        from h1r.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        over.setdefault("vocab_size", tok.vocab_size)
    cfg = preset(args.preset, **over)
    dtype = resolve_dtype(args.dtype or cfg.torch_dtype)
    cfg.torch_dtype = str(dtype).replace("torch.", "")
    model = init_model(cfg, seed=args.seed, dtype=dtype)
    save_model(model, args.out, tokenizer=tok)
    print(f"wrote {args.preset} ({cfg.num_parameters() / 1e6:.2f} M parameters) to {args.out}")
    return 0

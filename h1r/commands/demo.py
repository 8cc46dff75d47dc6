"""`h1r demo`: the whole recipe on the embedded default (data -> tokenizer -> SFT -> GRPO -> evaluation
with pass@1, maj@K and DeepConf), on a CPU, in minutes; see h1r.demo."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("demo", help="run the whole recipe on the embedded default (data -> SFT -> GRPO -> DeepConf eval)",
                       description="From nothing: synthesise the curriculum, train the tokenizer, SFT a tiny hybrid "
                                   "with difficulty-aware weighting, run GRPO, evaluate every stage on held-out "
                                   "problems (pass@1, maj@K, DeepConf) and write OUT/report.md with plots.")
    p.add_argument("--out", default="h1r-demo", help="output folder (default ./h1r-demo; a previous demo there is replaced)")
    p.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (under two minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1: fastest on a busy 2-core CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("sizes (defaults: the 10-minute run, or --quick's)")
    for flag, kind, help_ in (
        ("--train-per-level", int, "training problems per family and level"),
        ("--test-per-level", int, "held-out problems per family and level"),
        ("--sft-steps", int, "SFT optimiser steps"),
        ("--sft-batch-size", int, "SFT examples per step"),
        ("--grpo-steps", int, "GRPO steps (0 skips GRPO)"),
        ("--grpo-prompts-per-step", int, "GRPO groups per step"),
        ("--grpo-generations", int, "GRPO rollouts per prompt"),
        ("--eval-samples", int, "K: samples per problem for pass@1 / maj@K, and DeepConf's trace budget"),
        ("--max-tokens", int, "tokens per sample"),
        ("--weighting", str, "SFT weighting: sample | loss | none (uniform)"),
    ):
        g.add_argument(flag, type=kind, default=None, help=help_)
    g.add_argument("--deepconf", default=None, help="DeepConf variants to run: low,high (default), low, high")
    p.set_defaults(func=run)


def run(args) -> int:
    from h1r.demo import DemoConfig, run_demo, summary_table

    over = {k: getattr(args, k) for k in ("train_per_level", "test_per_level", "sft_steps", "sft_batch_size",
                                          "grpo_steps", "grpo_prompts_per_step", "grpo_generations", "eval_samples",
                                          "max_tokens", "weighting", "threads") if getattr(args, k) is not None}
    over.update(out=args.out, seed=args.seed, progress=not args.no_progress)
    if args.deepconf is not None:
        over["deepconf_variants"] = tuple(v.strip() for v in args.deepconf.split(",") if v.strip())
    cfg = DemoConfig.quick(**over) if args.quick else DemoConfig(**over)
    if "eval_samples" in over and "deepconf_warmup" not in over:
        cfg.deepconf_warmup = max(1, min(cfg.deepconf_warmup, cfg.eval_samples // 2))
    summary = run_demo(cfg)
    print()
    print(summary_table(summary), end="")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"\nreport: {cfg.out}/report.md   (wall time {summary['seconds']['total']:.0f} s)")
    return 0

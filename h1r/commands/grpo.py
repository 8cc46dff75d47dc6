"""`h1r grpo --config FILE [--key value ...]`: GRPO with verifiable rewards (see h1r.train.grpo).

`--filter-only` runs the difficulty filter against the starting model and writes
OUTPUT_DIR/curriculum.jsonl (see h1r.train.grpo_filter). Multi-GPU: torchrun --nproc_per_node N -m h1r grpo.
"""

from __future__ import annotations

import argparse
import dataclasses


def _keys_help() -> str:
    from h1r.train.grpo_config import GRPOConfig

    lines = []
    for f in dataclasses.fields(GRPOConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  --{f.name} (default: {default!r})")
    return "config keys (meanings in h1r/train/grpo_config.py):\n" + "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("grpo", help="GRPO reinforcement learning with verifiable rewards (resumable)",
                       description="Every GRPOConfig key can come from --config and be overridden with --key value, "
                                   "e.g. --learning_rate 1e-6 --num_generations 8. Names follow TRL's GRPOConfig.",
                       epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file with GRPOConfig keys")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints (exactly)")
    p.add_argument("--filter-only", action="store_true",
                   help="only run the difficulty filter and write OUTPUT_DIR/curriculum.jsonl")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    from h1r.train.grpo_config import GRPOConfig
    from h1r.utils.config import load_config

    cfg = load_config(GRPOConfig, args.config, getattr(args, "overrides", None))
    if args.resume:
        cfg.resume = True
    if args.filter_only:
        from h1r.train.grpo_filter import difficulty_filter

        print(difficulty_filter(cfg))
        return 0
    from h1r.train.grpo import train

    print(train(cfg))
    return 0

"""`h1r sft --config FILE [--key value ...]`: difficulty-aware SFT (see h1r.train.sft, h1r.train.config).

Under `torchrun --nproc_per_node N -m h1r sft ...` it trains on N GPUs (or N CPU processes) with FSDP2.
"""

from __future__ import annotations

import argparse
import dataclasses


def _keys_help() -> str:
    from h1r.train.config import SFTConfig

    lines = []
    for f in dataclasses.fields(SFTConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  --{f.name} (default: {default!r})")
    return "config keys (meanings in h1r/train/config.py):\n" + "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("sft", help="supervised fine-tuning on JSONL traces (difficulty-aware, packed, resumable)",
                       description="Every SFTConfig key can come from --config and be overridden with --key value, "
                                   "e.g. --lr 3e-4 --weighting loss. Multi-GPU: torchrun --nproc_per_node N -m h1r sft.",
                       epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file with SFTConfig keys")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints (exactly)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    from h1r.train.config import SFTConfig
    from h1r.train.sft import train
    from h1r.utils.config import load_config

    cfg = load_config(SFTConfig, args.config, getattr(args, "overrides", None))
    if args.resume:
        cfg.resume = True
    final = train(cfg)
    print(final)
    return 0

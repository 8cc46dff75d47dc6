"""Small pieces every trainer (SFT, GRPO) needs: seeding, the compute dtype, the base model, and
trimming the metrics log of a resumed run."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from h1r.errors import CheckpointError, ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def half_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the `dtype` setting, None for fp32: "auto" = bf16 on GPU, fp32 on CPU."""
    return torch.bfloat16 if dtype == "bf16" or (dtype == "auto" and device.type == "cuda") else None


def compute_autocast(dtype: str, device: torch.device):
    """bf16 autocast (weights and optimiser state stay fp32) where asked."""
    half = half_dtype(dtype, device)
    if half is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=half)


def load_base_model(model_dir: str, random_init: bool = False, seed: int = 0):
    """The model to train, fp32 on CPU: the checkpoint in `model_dir`, or a random init of its config.json."""
    from h1r.checkpoint import init_model, load_model
    from h1r.config import ModelConfig

    if random_init:
        try:
            mcfg = ModelConfig.from_json_file(Path(model_dir) / "config.json")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        return init_model(mcfg, seed=seed, dtype=torch.float32)
    return load_model(model_dir, dtype=torch.float32)


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows logged after `last_step`: a killed run logged steps that the resumed run redoes."""
    from h1r.utils.io import atomic_write_text

    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line + "\n")
        except (json.JSONDecodeError, AttributeError):
            pass  # a torn last line
    atomic_write_text(path, "".join(keep))

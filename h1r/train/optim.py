"""AdamW with decoupled weight decay on matrices only, and warmup + linear/cosine decay."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def build_adamw(model: nn.Module, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """Weight decay on parameters with >= 2 dims (linear weights, embeddings, conv kernels); none on
    norms, biases and the Mamba scalars (A_log, D, dt_bias), whose decay would only pull them to 0."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


class WarmupDecay:
    """lr factor at step s: linear warmup 0 -> 1 over `warmup` steps, then linear or cosine decay to
    `min_ratio` at `total` steps (or constant). A class, not a lambda, so the scheduler pickles."""

    def __init__(self, total: int, warmup: int, kind: str = "linear", min_ratio: float = 0.0):
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.total, self.warmup, self.kind, self.min_ratio = total, warmup, kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        shape = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, kind: str = "linear",
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(total_steps, warmup_steps, kind, min_ratio))

"""Difficulty-aware weighting of SFT examples (recipe part A.2.3, item 5).

Difficulty of one example, the first rule that applies:
  1. its `difficulty` field: "easy" | "medium" | "hard";
  2. its `pass_rate` field (0..1): hard if <= pass_rate_hard, easy if >= pass_rate_easy, else medium;
  3. the length of its response in tokens: hard if >= length_hard, easy if <= length_easy (each rule
     only when its threshold is set);
  4. otherwise medium.
Weight: hard -> hard_weight (by label or length) or, by pass rate p, interpolated from hard_weight_max at
p = 0 down to hard_weight_min at p = pass_rate_hard (the less often solved, the heavier); medium ->
medium_weight; easy -> easy_weight (0 drops easy examples). An explicit `weight` field overrides the
weight (the difficulty is still reported).

How the weights act (config `weighting`):
  "sample"  per epoch each example appears floor(w) times plus once more with probability frac(w),
            drawn from (seed, epoch) so every rank and every resumed run sees the same stream; the loss
            is the plain token mean. This is the recipe's most likely reading (weighted data mixing).
  "loss"    each example with w > 0 appears once per epoch and each of its supervised tokens' loss is
            multiplied by w; the sum is still divided by the number of supervised tokens, so w = 1
            everywhere is exactly the token-mean NLL.
  "none"    uniform SFT (every example once, weight 1): the baseline for ablations.
"""

from __future__ import annotations

import math

import numpy as np

from h1r.errors import DataError

DIFFICULTIES = ("easy", "medium", "hard")


def _number(row: dict, key: str, where: str) -> float:
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DataError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def example_weight(row: dict, n_response_tokens: int, cfg, where: str = "") -> tuple[str, float]:
    """-> (difficulty, weight) of one data row; `cfg` carries the thresholds (SFTConfig fields)."""
    difficulty, weight = "medium", cfg.medium_weight
    if row.get("difficulty") is not None:
        difficulty = row["difficulty"]
        if difficulty not in DIFFICULTIES:
            raise DataError(f"{where}: 'difficulty' must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
        weight = {"easy": cfg.easy_weight, "medium": cfg.medium_weight, "hard": cfg.hard_weight}[difficulty]
    elif row.get("pass_rate") is not None:
        p = _number(row, "pass_rate", where)
        if not 0.0 <= p <= 1.0:
            raise DataError(f"{where}: 'pass_rate' must be in [0, 1], got {p}")
        if p <= cfg.pass_rate_hard:
            difficulty = "hard"
            frac = p / cfg.pass_rate_hard if cfg.pass_rate_hard > 0 else 0.0
            weight = cfg.hard_weight_max - (cfg.hard_weight_max - cfg.hard_weight_min) * frac
        elif p >= cfg.pass_rate_easy:
            difficulty, weight = "easy", cfg.easy_weight
    elif cfg.length_hard is not None and n_response_tokens >= cfg.length_hard:
        difficulty, weight = "hard", cfg.hard_weight
    elif cfg.length_easy is not None and n_response_tokens <= cfg.length_easy:
        difficulty, weight = "easy", cfg.easy_weight
    if row.get("weight") is not None:
        weight = _number(row, "weight", where)
        if weight < 0:
            raise DataError(f"{where}: 'weight' must be >= 0, got {weight}")
    return difficulty, float(weight)


def epoch_counts(weights: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How many times each example appears in `epoch`: floor(w) plus one with probability frac(w)."""
    w = np.asarray(weights, dtype=np.float64)
    base = np.floor(w)
    u = np.random.default_rng([seed, epoch, 0]).random(len(w))
    return (base + (u < (w - base))).astype(np.int64)


def epoch_order(weights: np.ndarray, mode: str, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Example indices of one epoch, in the order they are consumed (int64 [n_epoch])."""
    w = np.asarray(weights, dtype=np.float64)
    if mode == "sample":
        counts = epoch_counts(w, seed, epoch)
    elif mode == "loss":
        counts = (w > 0).astype(np.int64)
    elif mode == "none":
        counts = np.ones(len(w), dtype=np.int64)
    else:
        raise ValueError(f"unknown weighting mode {mode!r}")
    order = np.repeat(np.arange(len(w), dtype=np.int64), counts)
    if shuffle:
        order = np.random.default_rng([seed, epoch, 1]).permutation(order)
    return order


def token_weight(weight: float, mode: str) -> float:
    """The factor on an example's token losses: its weight in "loss" mode, 1 otherwise."""
    return float(weight) if mode == "loss" else 1.0

"""Online DeepConf (Alg. 2), the engine-independent parts: the warm-up threshold, the per-token
stop hook, the consensus test for adaptive sampling, and a replay of early stopping on finished
traces (the paper's protocol: pre-generate a pool, then replay it).

Parameter trap (reference B.6.3): the pip package's `confidence_percentile=90` means "keep the
top 90%" (DeepConf-high) while the older scripts' 90 meant "the 90th percentile" (DeepConf-low).
Here the names say which: `variant="low"` == `keep_top_percent=10` -> s = 90th percentile of the
warm-up lowest-group confidences; `variant="high"` == `keep_top_percent=90` -> s = 10th percentile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from h1r.deepconf.confidence import (
    DEFAULT_TOPK,
    DEFAULT_WINDOW,
    SlidingGroupConfidence,
    group_confidences,
    token_confidence,
)
from h1r.deepconf.voting import VoteResult, top_percent_cutoff
from h1r.errors import ConfigError

Variant = Literal["low", "high"]
KEEP_TOP_PERCENT: dict[str, float] = {"low": 10.0, "high": 90.0}
DEFAULT_CONSENSUS = 0.95


def keep_top_percent_of(variant: str) -> float:
    if variant not in KEEP_TOP_PERCENT:
        raise ConfigError(
            f"DeepConf variant must be 'low' (keep top 10%) or 'high' (keep top 90%), got {variant!r}"
        )
    return KEEP_TOP_PERCENT[variant]


def confidence_threshold(
    warmup_lowest: Sequence[float],
    *,
    variant: Variant | None = None,
    keep_top_percent: float | None = None,
) -> float:
    """The stop threshold s from the warm-up traces' lowest group confidences. Give exactly one of
    `variant` ("low" | "high") or `keep_top_percent` (the share of warm-up traces that pass)."""
    if (variant is None) == (keep_top_percent is None):
        raise ConfigError("give exactly one of variant ('low'/'high') or keep_top_percent")
    if variant is not None:
        keep_top_percent = keep_top_percent_of(variant)
    return top_percent_cutoff(warmup_lowest, keep_top_percent)


class ConfidenceStopHook:
    """Per-trace early stop: the engine calls `hook(token_id, topk_logprobs)` after each sampled
    token; it returns True as soon as the window is full and its mean is below the threshold. The
    token just sampled is kept and counted. Make one hook per sequence (it holds that trace's
    state). After stopping it keeps returning True without consuming further input."""

    def __init__(self, threshold: float, window: int = DEFAULT_WINDOW, topk: int = DEFAULT_TOPK):
        if not math.isfinite(threshold):
            raise ConfigError(f"stop threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.topk = topk  # how many logprobs per token the engine should compute and pass
        self.group = SlidingGroupConfidence(window)
        self.confidences: list[float] = []  # this trace's token confidences so far
        self.stopped = False

    def __call__(self, token_id: int, topk_logprobs: Sequence[float]) -> bool:
        if self.stopped:
            return True
        c = token_confidence(topk_logprobs, self.topk)
        self.confidences.append(c)
        value = self.group.push(c)
        if value is not None and value < self.threshold:
            self.stopped = True
        return self.stopped

    @property
    def num_tokens(self) -> int:
        return len(self.confidences)


def make_stop_hook(threshold: float, window: int = DEFAULT_WINDOW, topk: int = DEFAULT_TOPK) -> ConfidenceStopHook:
    """A fresh stop hook for one sequence: `hook(token_id: int, topk_logprobs: list[float]) -> bool`."""
    return ConfidenceStopHook(threshold, window, topk)


@dataclass(frozen=True)
class ConfidenceStop:
    """What the engine needs to early-stop the final-phase traces: one hook per sequence."""

    threshold: float
    window: int = DEFAULT_WINDOW
    topk: int = DEFAULT_TOPK

    def make_hook(self) -> ConfidenceStopHook:
        return make_stop_hook(self.threshold, self.window, self.topk)


def stop_point(confidences, threshold: float, window: int = DEFAULT_WINDOW) -> int | None:
    """Tokens generated when the stop hook fires (the token whose window mean first falls below
    `threshold`, inclusive), or None if it never fires. Same arithmetic as the hook."""
    below = np.flatnonzero(group_confidences(confidences, window) < threshold)
    return int(below[0]) + window if below.size else None


@dataclass(frozen=True)
class ReplayedTrace:
    tokens: int  # tokens counted: up to and including the stop token, else the whole trace
    stopped_at: int | None  # = tokens when the hook fired, None when the trace ran to its end
    kept: bool  # survives: not stopped and its lowest group confidence (plain mean if short) >= s


@dataclass(frozen=True)
class Replay:
    traces: list[ReplayedTrace]
    total_tokens: int  # every generated token, including those of stopped traces

    @property
    def kept(self) -> list[bool]:
        return [t.kept for t in self.traces]


def replay_online(traces: Sequence, threshold: float, window: int = DEFAULT_WINDOW) -> Replay:
    """Simulate online early stopping on fully generated traces (each a sequence of token
    confidences). A trace shorter than the window can never fill it, so it is never stopped; it
    is filtered at completion when its plain mean is below s, as the reference does. Hence the
    excluded set is exactly {trace : lowest group confidence < s}."""
    out = []
    for confs in traces:
        c = np.asarray(confs, dtype=np.float64)
        at = stop_point(c, threshold, window)
        if at is not None:
            out.append(ReplayedTrace(tokens=at, stopped_at=at, kept=False))
        else:
            short_and_low = c.size < window and (c.size == 0 or float(c.mean()) < threshold)
            out.append(ReplayedTrace(tokens=int(c.size), stopped_at=None, kept=not short_and_low))
    return Replay(traces=out, total_tokens=sum(t.tokens for t in out))


def consensus_reached(vote: VoteResult | None, tau: float | None = DEFAULT_CONSENSUS) -> bool:
    """Adaptive sampling's stop test: the leading answer holds >= tau of the vote weight.
    tau=None is budget-only mode (never stops early)."""
    if tau is None or vote is None or vote.answer is None:
        return False
    return vote.share >= tau


def should_continue(
    generated: int, budget: int, vote: VoteResult | None, tau: float | None = DEFAULT_CONSENSUS
) -> bool:
    """Generate more traces? Checked before each new batch, after warm-up only."""
    return generated < budget and not consensus_reached(vote, tau)

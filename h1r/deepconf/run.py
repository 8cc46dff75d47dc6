"""DeepConf on one problem, independent of how traces are produced.

`run_deepconf(generate, cfg)` runs Alg. 2 (online) or Alg. 1 (offline). `generate(n, stop)` must
return n finished TraceRecords (see `make_trace`); when `stop` is a ConfidenceStop, every sequence
gets its own `stop.make_hook()` and a sequence the hook stops finishes with finish_reason
"confidence". The engine supplies a `generate` that samples; `pool_generator` supplies one that
replays pre-generated traces (the paper's evaluation protocol), so both share this exact loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from h1r.deepconf.confidence import DEFAULT_TAIL, DEFAULT_TOPK, DEFAULT_WINDOW, METRICS, trace_confidence
from h1r.deepconf.online import (
    DEFAULT_CONSENSUS,
    ConfidenceStop,
    confidence_threshold,
    keep_top_percent_of,
    should_continue,
    stop_point,
)
from h1r.deepconf.result import DeepConfResult, TraceRecord
from h1r.deepconf.voting import VOTE_METHODS, group_answers, offline_deepconf, vote, vote_all
from h1r.errors import ConfigError

GenerateFn = Callable[[int, ConfidenceStop | None], list[TraceRecord]]


@dataclass
class DeepConfConfig:
    """Defaults follow the paper (App. F) and the Falcon-H1R report: DeepConf-low, 16 warm-up
    traces, 2,048-token window, τ = 0.95. `consensus=None` is budget-only (Falcon's setting)."""

    mode: Literal["online", "offline"] = "online"
    variant: Literal["low", "high"] = "low"  # low: keep top 10% (s = 90th pct); high: keep top 90%
    budget: int = 512  # total traces, warm-up included
    warmup_traces: int = 16
    consensus: float | None = DEFAULT_CONSENSUS  # τ; None = always spend the whole budget
    step: int = 8  # final-phase traces launched between consensus checks (budget-only: one batch)
    window: int = DEFAULT_WINDOW
    tail: int = DEFAULT_TAIL
    topk: int = DEFAULT_TOPK
    vote_method: str = "min_window_weighted"  # picks `answer` (online: Alg. 2 weights by lowest group)
    filter_by: str = "lowest"  # offline mode: the confidence used to keep the top traces

    def __post_init__(self):
        keep_top_percent_of(self.variant)
        if self.mode not in ("online", "offline"):
            raise ConfigError(f"DeepConf mode must be 'online' or 'offline', got {self.mode!r}")
        for name in ("budget", "warmup_traces", "step", "window", "tail", "topk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"DeepConf {name} must be a positive integer, got {v!r}")
        if self.mode == "online" and self.warmup_traces > self.budget:
            raise ConfigError(f"warmup_traces ({self.warmup_traces}) exceeds the budget ({self.budget})")
        if self.consensus is not None and not 0.0 < self.consensus <= 1.0:
            raise ConfigError(f"consensus τ must be in (0, 1] or None, got {self.consensus!r}")
        if self.vote_method not in VOTE_METHODS:
            raise ConfigError(f"unknown vote method {self.vote_method!r} (valid: {', '.join(VOTE_METHODS)})")
        if self.filter_by not in METRICS:
            raise ConfigError(f"unknown confidence metric {self.filter_by!r} (valid: {', '.join(METRICS)})")

    @property
    def keep_top_percent(self) -> float:
        return keep_top_percent_of(self.variant)


def _generate(generate: GenerateFn, n: int, stop: ConfidenceStop | None, stage: str) -> list[TraceRecord]:
    traces = list(generate(n, stop))
    if len(traces) != n:
        raise ConfigError(f"generate returned {len(traces)} traces, {n} were asked for")
    for t in traces:
        t.stage = stage
    return traces


def _finish(cfg, traces, threshold, ended_by, votes=None) -> DeepConfResult:
    answers = [t.answer if t.kept else None for t in traces]
    confs = [t.confidence for t in traces]
    votes = votes or vote_all(answers, confs, group_answers(answers))
    chosen = votes[cfg.vote_method]
    return DeepConfResult(
        answer=chosen.answer,
        share=chosen.share,
        method=cfg.vote_method,
        votes=votes,
        traces=traces,
        threshold=threshold,
        tokens=DeepConfResult.count_tokens(traces),
        ended_by=ended_by,
        config=dataclasses.asdict(cfg),
    )


def run_deepconf(generate: GenerateFn, cfg: DeepConfConfig | None = None) -> DeepConfResult:
    """Solve one problem with DeepConf; see the module docstring for the `generate` contract."""
    cfg = cfg or DeepConfConfig()
    if cfg.mode == "offline":
        traces = _generate(generate, cfg.budget, None, "final")
        answers = [t.answer for t in traces]
        confs = [t.confidence for t in traces]
        votes, kept, cutoff = offline_deepconf(answers, confs, cfg.keep_top_percent, cfg.filter_by)
        for t, k in zip(traces, kept):
            t.kept = k
        return _finish(cfg, traces, cutoff, "budget", votes)

    warm = _generate(generate, cfg.warmup_traces, None, "warmup")
    lowest = [t.confidence.lowest for t in warm]
    threshold = confidence_threshold(lowest, variant=cfg.variant) if any(map(math.isfinite, lowest)) else None
    traces = list(warm)
    _apply_filter(warm, threshold)
    ended_by = "budget"
    while True:
        answers = [t.answer if t.kept else None for t in traces]
        current = vote(answers, [t.confidence for t in traces], cfg.vote_method)
        if not should_continue(len(traces), cfg.budget, current, cfg.consensus):
            ended_by = "budget" if len(traces) >= cfg.budget else "consensus"
            break
        left = cfg.budget - len(traces)
        n = left if cfg.consensus is None else min(cfg.step, left)
        stop = ConfidenceStop(threshold, cfg.window, cfg.topk) if threshold is not None else None
        batch = _generate(generate, n, stop, "final")
        _apply_filter(batch, threshold)
        traces.extend(batch)
    return _finish(cfg, traces, threshold, ended_by)


def _apply_filter(traces: Sequence[TraceRecord], threshold: float | None) -> None:
    """The same s re-applied at completion: stopped traces and any whose lowest group (plain mean
    when shorter than the window) is below s do not vote."""
    for t in traces:
        low = t.confidence.lowest
        passes = threshold is None or (math.isfinite(low) and low >= threshold)
        t.kept = t.finish_reason != "confidence" and passes


def pool_generator(
    pool: Sequence[TraceRecord], window: int = DEFAULT_WINDOW, tail: int = DEFAULT_TAIL
) -> GenerateFn:
    """A `generate` that hands out pre-generated traces in order, replaying early stopping on the
    stored token confidences: a stopped trace is cut at its stop point, loses its answer, and
    counts only the tokens up to and including the stop token."""
    it = iter(pool)

    def generate(n: int, stop: ConfidenceStop | None) -> list[TraceRecord]:
        out = []
        for _ in range(n):
            src = next(it, None)
            if src is None:
                raise ConfigError(f"trace pool of {len(pool)} is exhausted")
            if src.token_confidences is None:
                raise ConfigError("replay needs traces with token_confidences")
            at = stop_point(src.token_confidences, stop.threshold, stop.window) if stop else None
            if at is None:
                out.append(dataclasses.replace(src, kept=True))
            else:
                confs = list(src.token_confidences[:at])
                out.append(dataclasses.replace(
                    src, answer=None, num_tokens=at, finish_reason="confidence", kept=False, text=None,
                    token_confidences=confs, confidence=trace_confidence(confs, window, tail),
                ))
        return out

    return generate

"""DeepConf confidence signals (paper §2–3.1): token, sliding-group, lowest, bottom-10%, tail, mean.

Token confidence C_i = −(1/k) Σ_j log P_i(j) over the k top candidates at position i, exactly the
k values the engine returns (the paper's vLLM patch: `−mean(logprobs[1:])`). The sampled token is
NOT added separately: if it is among the top k it counts once, if it is outside it does not count
(unlike the pip package's offline path, which can average 21 values). Higher C means more
confident: a peaked distribution pushes the other top-k log-probabilities far below zero.

Exactness matters here: online early stopping must stop exactly the traces whose offline lowest
group confidence is below the threshold. So both paths use the same float64 operations in the same
order: a left-to-right sum over the k values, then window means as differences of left-to-right
prefix sums, (P[t] − P[t−w]) / w. `np.cumsum` and a Python running sum round identically.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from h1r.errors import ConfigError

DEFAULT_WINDOW = 2048
DEFAULT_TAIL = 2048
DEFAULT_TOPK = 20
BOTTOM_FRACTION = 0.1
# −inf (a masked token, or a vocabulary smaller than k) would make C infinite and poison every
# window containing it; e^-100 is already below float32's smallest normal, i.e. "impossible".
LOGPROB_FLOOR = -100.0


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _row_values(row) -> list[float]:
    return list(row.values()) if isinstance(row, Mapping) else list(row)


def token_confidence(topk_logprobs: Sequence[float] | Mapping, k: int | None = None) -> float:
    """C_i from one position's top-k logprobs (a list, or a {token: logprob} dict's values).

    k=None uses every value given; a smaller k keeps the k largest. Values below LOGPROB_FLOOR
    (including −inf) are clipped to it.
    """
    values = _row_values(topk_logprobs)
    if not values:
        raise ConfigError("token confidence needs at least one logprob per token, got none")
    if k is not None and len(values) > _check_positive("k", k):
        values = sorted(values, reverse=True)[:k]
    total = 0.0
    for v in values:
        v = float(v)
        if v != v:
            raise ConfigError("token confidence: a logprob is NaN")
        total += v if v > LOGPROB_FLOOR else LOGPROB_FLOOR
    return -(total / len(values))


def token_confidences(topk_logprobs, k: int | None = None) -> np.ndarray:
    """Per-token C for a whole trace: [T, k] array-like (or a list of per-token lists/dicts) -> [T].

    Gives bit-identical values to `token_confidence` applied row by row.
    """
    if hasattr(topk_logprobs, "detach"):  # a torch tensor
        topk_logprobs = topk_logprobs.detach().cpu().numpy()
    if isinstance(topk_logprobs, np.ndarray):
        arr = topk_logprobs.astype(np.float64)
    else:
        rows = [_row_values(r) for r in topk_logprobs]
        if not rows:
            return np.zeros(0, dtype=np.float64)
        if len({len(r) for r in rows}) != 1:  # ragged: rare, do it the slow exact way
            return np.array([token_confidence(r, k) for r in rows], dtype=np.float64)
        arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigError(f"top-k logprobs must be 2-D [tokens, k], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if arr.shape[1] == 0:
        raise ConfigError("token confidence needs at least one logprob per token, got none")
    if np.isnan(arr).any():
        raise ConfigError("token confidence: a logprob is NaN")
    if k is not None and arr.shape[1] > _check_positive("k", k):
        arr = -np.sort(-arr, axis=1)[:, :k]  # the k largest, in descending order like sorted(reverse=True)
    arr = np.maximum(arr, LOGPROB_FLOOR)
    total = arr[:, 0].copy()  # left-to-right, the same rounding as the scalar loop
    for j in range(1, arr.shape[1]):
        total += arr[:, j]
    return -(total / arr.shape[1])


def group_confidences(confidences, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """Stride-1 means of every full window of `window` tokens: [T] -> [T − window + 1].

    Empty when the trace is shorter than the window (the trace metrics then fall back to the plain
    mean). Entry j is the group confidence once token j + window − 1 has been generated.
    """
    window = _check_positive("window", window)
    c = np.asarray(confidences, dtype=np.float64)
    if c.size < window:
        return np.zeros(0, dtype=np.float64)
    prefix = np.concatenate(([0.0], np.cumsum(c)))  # [T+1], prefix[t] = sum of the first t tokens
    return (prefix[window:] - prefix[:-window]) / window


class SlidingGroupConfidence:
    """Streaming group confidence: O(1) per token, the same values as `group_confidences`."""

    def __init__(self, window: int = DEFAULT_WINDOW):
        self.window = _check_positive("window", window)
        self._prefix: deque[float] = deque([0.0], maxlen=self.window + 1)  # the last window+1 prefix sums
        self.count = 0  # tokens seen
        self.lowest = math.inf  # lowest full-window mean so far

    def push(self, confidence: float) -> float | None:
        """Add one token's C; return the current group confidence, or None until the window is full."""
        self._prefix.append(self._prefix[-1] + float(confidence))
        self.count += 1
        value = self.value
        if value is not None and value < self.lowest:
            self.lowest = value
        return value

    @property
    def full(self) -> bool:
        return self.count >= self.window

    @property
    def value(self) -> float | None:
        """Mean of the last `window` token confidences, or None before the window is full."""
        if not self.full:
            return None
        return (self._prefix[-1] - self._prefix[0]) / self.window


@dataclass(frozen=True)
class TraceConfidence:
    """Trace-level confidences (all: higher = more confident). NaN for an empty trace."""

    mean: float  # average token confidence over the trace ("self-certainty")
    lowest: float  # min over window means; the plain mean when the trace is shorter than the window
    bottom: float  # mean of the lowest 10% of window means (at least one window)
    tail: float  # mean of the last `tail` tokens (the whole trace if shorter)

    def to_dict(self) -> dict:
        return asdict(self)

    def get(self, name: str) -> float:
        if name not in METRICS:
            raise ConfigError(f"unknown confidence metric {name!r} (valid: {', '.join(METRICS)})")
        return getattr(self, name)


METRICS = ("mean", "lowest", "bottom", "tail")


def trace_confidence(
    confidences,
    window: int = DEFAULT_WINDOW,
    tail: int = DEFAULT_TAIL,
    bottom_fraction: float = BOTTOM_FRACTION,
) -> TraceConfidence:
    """All trace-level metrics from a trace's token confidences (the reference repo's definitions)."""
    tail = _check_positive("tail", tail)
    if not 0.0 < bottom_fraction <= 1.0:
        raise ConfigError(f"bottom_fraction must be in (0, 1], got {bottom_fraction!r}")
    c = np.asarray(confidences, dtype=np.float64)
    groups = group_confidences(c, window)
    if c.size == 0:
        nan = float("nan")
        return TraceConfidence(nan, nan, nan, nan)
    mean = float(c.mean())
    if groups.size == 0:
        lowest = bottom = mean
    else:
        lowest = float(groups.min())
        n_bottom = max(1, int(groups.size * bottom_fraction))
        bottom = float(np.partition(groups, n_bottom - 1)[:n_bottom].mean())
    return TraceConfidence(mean=mean, lowest=lowest, bottom=bottom, tail=float(c[-tail:].mean()))

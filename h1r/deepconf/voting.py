"""Answer voting: equivalence groups, the five weighted votes, offline DeepConf (Alg. 1).

Answers are the last \\boxed{} (after </think> when present, `h1r.rewards.math.extract_answer`);
a trace with no (or an empty) answer does not vote. Votes are pooled over math-equivalent answers
(`h1r.deepconf.equivalence`): hundreds of traces cost one parse per distinct answer, not O(n²)
math-verify calls.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from h1r.deepconf.confidence import METRICS, TraceConfidence
from h1r.deepconf.equivalence import cluster
from h1r.errors import ConfigError
from h1r.rewards.math import extract_answer, normalize

# method name (as in the DeepConf reference package) -> trace metric used as the vote weight
VOTE_METHODS: dict[str, str | None] = {
    "majority": None,
    "mean_confidence_weighted": "mean",
    "tail_confidence_weighted": "tail",
    "bottom_window_weighted": "bottom",
    "min_window_weighted": "lowest",
}


def answer_of(text: str) -> str | None:
    """The answer a response votes for, or None (no \\boxed{}, or an empty one)."""
    ans = extract_answer(text)
    return ans if ans else None


def _has_answer(a: str | None) -> bool:
    return a is not None and a.strip() != ""


@dataclass(frozen=True)
class AnswerGroups:
    """Which equivalence group each trace's answer belongs to."""

    labels: list[int | None]  # group index per trace; None when the trace has no answer
    names: list[str]  # each group's representative: the most frequent spelling of its biggest form


def group_answers(answers: Sequence[str | None], max_compare: int = 8) -> AnswerGroups:
    """Group equivalent answers: identical normalised strings for free, then one math-verify parse
    per distinct answer (see `equivalence`); `max_compare` caps the sympy checks per answer."""
    by_key: dict[str, list[int]] = {}  # normalised answer -> trace indices, in first-seen order
    for i, a in enumerate(answers):
        if _has_answer(a):
            by_key.setdefault(normalize(a.strip()), []).append(i)
    keys = sorted(by_key, key=lambda k: -len(by_key[k]))  # heaviest forms first: they represent
    spellings = [Counter(answers[i].strip() for i in by_key[k]).most_common(1)[0][0] for k in keys]
    classes = cluster(spellings, max_compare)
    names: list[str] = []
    for cls, spelling in zip(classes, spellings):
        if cls == len(names):
            names.append(spelling)
    labels: list[int | None] = [None] * len(answers)
    for key, cls in zip(keys, classes):
        for i in by_key[key]:
            labels[i] = cls
    return AnswerGroups(labels=labels, names=names)


@dataclass
class VoteResult:
    """Outcome of one vote. `share` is the winner's weight over the total (0 when nobody voted)."""

    answer: str | None
    share: float
    tallies: dict[str, float] = field(default_factory=dict)  # answer -> total weight, heaviest first
    counts: dict[str, int] = field(default_factory=dict)  # answer -> number of votes
    voters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VoteResult:
        return cls(**d)


def weighted_vote(groups: AnswerGroups, weights: Sequence[float] | None = None, mask=None) -> VoteResult:
    """V(a) = Σ weight over traces answering a (weight 1 = majority). Traces with no answer, a
    non-finite weight, or mask False do not vote. Ties: more votes, then the earlier group."""
    n = len(groups.labels)
    if weights is not None and len(weights) != n:
        raise ConfigError(f"got {len(weights)} weights for {n} traces")
    if mask is not None and len(mask) != n:
        raise ConfigError(f"got a mask of {len(mask)} for {n} traces")
    weight = np.zeros(len(groups.names), dtype=np.float64)
    count = np.zeros(len(groups.names), dtype=np.int64)
    for i, g in enumerate(groups.labels):
        if g is None or (mask is not None and not mask[i]):
            continue
        w = 1.0 if weights is None else float(weights[i])
        if not math.isfinite(w):
            continue
        if w < 0:
            raise ConfigError(f"vote weight of trace {i} is negative ({w}); confidences are >= 0")
        weight[g] += w
        count[g] += 1
    voted = [g for g in range(len(groups.names)) if count[g] > 0]
    if not voted:
        return VoteResult(answer=None, share=0.0)
    order = sorted(voted, key=lambda g: (-weight[g], -count[g], g))
    total = float(weight[voted].sum())
    winner = order[0]
    return VoteResult(
        answer=groups.names[winner],
        share=float(weight[winner]) / total if total > 0 else 0.0,
        tallies={groups.names[g]: float(weight[g]) for g in order},
        counts={groups.names[g]: int(count[g]) for g in order},
        voters=int(count.sum()),
    )


def vote(
    answers: Sequence[str | None],
    confidences: Sequence[TraceConfidence] | None = None,
    method: str = "majority",
    groups: AnswerGroups | None = None,
    mask=None,
) -> VoteResult:
    """One vote by `method` (a key of VOTE_METHODS); confidences are needed unless majority."""
    if method not in VOTE_METHODS:
        raise ConfigError(f"unknown vote method {method!r} (valid: {', '.join(VOTE_METHODS)})")
    metric = VOTE_METHODS[method]
    if metric is not None and confidences is None:
        raise ConfigError(f"vote method {method!r} needs per-trace confidences")
    if confidences is not None and len(confidences) != len(answers):
        raise ConfigError(f"got {len(confidences)} confidences for {len(answers)} answers")
    groups = groups or group_answers(answers)
    weights = None if metric is None else [c.get(metric) for c in confidences]
    return weighted_vote(groups, weights, mask)


def vote_all(
    answers: Sequence[str | None],
    confidences: Sequence[TraceConfidence],
    groups: AnswerGroups | None = None,
    mask=None,
) -> dict[str, VoteResult]:
    """All five votes (grouping computed once)."""
    groups = groups or group_answers(answers)
    return {m: vote(answers, confidences, m, groups, mask) for m in VOTE_METHODS}


def top_percent_cutoff(values: Sequence[float], keep_top_percent: float) -> float:
    """The confidence a trace needs to be in the top `keep_top_percent`% (numpy linear percentile
    at 100 − keep_top_percent, as the reference code does). Non-finite values are ignored."""
    keep_top_percent = float(keep_top_percent)
    if not 0.0 < keep_top_percent <= 100.0:
        raise ConfigError(f"keep_top_percent must be in (0, 100], got {keep_top_percent}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ConfigError("no finite confidences to take a percentile of")
    return float(np.percentile(v, 100.0 - keep_top_percent))


def offline_deepconf(
    answers: Sequence[str | None],
    confidences: Sequence[TraceConfidence],
    keep_top_percent: float = 10.0,
    filter_by: str = "lowest",
) -> tuple[dict[str, VoteResult], list[bool], float | None]:
    """Offline DeepConf: keep the top `keep_top_percent`% of the answering traces by the
    `filter_by` confidence (η = 10 aggressive, 90 safe), then run all five votes on them.

    Returns (votes, kept mask, cutoff). The percentile is over traces that have an answer, since
    only they can vote (as in the reference package); cutoff is None when no trace answered.
    """
    if filter_by not in METRICS:
        raise ConfigError(f"unknown confidence metric {filter_by!r} (valid: {', '.join(METRICS)})")
    if len(confidences) != len(answers):
        raise ConfigError(f"got {len(confidences)} confidences for {len(answers)} answers")
    values = [c.get(filter_by) for c in confidences]
    answered = [v for a, v in zip(answers, values) if _has_answer(a) and math.isfinite(v)]
    if not answered:
        groups = group_answers(answers)
        return vote_all(answers, confidences, groups), [False] * len(answers), None
    cutoff = top_percent_cutoff(answered, keep_top_percent)
    kept = [_has_answer(a) and math.isfinite(v) and v >= cutoff for a, v in zip(answers, values)]
    groups = group_answers([a if k else None for a, k in zip(answers, kept)])
    return vote_all(answers, confidences, groups, kept), kept, cutoff

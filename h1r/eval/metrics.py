"""Benchmark metrics from per-sample records.

A record is one graded sample: {"problem_id", "benchmark", "correct": bool, "answer": str | None,
"tokens": int, optional "sample_index", "level", "weight"}. `summarize` turns a list of them (e.g.
the evaluation JSONL) into per-benchmark numbers: pass@1 averaged over the k samples with its
standard error, unbiased pass@k, maj@k, tokens, and any DeepConf results computed elsewhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from h1r.rewards.math import normalize, parse_number


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass1_and_stderr(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """Mean over problems of each problem's fraction correct, and the standard error of that mean
    due to sampling: sqrt(sum_i p_i(1-p_i)/(k_i-1)) / P (unbiased per-problem variance of the mean).
    With a single sample per problem, the binomial error over problems sqrt(p(1-p)/P) instead."""
    if not correct or any(len(c) == 0 for c in correct):
        raise ValueError("every problem needs at least one sample")
    rates = [sum(c) / len(c) for c in correct]
    n = len(rates)
    mean = sum(rates) / n
    if min(len(c) for c in correct) < 2:
        return mean, math.sqrt(mean * (1 - mean) / n)
    var = sum(p * (1 - p) / (len(c) - 1) for p, c in zip(rates, correct))
    return mean, math.sqrt(var) / n


def answer_key(answer: str | None) -> str | None:
    """Cheap canonical key for voting: equal numbers ("0.5", "\\frac{1}{2}", "1/2") share a key."""
    if answer is None or not str(answer).strip():
        return None
    num = parse_number(str(answer))
    return f"#{num}" if num is not None else normalize(str(answer))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool],
                     weights: Sequence[float] | None = None) -> bool:
    """Is the (weighted) majority answer correct? Correct answers form one group (each equals the
    gold, so they equal each other); wrong ones group by `answer_key`. Unanswered samples do not
    vote; ties go to the group seen first."""
    votes: dict[str, float] = {}
    for i, (a, ok) in enumerate(zip(answers, correct)):
        key = "\0gold" if ok else answer_key(a)
        if key is None:
            continue
        votes[key] = votes.get(key, 0.0) + (1.0 if weights is None else float(weights[i]))
    if not votes:
        return False
    return max(votes, key=votes.get) == "\0gold"


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _by_problem(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r["problem_id"])].append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r.get("sample_index", 0))
    return groups


def summarize_benchmark(records: Sequence[dict], ks: Sequence[int] = (), deepconf: dict[str, dict] | None = None) -> dict:
    """Metrics for one benchmark's records (see module docstring).

    ks: extra k values for pass@k and maj@k (capped at the samples per problem); maj@n uses all.
    deepconf: {"deepconf-low": {problem_id: {"correct": bool, "tokens": int}}, ...}, computed by the
    DeepConf module; reported as accuracy and mean tokens per problem over the problems it covers.
    """
    groups = _by_problem(records)
    if not groups:
        raise ValueError("no records")
    correct = [[bool(r["correct"]) for r in rs] for rs in groups.values()]
    n_min = min(len(c) for c in correct)
    p1, se = pass1_and_stderr(correct)
    out = {
        "problems": len(groups),
        "samples_per_problem": n_min if n_min == max(len(c) for c in correct) else [n_min, max(len(c) for c in correct)],
        "pass@1": p1,
        "pass@1_se": se,
        "tokens_per_sample": mean(mean(r.get("tokens", 0) for r in rs) for rs in groups.values()),
        "tokens_per_problem": mean(sum(r.get("tokens", 0) for r in rs) for rs in groups.values()),
    }
    for k in sorted({k for k in ks if 1 < k <= n_min}):
        out[f"pass@{k}"] = mean(pass_at_k(len(c), sum(c), k) for c in correct)
    voted = any(r.get("answer") is not None for rs in groups.values() for r in rs)
    if voted and n_min > 1:
        for k in sorted({k for k in ks if 1 < k < n_min} | {n_min}):
            out[f"maj@{k}"] = mean(
                majority_correct([r.get("answer") for r in rs[:k]], [bool(r["correct"]) for r in rs[:k]])
                for rs in groups.values()
            )
    for method, per_problem in (deepconf or {}).items():
        if not per_problem:
            continue
        out[method] = mean(float(bool(v["correct"])) for v in per_problem.values())
        out[f"{method}_tokens_per_problem"] = mean(float(v.get("tokens", 0)) for v in per_problem.values())
    return out


def summarize(records: Sequence[dict], ks: Sequence[int] = (), deepconf: dict[str, dict[str, dict]] | None = None) -> dict[str, dict]:
    """Per-benchmark metrics: {benchmark: summarize_benchmark(...)}; deepconf as
    {benchmark: {method: {problem_id: {"correct", "tokens"}}}}."""
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_bench[r["benchmark"]].append(r)
    return {b: summarize_benchmark(rs, ks, (deepconf or {}).get(b)) for b, rs in by_bench.items()}


def accuracy_by(records: Sequence[dict], key: str = "level") -> dict[str, dict]:
    """pass@1 and problem count per value of `key` (records without it are skipped)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get(key) is not None:
            groups[str(r[key])].append(r)
    out = {}
    for value in sorted(groups, key=lambda v: (float(v) if _is_number(v) else math.inf, v)):
        by_problem = _by_problem(groups[value])
        out[value] = {"pass@1": mean(mean(float(bool(r["correct"])) for r in rs) for rs in by_problem.values()),
                      "problems": len(by_problem)}
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False

"""Per-sample evaluation records: grading a batch into records, and a resumable JSONL store.

An evaluation driver generates `n` samples per problem, grades them with `grade_records`, appends
each record to a `SampleStore` as it finishes, and on restart skips the (problem_id, sample_index)
pairs already in the file. `h1r.eval.metrics.summarize(store.records())` then gives the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from h1r.eval.benchmarks import Problem
from h1r.eval.sandbox import SandboxLimits
from h1r.rewards.choice import extract_choice, grade_choice
from h1r.rewards.math import extract_answer
from h1r.utils.io import JsonlAppender


def grade_records(
    problems: Sequence[Problem], sample_indices: Sequence[int], responses: Sequence[str],
    tokens: Sequence[int] | None = None, timeout: float = 5.0, limits: SandboxLimits | None = None, **extra,
) -> list[dict]:
    """One record per response (problem i's sample `sample_indices[i]`): correctness by the problem's
    kind (math through the parallel hostile-safe grader, choice by letter, code in the sandbox) and
    the extracted answer used for voting. `extra` keys (e.g. method, confidence lists) are copied in."""
    from h1r.rewards.code import run_samples
    from h1r.rewards.parallel import grade_responses

    n = len(problems)
    if not (len(sample_indices) == len(responses) == n) or (tokens is not None and len(tokens) != n):
        raise ValueError("problems, sample_indices, responses (and tokens) must have the same length")
    correct: list[bool] = [False] * n
    answers: list[str | None] = [None] * n
    by_kind: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        by_kind.setdefault(p.kind, []).append(i)
    if "math" in by_kind:
        idx = by_kind["math"]
        for i, ok in zip(idx, grade_responses([responses[i] for i in idx], [problems[i].answer for i in idx], timeout)):
            correct[i], answers[i] = ok, extract_answer(responses[i] or "")
    for i in by_kind.get("choice", []):
        correct[i], answers[i] = grade_choice(responses[i], problems[i].answer), extract_choice(responses[i])
    if "code" in by_kind:
        idx = by_kind["code"]
        results = run_samples([responses[i] for i in idx], [problems[i].to_sample() for i in idx], limits)
        for i, r in zip(idx, results):
            correct[i] = r.passed
    records = []
    for i, p in enumerate(problems):
        rec = {"problem_id": p.id, "benchmark": p.benchmark, "sample_index": int(sample_indices[i]),
               "correct": bool(correct[i]), "answer": answers[i], "tokens": int(tokens[i]) if tokens else 0,
               "response": responses[i]}
        if p.meta.get("level") is not None:
            rec["level"] = p.meta["level"]
        rec.update(extra)
        records.append(rec)
    return records


class SampleStore:
    """Append-only JSONL of records; a torn last line (a killed run) is cut off on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._records = self._read() if self.path.exists() else []
        self._done = {(r["problem_id"], r["sample_index"]) for r in self._records}
        self._out = JsonlAppender(self.path)

    def _read(self) -> list[dict]:
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # only a torn last line can be broken; JsonlAppender cuts it
                continue
            if isinstance(row, dict) and "problem_id" in row and "sample_index" in row:
                rows.append(row)
        return rows

    def is_done(self, problem_id: str, sample_index: int) -> bool:
        return (problem_id, sample_index) in self._done

    def add(self, record: dict) -> None:
        key = (record["problem_id"], record["sample_index"])
        if key in self._done:
            return
        self._out.write(record)
        self._records.append(record)
        self._done.add(key)

    def records(self) -> list[dict]:
        return list(self._records)

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

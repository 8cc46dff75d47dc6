"""The synthetic curriculum: problems of every family and level, teacher traces, JSONL files.

Train and test are disjoint by construction: a problem's split is a function of a hash of its
prompt alone (no seed), so a prompt that can be a test problem is never a training problem, for
any seed or size. Everything else is drawn from `random.Random` seeded by strings, which is
stable across processes and Python hash seeds, so the same seed gives byte-identical files.

Files written by `write_curriculum(out, ...)`:
    train.jsonl          SFT rows, one per (problem, trace), shuffled:
                         {"id", "trace", "family", "level", "difficulty", "answer", "messages": [user, assistant]}
    train_prompts.jsonl  one row per training problem without the assistant turn (RL, pass rates)
    test.jsonl           held-out problems without the assistant turn (evaluation)
    synth.json           the arguments and counts
`id` names the problem (shared by its traces), `difficulty` is a prior from the level:
easy (1-2), medium (3), hard (4-5).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from h1r.data import teacher
from h1r.data.tasks import FAMILIES, LEVELS, Problem
from h1r.errors import DataError

TEST_FRACTION = 0.25  # share of the prompt-hash space reserved for test problems
DIFFICULTY = {1: "easy", 2: "easy", 3: "medium", 4: "hard", 5: "hard"}


def _digest(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode("utf-8")).digest()


def is_test_prompt(prompt: str) -> bool:
    return int.from_bytes(_digest(prompt)[:8], "big") < TEST_FRACTION * 2**64


def problem_id(p: Problem) -> str:
    return f"{p.family}-{p.level}-{_digest(p.prompt).hex()[:10]}"


def draw_problems(seed: int, family: str, level: int, n_train: int, n_test: int,
                  seen: dict[str, set[str]], on_new=None) -> tuple[list[Problem], list[Problem]]:
    """Distinct problems for each split; `seen` carries prompts already used (across levels)."""
    rng = random.Random(f"h1r-synth/{seed}/{family}/{level}")
    gen = FAMILIES[family].generate
    out: dict[str, list[Problem]] = {"train": [], "test": []}
    want = {"train": n_train, "test": n_test}
    for _ in range(20 * (n_train + n_test) + 2000):
        if all(len(out[s]) >= want[s] for s in out):
            break
        p = gen(rng, level)
        split = "test" if is_test_prompt(p.prompt) else "train"
        if len(out[split]) < want[split] and p.prompt not in seen[split]:
            seen[split].add(p.prompt)
            out[split].append(p)
            if on_new:
                on_new()
    else:
        short = [s for s in out if len(out[s]) < want[s]]
        if short:
            s = short[0]
            raise DataError(f"family {family} level {level}: found only {len(out[s])} distinct {s} "
                            f"problems of the {want[s]} asked; ask for fewer per level")
    return out["train"], out["test"]


def _row(p: Problem, messages: list[dict], trace: int | None = None) -> dict:
    row = {"id": problem_id(p)}
    if trace is not None:
        row["trace"] = trace
    row.update(family=p.family, level=p.level, difficulty=DIFFICULTY[p.level], answer=p.answer,
               messages=messages)
    return row


def build_curriculum(seed: int, train_per_level: int, test_per_level: int, traces_per_problem: int,
                     families: list[str] | None = None, system: str | None = None,
                     progress: bool = False) -> dict[str, list[dict]]:
    """Rows of the three files: {"train": SFT rows, "train_prompts": [...], "test": [...]}."""
    families = list(FAMILIES) if families is None else list(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families or len(set(families)) != len(families):
        raise DataError(f"families must be distinct names among {', '.join(FAMILIES)}; got {families}")
    for name, v, lo in (("train-per-level", train_per_level, 0), ("test-per-level", test_per_level, 0),
                        ("traces-per-problem", traces_per_problem, 1)):
        if not isinstance(v, int) or v < lo:
            raise DataError(f"{name} must be an integer >= {lo}, got {v!r}")
    head = [{"role": "system", "content": system}] if system else []

    from tqdm import tqdm

    total = len(families) * len(LEVELS) * (train_per_level + test_per_level)
    rows: dict[str, list[dict]] = {"train": [], "train_prompts": [], "test": []}
    with tqdm(total=total, desc="synth", unit="problem", disable=not progress) as bar:
        for family in families:
            seen: dict[str, set[str]] = {"train": set(), "test": set()}
            for level in LEVELS:
                train, test = draw_problems(seed, family, level, train_per_level, test_per_level, seen,
                                            on_new=lambda: bar.update(1))
                for p in train:
                    user = head + [{"role": "user", "content": p.prompt}]
                    rows["train_prompts"].append(_row(p, user))
                    rng = random.Random(f"h1r-teacher/{seed}/{problem_id(p)}")
                    for j, t in enumerate(teacher.traces(p, traces_per_problem, rng)):
                        rows["train"].append(_row(p, user + [{"role": "assistant", "content": t}], trace=j))
                rows["test"].extend(_row(p, head + [{"role": "user", "content": p.prompt}]) for p in test)
    random.Random(f"h1r-shuffle/{seed}").shuffle(rows["train"])
    return rows


def write_curriculum(out: str | Path, seed: int, train_per_level: int, test_per_level: int,
                     traces_per_problem: int, families: list[str] | None = None,
                     system: str | None = None, progress: bool = False) -> dict:
    """Build and write the files; returns the manifest (also written as synth.json)."""
    from h1r.utils.io import atomic_write_json, write_jsonl

    rows = build_curriculum(seed, train_per_level, test_per_level, traces_per_problem, families,
                            system, progress)
    out = Path(out)
    for name, r in rows.items():
        write_jsonl(out / f"{name}.jsonl", r)
    manifest = dict(seed=seed, train_per_level=train_per_level, test_per_level=test_per_level,
                    traces_per_problem=traces_per_problem, families=families or list(FAMILIES),
                    levels=list(LEVELS), test_fraction=TEST_FRACTION, system=system,
                    rows={name: len(r) for name, r in rows.items()})
    atomic_write_json(out / "synth.json", manifest)
    return manifest

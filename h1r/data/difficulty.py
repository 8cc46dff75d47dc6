"""Pass-rate estimation for difficulty-aware SFT (`h1r data difficulty`).

Sample k answers per problem with a model through the engine, grade them with the hostile-safe
math grader, and write each row back with `pass_rate` = correct / k (plus `pass_k` = k).

Rows are grouped into problems by `id` (the synthetic curriculum's SFT rows share one `id` across
the traces of a problem), else by the prompt conversation. The prompt is the row's conversation
without its trailing assistant turn (or `prompt` as the user turn), in the model's chat template.

Why `difficulty` is removed by default: the SFT weighting (h1r.train.weighting) reads a row's
`difficulty` label *before* its `pass_rate`, and the synthetic rows carry a label derived from the
level. Left in place it would silently win over the measured pass rate. The label is kept under
`difficulty_prior` for reference; `keep_difficulty=True` (`--keep-difficulty`) leaves it where it
is (then the labels, not the pass rates, drive the weights).

Each problem's samples use a seed derived from (seed, problem key), and the engine's sampling
noise depends only on a sample's seed and position, so results do not depend on batching.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from h1r.errors import DataError


@dataclass
class PassRate:
    correct: int
    k: int

    @property
    def rate(self) -> float:
        return self.correct / self.k


def prompt_messages(row: dict, where: str) -> list[dict]:
    """The conversation to answer: `messages` minus a trailing assistant turn, or `prompt` as a user turn."""
    if isinstance(row.get("messages"), list) and row["messages"]:
        msgs = row["messages"]
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: messages[{i}] needs string 'role' and 'content'")
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        if msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise DataError(f"{where}: the conversation must end with a user turn (before any assistant turn)")
        return msgs
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: a row needs 'messages' or 'prompt' (found keys: {', '.join(sorted(row)) or 'none'})")


def problem_key(row: dict, messages: list[dict]) -> str:
    """`id` when the row has one, else a digest of the prompt conversation."""
    if row.get("id") is not None:
        return str(row["id"])
    return "sha:" + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def problem_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"h1r-difficulty/{seed}/{key}".encode()).digest()[:7], "big")


def read_problems(path: str | Path) -> tuple[list[dict], list[str], dict[str, tuple[list[dict], str]]]:
    """-> (rows in file order, each row's problem key, {key: (prompt messages, gold answer)})."""
    from h1r.train.data import read_rows

    rows, keys, problems = [], [], {}
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        msgs = prompt_messages(row, where)
        if row.get("answer") is None or str(row["answer"]).strip() == "":
            raise DataError(f"{where}: missing the gold 'answer' (needed to grade the samples)")
        key = problem_key(row, msgs)
        gold = str(row["answer"]).strip()
        if key in problems and problems[key][1] != gold:
            raise DataError(f"{where}: problem {key!r} appears with two different answers "
                            f"({problems[key][1]!r} and {gold!r})")
        problems.setdefault(key, (msgs, gold))
        rows.append(row)
        keys.append(key)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, keys, problems


def estimate_pass_rates(llm, problems: dict[str, tuple[list[dict], str]], k: int, sampling, seed: int = 0,
                        chunk: int = 64, timeout: float = 5.0, progress: bool = False) -> dict[str, PassRate]:
    """Sample `k` answers per problem (`sampling`: a SamplingParams; its n and seed are set here) and
    grade them. `problems`: {key: (messages, gold)}. Returns {key: PassRate}."""
    import dataclasses

    from tqdm import tqdm

    from h1r.rewards.parallel import grade_responses

    if not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    keys = list(problems)
    out: dict[str, PassRate] = {}
    tok = llm.tokenizer
    with tqdm(total=len(keys), desc="pass rates", unit="problem", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            prompts = [tok.apply_chat_template(problems[key][0], add_generation_prompt=True, tokenize=True)
                       for key in part]
            params = [dataclasses.replace(sampling, n=k, seed=problem_seed(seed, key)) for key in part]
            results = llm.generate(prompts, params)
            texts = [c.text for r in results for c in r.outputs]
            golds = [problems[key][1] for key in part for _ in range(k)]
            ok = grade_responses(texts, golds, timeout)
            for j, key in enumerate(part):
                out[key] = PassRate(sum(ok[j * k:(j + 1) * k]), k)
            bar.update(len(part))
    return out


def annotate(rows: Sequence[dict], keys: Sequence[str], rates: dict[str, PassRate],
             keep_difficulty: bool = False) -> list[dict]:
    """Copies of the rows with `pass_rate` and `pass_k`; `difficulty` moved to `difficulty_prior`
    unless `keep_difficulty` (see the module docstring)."""
    out = []
    for row, key in zip(rows, keys):
        new = dict(row)
        if not keep_difficulty and "difficulty" in new:
            new["difficulty_prior"] = new.pop("difficulty")
        new["pass_rate"] = rates[key].rate
        new["pass_k"] = rates[key].k
        out.append(new)
    return out


def summary_by(rows: Sequence[dict], keys: Sequence[str], rates: dict[str, PassRate], field: str = "level",
               hard: float = 0.25, easy: float = 0.75) -> dict[str, dict]:
    """Per value of `field` (one entry per problem): problems, mean pass rate, and how many problems fall
    hard (<= hard) / medium / easy (>= easy) under the SFT weighting's default thresholds."""
    seen, groups = set(), defaultdict(list)
    for row, key in zip(rows, keys):
        if key not in seen:
            seen.add(key)
            groups[str(row.get(field, "all"))].append(rates[key].rate)
    out = {}
    for value in sorted(groups, key=lambda v: (len(v), v)):
        ps = groups[value]
        out[value] = {"problems": len(ps), "pass_rate": sum(ps) / len(ps),
                      "hard": sum(p <= hard for p in ps), "easy": sum(p >= easy for p in ps)}
        out[value]["medium"] = len(ps) - out[value]["hard"] - out[value]["easy"]
    return out

"""RL prompts: JSONL rows -> tokenised prompts with their gold answers, and the prompt stream.

A row is `{"messages": [...], "answer": ...}` (a trailing assistant turn, as in SFT files, is dropped)
or `{"prompt": str, "answer": ...}`, with optional `kind` (math | choice | code; missing = math),
`id`, `pass_rate`, `difficulty` and anything else; the whole row is what the reward functions see.
The prompt is the chat template with the generation prompt, exactly as the engine serves it.

The stream: position p (0, 1, 2, ...) of the run draws prompt `order_e[p mod n]` of epoch e = p // n.
The order of an epoch is a pure function of (seed, epoch, curriculum_order), so the data position of a
run is one integer, and resuming replays the same prompts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from h1r.errors import DataError
from h1r.train.data import read_rows

DIFFICULTY_RANK = {"easy": 0, "medium": 1, "hard": 2}


@dataclass
class Prompt:
    ids: list[int]  # the rendered prompt's token ids
    row: dict  # the dataset row (rewards read "answer", "kind", ...)
    source: str  # "file:line"


def prompt_messages(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: messages[{i}] needs string 'role' and 'content'")
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        if msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise DataError(f"{where}: the conversation must end with the user turn to answer")
        return msgs
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: a prompt row needs 'messages' or 'prompt' "
                    f"(found keys: {', '.join(sorted(row)) or 'none'})")


def load_prompts(paths: list[str], tokenizer, domains: list[str], max_prompt_length: int,
                 need_answer: bool = True) -> tuple[list[Prompt], dict]:
    """Read, filter by domain, render and tokenise. -> (prompts, stats for the log)."""
    rows, sources, texts = [], [], []
    stats: Counter = Counter()
    for path in paths:
        for lineno, row in read_rows(path):
            where = f"{path}:{lineno}"
            stats["rows"] += 1
            if row.get("kind", "math") not in domains:
                stats["other_domain"] += 1
                continue
            if need_answer and row.get("answer") in (None, ""):
                raise DataError(f"{where}: the row has no gold 'answer'")
            texts.append(tokenizer.apply_chat_template(prompt_messages(row, where), add_generation_prompt=True))
            rows.append(row)
            sources.append(where)
    out = []
    for ids, row, where in zip(tokenizer.encode_batch(texts) if texts else [], rows, sources):
        if len(ids) > max_prompt_length:
            stats["too_long"] += 1
            continue
        out.append(Prompt(ids, row, where))
    if not out:
        raise DataError(f"no usable prompts in {', '.join(map(str, paths))} ({dict(stats)}; domains={domains}, "
                        f"max_prompt_length={max_prompt_length})")
    stats["prompts"] = len(out)
    return out, dict(stats)


def fingerprint(prompts: list[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(np.asarray(p.ids, dtype=np.int64).tobytes())
        h.update(str(p.row.get("answer")).encode())
    return h.hexdigest()[:16]


def difficulty_key(row: dict) -> float:
    """Higher = harder: 1 - pass_rate when known (the filter writes it), else the difficulty label."""
    if isinstance(row.get("pass_rate"), (int, float)):
        return 1.0 - float(row["pass_rate"])
    return DIFFICULTY_RANK.get(str(row.get("difficulty", "medium")), 1) / 2


class PromptStream:
    """Position -> prompt index, epoch after epoch, in the configured order."""

    def __init__(self, prompts: list[Prompt], order: str, seed: int):
        self.n, self.order, self.seed = len(prompts), order, seed
        self._fixed = None
        if order in ("easy_to_hard", "hard_to_easy"):
            tie = np.random.default_rng([seed, 7]).permutation(self.n)  # random among equal difficulty
            keys = np.asarray([difficulty_key(p.row) for p in prompts])
            sign = 1.0 if order == "easy_to_hard" else -1.0
            self._fixed = np.lexsort((tie, sign * keys))
        elif order == "file":
            self._fixed = np.arange(self.n)
        elif order != "shuffle":
            raise DataError(f"unknown curriculum_order {order!r}")
        self._epochs: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._fixed is not None:
            return self._fixed
        if epoch not in self._epochs:
            self._epochs = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._epochs[epoch]

    def take(self, start: int, count: int) -> list[int]:
        """Prompt indices at positions start .. start+count-1."""
        return [int(self.epoch_order(p // self.n)[p % self.n]) for p in range(start, start + count)]

"""SFT rows -> token ids with the supervised span marked.

A row is `{"messages": [{"role", "content"}, ...]}` (ending with the assistant turn to learn) or
`{"prompt": str, "response": str}` (a user turn plus an assistant turn), with optional `difficulty`,
`pass_rate`, `weight` and any other metadata. The conversation is rendered with the model's chat
template (which strips reasoning from earlier assistant turns); only the final assistant turn is
supervised, through its end-of-turn token (`<|im_end|>`), exactly as the engine will see it: the prompt
is the template with `add_generation_prompt=True`, tokenised on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h1r.errors import DataError
from h1r.train.weighting import example_weight


@dataclass
class SFTExample:
    input_ids: np.ndarray  # int32 [L]: prompt + final assistant turn, ending with its end-of-turn token
    sup_start: int  # tokens [sup_start, sup_end) are supervised (the targets of positions sup_start-1 ...)
    sup_end: int
    difficulty: str
    weight: float
    source: str  # "file:line" for messages about this example

    @property
    def n_supervised(self) -> int:
        return self.sup_end - self.sup_start


def read_rows(path: str | Path):
    """Yield (line number, row dict) of a JSONL file; a broken line raises DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def row_messages(row: dict, where: str) -> list[dict]:
    """The conversation of a row; the last message is the assistant turn to supervise."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: messages[{i}] needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant turn to learn, "
                            f"got role {msgs[-1]['role']!r}")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" in row and "response" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise DataError(f"{where}: 'prompt' and 'response' must be strings")
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise DataError(f"{where}: a row needs 'messages', or 'prompt' and 'response' (found keys: "
                    f"{', '.join(sorted(row)) or 'none'})")


def render(tokenizer, messages: list[dict], where: str) -> tuple[str, str]:
    """-> (prompt text as at inference, completion text = final assistant turn + template tail)."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
    if not full.startswith(prompt):
        raise DataError(f"{where}: the chat template does not render the prompt as a prefix of the "
                        "conversation, so the final assistant turn cannot be isolated")
    return prompt, full[len(prompt):]


def load_sft_examples(paths: list[str], tokenizer, cfg) -> tuple[list[SFTExample], dict]:
    """Read, render, tokenise and weight every row. -> (examples, stats for the log)."""
    sources, prompts, completions, rows = [], [], [], []
    for path in paths:
        for lineno, row in read_rows(path):
            where = f"{path}:{lineno}"
            prompt, completion = render(tokenizer, row_messages(row, where), where)
            sources.append(where)
            prompts.append(prompt)
            completions.append(completion)
            rows.append(row)
    if not rows:
        raise DataError(f"no rows in {', '.join(map(str, paths))}")
    stop_ids = set(tokenizer.stop_token_ids)
    prompt_ids = tokenizer.encode_batch(prompts)
    completion_ids = tokenizer.encode_batch(completions)
    examples, stats = [], Counter()
    for where, row, p, c in zip(sources, rows, prompt_ids, completion_ids):
        end_of_turn = next((i for i, t in enumerate(c) if t in stop_ids), len(c) - 1)
        c = c[: end_of_turn + 1]  # drop the template's tail after the end-of-turn token
        difficulty, weight = example_weight(row, len(c), cfg, where)
        ids = np.asarray(p + c, dtype=np.int32)
        sup_start, sup_end = max(len(p), 1), len(ids)  # token 0 has no predecessor
        if sup_end > cfg.max_seq_len:  # right-trim, as the recipe does for over-long samples
            ids, sup_end = ids[: cfg.max_seq_len], cfg.max_seq_len
            stats["truncated"] += 1
        if sup_end <= sup_start or not len(c):
            stats["dropped_no_supervised_tokens"] += 1
            continue
        stats[difficulty] += 1
        examples.append(SFTExample(ids, sup_start, sup_end, difficulty, weight, where))
    if not examples:
        raise DataError(f"no usable examples in {', '.join(map(str, paths))} (every prompt is longer than "
                        f"max_seq_len={cfg.max_seq_len})")
    stats["rows"] = len(rows)
    stats["examples"] = len(examples)
    stats["supervised_tokens"] = sum(e.n_supervised for e in examples)
    return examples, dict(stats)


def fingerprint(examples: list[SFTExample]) -> str:
    """A digest of the tokenised data and weights: a resumed run must see the same data."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.input_ids.tobytes())
        h.update(np.asarray([e.sup_start, e.sup_end], dtype=np.int64).tobytes())
        h.update(np.float64(e.weight).tobytes())
    return h.hexdigest()[:16]

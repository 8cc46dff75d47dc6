"""Train the tiny model's byte-level BPE tokenizer on the curriculum (real checkpoints bring their own).

Digits are split one per token (arithmetic then sees place values, never arbitrary digit chunks).
The chat control tokens and the reasoning tags are added tokens with fixed ids 0-6, so each is
a single id; <think> and </think> are not marked special, so decoding with
skip_special_tokens=True keeps the reasoning boundary (as Qwen3 / DeepSeek-R1 tokenizers do).
The directory loads with `h1r.tokenizer.load_tokenizer` and with transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from h1r.errors import DataError
from h1r.tokenizer import DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS

PAD, BOS, EOS = "<|pad|>", "<|begin_of_text|>", "<|end_of_text|>"
REASONING_TAGS = ("<think>", "</think>")
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def chat_texts(rows: Iterable[dict]) -> Iterator[str]:
    """Each conversation as the chat template lays it out, cut at the added tokens (those are
    never merged, so they stay out of the BPE statistics)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(DEFAULT_CHAT_TEMPLATE)
    for row in rows:
        text = template.render(messages=row["messages"], add_generation_prompt=False, bos_token=BOS)
        yield from (piece for piece in _SPECIAL_RE.split(text) if piece)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, show_progress: bool = False):
    """A `tokenizers.Tokenizer`: byte-level BPE, individual digits, SPECIAL_TOKENS at ids 0..6."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise DataError(f"vocab size must be at least {min_size} (special tokens + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    # the reasoning tags: added (single ids, never split) but not special
    spec = json.loads(tok.to_str())
    for t in spec["added_tokens"]:
        t["special"] = t["content"] not in REASONING_TAGS
    return Tokenizer.from_str(json.dumps(spec))


def tokenizer_config(tok) -> dict:
    """tokenizer_config.json for h1r.tokenizer and transformers."""
    decoder = {}
    for content in SPECIAL_TOKENS:
        decoder[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": content not in REASONING_TAGS}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder,
        "chat_template": DEFAULT_CHAT_TEMPLATE,
    }


def save_tokenizer(tok, out: str | Path) -> Path:
    from h1r.utils.io import atomic_write_json, atomic_write_text

    out = Path(out)
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    atomic_write_json(out / "tokenizer_config.json", tokenizer_config(tok))
    return out


def train_from_jsonl(data: str | Path, out: str | Path, vocab_size: int = 512, progress: bool = False) -> Path:
    """Train on the conversations of a chat JSONL file (e.g. train.jsonl) and save to `out`."""
    from h1r.utils.io import read_jsonl

    rows = read_jsonl(data)
    for i, row in enumerate(rows, 1):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError(f"{data}: row {i} has no 'messages' list of {{role, content}} objects")
    if not rows:
        raise DataError(f"{data}: no rows to train a tokenizer on")
    return save_tokenizer(train_tokenizer(chat_texts(rows), vocab_size, show_progress=progress), out)


def length_table(tok, rows: list[dict]) -> dict:
    """Per `level` (rows without one: "-"): (mean, max) tokens of the user turn and of the final
    assistant turn, to check the curriculum against the tiny model's budget."""
    from statistics import mean

    users, replies, levels = [], [], []
    for row in rows:
        msgs = row.get("messages") or []
        users.append(next((m["content"] for m in msgs if m.get("role") == "user"), ""))
        replies.append(msgs[-1]["content"] if msgs and msgs[-1].get("role") == "assistant" else "")
        levels.append(row.get("level", "-"))
    unique = list(dict.fromkeys(users + replies))  # prompts repeat once per trace
    n_tokens = dict(zip(unique, map(len, tok.encode_batch(unique))))
    by_level: dict = {}
    for level, u, r in zip(levels, users, replies):
        by_level.setdefault(level, []).append((n_tokens[u], n_tokens[r]))
    return {level: (mean(p for p, _ in v), max(p for p, _ in v), mean(r for _, r in v), max(r for _, r in v))
            for level, v in sorted(by_level.items(), key=lambda kv: str(kv[0]))}

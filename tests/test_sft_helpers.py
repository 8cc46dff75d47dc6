"""Shared builders for the SFT tests: a word-level tokenizer, a tiny model directory, synthetic rows.
(No tests here; imported by tests/test_sft_*.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(60)] + [str(i) for i in range(20)]


def make_tokenizer_dir(path: Path) -> Path:
    """WordLevel tokenizer: H1R's special tokens, whitespace characters as tokens, a few words."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from h1r.tokenizer import DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in ["<unk>", " ", "\n", "user", "assistant", "system", "\\boxed{", "}", *WORDS]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    tok.add_special_tokens(SPECIAL_TOKENS)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>",
           "chat_template": DEFAULT_CHAT_TEMPLATE, "added_tokens_decoder": {}}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


def make_model_dir(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """The tiny preset (2 layers by default, vocab of the test tokenizer), random weights, fp32."""
    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset
    from h1r.tokenizer import load_tokenizer

    make_tokenizer_dir(path)
    tok = load_tokenizer(path)
    cfg = preset("tiny", vocab_size=tok.vocab_size, num_hidden_layers=layers, mamba_chunk_size=16)
    save_model(init_model(cfg, seed=seed), path, tokenizer=tok)
    return path


def make_rows(n: int, seed: int = 0, max_words: int = 12) -> list[dict]:
    """prompt/response and multi-turn rows with a mix of difficulty signals."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    rows = []
    for i in range(n):
        resp = f"<think> {say(rng.randint(1, max_words))} </think> \\boxed{{ {rng.choice(WORDS)} }}"
        if i % 3 == 0:
            row = {"messages": [{"role": "user", "content": say(rng.randint(1, 6))},
                                {"role": "assistant", "content": f"<think> {say(3)} </think> {say(2)}"},
                                {"role": "user", "content": say(rng.randint(1, 6))},
                                {"role": "assistant", "content": resp}]}
        else:
            row = {"prompt": say(rng.randint(1, 8)), "response": resp}
        kind = i % 4
        if kind == 0:
            row["difficulty"] = rng.choice(["easy", "medium", "hard"])
        elif kind == 1:
            row["pass_rate"] = rng.random()
        row["id"] = i
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_config(tmp: Path, model: Path, data: Path, **over):
    from h1r.train.config import SFTConfig

    kw = dict(model=str(model), data=[str(data)], output_dir=str(tmp / "run"), batch_size=8, micro_batch_size=2,
              max_seq_len=96, lr=3e-3, warmup_steps=1, progress=False, tensorboard=False, seed=0)
    kw.update(over)
    return SFTConfig(**kw)

"""Tokenizer from a model directory: `tokenizer.json` (HF tokenizers) + `tokenizer_config.json`
(special tokens, `chat_template`). The chat template is rendered with Jinja as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

from h1r.errors import CheckpointError

# ChatML with a BOS prefix (the Falcon-H1 layout). Reasoning (<think>…</think>) is stripped from
# earlier assistant turns so training and inference see the same context.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and not loop.last and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ content }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
STOP_TOKENS = ("<|im_end|>", "<|end_of_text|>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (HF ByteLevel), inverted: char -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kinds(tokenizer_json: Path) -> set[str]:
    """Types of the decoder (and of its steps, for a Sequence): ByteLevel, ByteFallback, Metaspace..."""
    try:
        dec = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("decoder") or {}
    except (OSError, ValueError):
        return set()
    steps = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
    return {d.get("type") for d in steps if isinstance(d, dict)}


_BYTE_LEVEL = _byte_level_alphabet()


def _token_str(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):
        return v.get("content")
    return str(v)


class Tokenizer:
    def __init__(self, tokenizer_json: str | Path, config: dict | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(tokenizer_json)
        try:
            self._tok = HFTokenizer.from_file(str(tokenizer_json))
        except Exception as e:
            raise CheckpointError(f"{tokenizer_json}: cannot load tokenizer ({e})") from None
        self.config = dict(config or {})
        tmpl = self.config.get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
            tmpl = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = tmpl
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self.pad_token = _token_str(self.config.get("pad_token"))
        self._jinja = None
        self._bytes_rules: tuple[str, set[int]] | None = None  # (decoder kind, special ids), see token_bytes

    # ---- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_token_id(self) -> int | None:
        if self.pad_token and self.token_to_id(self.pad_token) is not None:
            return self.token_to_id(self.pad_token)
        return self.eos_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """Every token that ends a turn: eos, <|im_end|>, <|end_of_text|> (whichever exist)."""
        ids = []
        for t in (self.eos_token, *STOP_TOKENS):
            i = self.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_token_ids(self) -> set[int]:
        out = set()
        for t in self.config.get("added_tokens_decoder", {}).values():
            if isinstance(t, dict) and t.get("special"):
                i = self.token_to_id(t.get("content", ""))
                if i is not None:
                    out.add(i)
        for t in (self.bos_token, self.eos_token, self.pad_token, *SPECIAL_TOKENS):
            i = self.token_to_id(t) if t else None
            if i is not None:
                out.add(i)
        return out

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes one token stands for (OpenAI's logprob `bytes`), also when it is only part of a
        UTF-8 character, where decode([i]) would give U+FFFD."""
        if self._bytes_rules is None:  # read the decoder once, on first use
            kinds = _decoder_kinds(self.path)
            kind = "byte_level" if "ByteLevel" in kinds else "metaspace" if kinds & {"Metaspace", "Replace"} else "text"
            self._bytes_rules = (kind, self.special_token_ids)
        kind, special = self._bytes_rules
        tok = self.id_to_token(i)
        if tok is None:
            return b""
        if i in special:  # added tokens are stored as plain text
            return tok.encode("utf-8")
        if kind == "byte_level":
            if all(c in _BYTE_LEVEL for c in tok):
                return bytes(_BYTE_LEVEL[c] for c in tok)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):  # byte fallback
            try:
                return bytes([int(tok[3:5], 16)])
            except ValueError:
                pass
        elif kind == "metaspace":
            return tok.replace("\u2581", " ").encode("utf-8")
        return self.decode([i]).encode("utf-8")

    # ---- text --------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs):
        if not self.chat_template:
            raise CheckpointError(f"{self.path.parent}: tokenizer_config.json has no chat_template")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        if self._jinja is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(msg):
                raise TemplateError(msg)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._jinja = env.from_string(self.chat_template)
        text = self._jinja.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                  bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        return self.encode(text) if tokenize else text

    # ---- files -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        from h1r.utils.io import atomic_write_json, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "tokenizer.json", self._tok.to_str())
        cfg = dict(self.config)
        if self.chat_template and "chat_template" not in cfg:
            cfg["chat_template"] = self.chat_template
        atomic_write_json(directory / "tokenizer_config.json", cfg)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer of a model directory; a clear error when it has none."""
    path = Path(path)
    tj = path / "tokenizer.json" if path.is_dir() else path
    if not tj.is_file():
        raise CheckpointError(f"{path}: no tokenizer.json (H1R needs a tokenizer in the model directory)")
    cfg_path = tj.parent / "tokenizer_config.json"
    cfg = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    ct = tj.parent / "chat_template.jinja"
    if "chat_template" not in cfg and ct.is_file():
        cfg["chat_template"] = ct.read_text(encoding="utf-8")
    return Tokenizer(tj, cfg)

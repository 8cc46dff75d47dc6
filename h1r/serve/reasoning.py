"""Reasoning output: the `<think>…</think>` part of a chat answer goes to `reasoning_content`, the rest
to `content`, with the rules of vLLM's `deepseek_r1` reasoning parser:

- the output is reasoning from its first token (the model may or may not emit `<think>` itself;
  a `<think>` token is dropped wherever it appears);
- the first `</think>` ends the reasoning; everything after it is content;
- an output without `</think>` (still thinking, or cut by max_tokens) is all reasoning, content None.

The split works on token ids, not on text: H1R's tokenizer marks `<think>`/`</think>` as special
tokens, so they vanish from decoded text and a text-level parser would never see them. Streaming and
non-streaming answers run the same router token by token, so they always agree.
"""

from __future__ import annotations

from h1r.errors import ConfigError

THINK_START, THINK_END = "<think>", "</think>"
PARSERS = ("deepseek_r1", "none")

REASONING, CONTENT = "reasoning", "content"


class ReasoningRouter:
    """One choice's router: `route(token_ids)` -> [(segment, ids)] in order, segment REASONING or CONTENT.
    Marker tokens are consumed (never decoded)."""

    def __init__(self, start_id: int | None, end_id: int | None, enabled: bool = True):
        self.start_id, self.end_id = start_id, end_id
        self.segment = REASONING if enabled else CONTENT
        self.saw_end = not enabled

    def route(self, token_ids: list[int]) -> list[tuple[str, list[int]]]:
        runs: list[tuple[str, list[int]]] = []
        for t in token_ids:
            if t == self.start_id and self.segment == REASONING:
                continue
            if t == self.end_id and not self.saw_end:
                self.saw_end, self.segment = True, CONTENT
                runs.append((CONTENT, []))  # marks the switch even when no content follows yet
                continue
            if runs and runs[-1][0] == self.segment:
                runs[-1][1].append(t)
            else:
                runs.append((self.segment, [t]))
        return runs


class ReasoningParser:
    """Makes routers for one tokenizer. `name`: "deepseek_r1" (split) or "none" (everything is content)."""

    def __init__(self, tokenizer, name: str = "deepseek_r1"):
        if name not in PARSERS:
            raise ConfigError(f"unknown reasoning parser {name!r} (valid: {', '.join(PARSERS)})")
        self.name = name
        self.start_id, self.end_id = tokenizer.token_to_id(THINK_START), tokenizer.token_to_id(THINK_END)
        if name == "deepseek_r1" and self.end_id is None:
            raise ConfigError(f"reasoning parser {name!r} needs a {THINK_END} token; the tokenizer has none "
                              "(use --reasoning-parser none)")

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def router(self, enabled: bool = True) -> ReasoningRouter:
        return ReasoningRouter(self.start_id, self.end_id, enabled and self.enabled)

"""Per-token logprobs in the two OpenAI shapes: the legacy completions one (tokens / token_logprobs /
top_logprobs dicts / text_offset) and the chat one (content: [{token, logprob, bytes, top_logprobs}])."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass
class TokenLogprobSlice:
    """Logprobs of some consecutive generated tokens of one choice: chosen [T], top_ids [T,k], top [T,k]."""

    token_ids: list[int]
    chosen: np.ndarray
    top_ids: np.ndarray
    top: np.ndarray

    @classmethod
    def from_output(cls, token_ids, lp) -> TokenLogprobSlice:
        return cls(list(token_ids), lp.chosen, lp.top_ids, lp.top)


def _finite(v) -> float:
    """JSON has no -inf: a masked-out token gets -9999 (vLLM's convention)."""
    v = float(v)
    return v if v > -9999.0 else -9999.0


class LogprobFormatter:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.token_text = lru_cache(maxsize=65536)(self._token_text)
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)

    def _token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def _token_bytes(self, token_id: int) -> list[int]:
        return list(self.tok.token_bytes(token_id))

    def completion(self, s: TokenLogprobSlice, text_offsets: list[int], base: int = 0) -> dict:
        """Legacy format; the top dict also holds the chosen token (so up to k+1 entries, as OpenAI)."""
        toks = [self.token_text(t) for t in s.token_ids]
        tops = []
        for i, t in enumerate(s.token_ids):
            d = {self.token_text(int(j)): _finite(v) for j, v in zip(s.top_ids[i], s.top[i])}
            d[toks[i]] = _finite(s.chosen[i])
            tops.append(d)
        return {"tokens": toks, "token_logprobs": [_finite(x) for x in s.chosen], "top_logprobs": tops,
                "text_offset": [base + o for o in text_offsets]}

    def chat(self, s: TokenLogprobSlice, k: int) -> list[dict]:
        out = []
        for i, t in enumerate(s.token_ids):
            tok = self.token_text(t)
            top = [self._entry(int(j), _finite(v)) for j, v in zip(s.top_ids[i][:k], s.top[i][:k])]
            out.append({**self._entry(t, _finite(s.chosen[i]), tok), "top_logprobs": top})
        return out

    def _entry(self, token_id: int, logprob: float, text: str | None = None) -> dict:
        text = self.token_text(token_id) if text is None else text
        return {"token": text, "logprob": logprob, "bytes": self.token_bytes(token_id)}

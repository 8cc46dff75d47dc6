"""What `generate` returns: per prompt a RequestOutput with `n` CompletionOutputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TokenLogprobs:
    """Logprobs of a completion, kept as arrays (hundreds of long traces stay cheap).

    chosen  float32 [T]      logprob of each generated token
    top_ids int32  [T, k]    the k most likely token ids at each position (descending)
    top     float32 [T, k]   their logprobs
    """

    chosen: np.ndarray
    top_ids: np.ndarray
    top: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen)

    def as_dicts(self, token_ids: list[int]) -> list[dict[int, float]]:
        """vLLM-style: per position {token_id: logprob} over the top-k plus the chosen token."""
        out = []
        for t, tok in enumerate(token_ids):
            d = {int(i): float(v) for i, v in zip(self.top_ids[t], self.top[t])}
            d[int(tok)] = float(self.chosen[t])
            out.append(d)
        return out


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "hook"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: TokenLogprobs | None = None
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)

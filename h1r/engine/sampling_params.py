"""SamplingParams in the shape vLLM users know, validated on construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from h1r.errors import H1RError

MAX_LOGPROBS = 20


class SamplingError(H1RError, ValueError):
    """An impossible sampling parameter (named in the message)."""


@dataclass
class TokenEvent:
    """What a per-token hook sees after each generated token of one sequence."""

    token_id: int
    logprob: float  # raw logprob of the chosen token
    topk_logprobs: Any  # numpy float32 [k] raw top-k logprobs (descending), k = hook_topk
    index: int  # 0-based index of this token in the completion


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF-style, over prompt + output tokens
    presence_penalty: float = 0.0  # OpenAI-style, over output tokens
    frequency_penalty: float = 0.0
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per generated token (0: only the chosen token's)
    logprobs_mode: Literal["raw", "processed"] = "raw"  # raw model logprobs, or after temperature/penalties
    skip_special_tokens: bool = True
    # per-sequence stop hook: a factory called once per sample; the hook gets a TokenEvent after every
    # token and returns True to stop that sequence (finish_reason "hook"). Not serialisable.
    stop_hook_factory: Callable[[], Callable[[TokenEvent], bool]] | None = field(default=None, repr=False)
    hook_topk: int = MAX_LOGPROBS  # how many top logprobs the hook receives

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        def bad(msg: str):
            raise SamplingError(msg)

        if not isinstance(self.n, int) or self.n < 1:
            bad(f"n must be an integer >= 1, got {self.n!r}")
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or (self.top_k < 0 and self.top_k != -1):
            bad(f"top_k must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not (0.0 <= self.min_p <= 1.0):
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if not (self.repetition_penalty > 0.0):
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (-2.0 <= v <= 2.0):
                bad(f"{name} must be in [-2, 2], got {v}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad(f"min_tokens must be >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop strings must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            bad(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids}")
        if self.seed is not None and not isinstance(self.seed, int):
            bad(f"seed must be an integer, got {self.seed!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            bad(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if self.logprobs_mode not in ("raw", "processed"):
            bad(f"logprobs_mode must be 'raw' or 'processed', got {self.logprobs_mode!r}")
        if not 1 <= self.hook_topk <= MAX_LOGPROBS:
            bad(f"hook_topk must be in [1, {MAX_LOGPROBS}], got {self.hook_topk}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def effective_top_k(self) -> int:
        return 0 if self.top_k in (0, -1) else self.top_k

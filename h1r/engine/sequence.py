"""A Sequence is one sample being generated; a Request groups the `n` samples of one prompt; a
PrefillGroup lets every sample of identical prompts share one prefill."""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from h1r.engine.sampling_params import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request: "Request | None", index: int, token_ids: list[int], num_prompt: int,
                 seed: int, is_snapshot: bool = False):
        self.seq_id = next(_ids)
        self.request = request
        self.index = index  # sample index within the request (-1 for a shared-prefill snapshot)
        self.token_ids = token_ids
        self.num_prompt = num_prompt
        self.num_computed = 0  # tokens whose K/V and state are in the cache
        self.pages: list[int] = []
        self.slot: int | None = None
        self.status = Status.WAITING
        self.seed = seed
        self.is_snapshot = is_snapshot
        self.group: "PrefillGroup | None" = None  # a snapshot's prefill group
        self.finish_reason: str | None = None
        self.stop_reason = None
        self.hook = None
        self.detok = None
        self.text = ""
        self.cumulative_logprob = 0.0
        self._chosen: list[float] = []
        self._top: list[np.ndarray] = []
        self._top_ids: list[np.ndarray] = []
        self.output_counts: dict[int, int] = {}
        self.pending = 0  # decode steps launched whose token has not reached the host yet
        self.deferred_free = False  # finished while a step was in flight: free its cache when it lands

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt:]

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    def append(self, token_id: int, logprob: float | None, top: np.ndarray | None, top_ids: np.ndarray | None):
        self.token_ids.append(token_id)
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1
        if logprob is not None:
            self._chosen.append(logprob)
            self.cumulative_logprob += logprob
            if top is not None:
                self._top.append(top)
                self._top_ids.append(top_ids)

    def logprob_arrays(self, k: int):
        from h1r.engine.outputs import TokenLogprobs

        T = len(self._chosen)
        chosen = np.asarray(self._chosen, dtype=np.float32)
        if k > 0 and self._top:
            top = np.stack(self._top).astype(np.float32)[:, :k]
            ids = np.stack(self._top_ids).astype(np.int32)[:, :k]
        else:
            top, ids = np.zeros((T, 0), np.float32), np.zeros((T, 0), np.int32)
        return TokenLogprobs(chosen, ids, top)


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seeds: list[int]
    arrival: int
    samples: list[Sequence | None] = field(default_factory=list)
    num_finished: int = 0
    aborted: bool = False
    stop_ids: frozenset = frozenset()  # token ids that end a sample (eos/stop tokens unless ignore_eos)

    @property
    def finished(self) -> bool:
        return self.num_finished == self.params.n


@dataclass
class PrefillGroup:
    """One prefill of a prompt shared by every pending sample that has this exact prompt."""

    key: tuple[int, ...]
    snapshot: Sequence
    pending: deque = field(default_factory=deque)  # (request, sample index) waiting to fork
    last_logits: torch.Tensor | None = None  # [V] logits after the prompt, once prefilled
    pins: int = 0  # while pinned the snapshot outlives its pending samples (later requests fork from it)

    @property
    def ready(self) -> bool:
        return self.last_logits is not None

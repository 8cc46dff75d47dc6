"""The generation engine: continuous batching over paged K/V and per-sequence Mamba state slots."""

from h1r.engine.outputs import CompletionOutput, RequestOutput, TokenLogprobs
from h1r.engine.sampling_params import SamplingError, SamplingParams, TokenEvent

__all__ = ["SamplingParams", "SamplingError", "TokenEvent", "RequestOutput", "CompletionOutput", "TokenLogprobs"]

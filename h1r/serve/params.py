"""From a validated request body to engine inputs: checks no schema can express (unsupported options,
the context length, the model name), then SamplingParams. Every failure is an APIError (4xx)."""

from __future__ import annotations

import re

from h1r.engine.sampling_params import SamplingError, SamplingParams
from h1r.serve.errors import APIError, bad_request
from h1r.serve.protocol import _Sampling


def check_request(req: _Sampling, server) -> None:
    if req.model is not None and req.model not in (server.config.served_model_name, ""):
        raise APIError(404, f"the model '{req.model}' does not exist (this server serves "
                            f"'{server.config.served_model_name}')", "model", "model_not_found")
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise bad_request("'best_of' is not supported (it must equal n)", "best_of", "unsupported")
    if req.logit_bias:
        raise bad_request("'logit_bias' is not supported", "logit_bias", "unsupported")
    if req.stop_token_ids:
        bad = [t for t in req.stop_token_ids if not 0 <= t < server.vocab_size]
        if bad:
            raise bad_request(f"stop token id {bad[0]} is outside the vocabulary (size {server.vocab_size})",
                              "stop_token_ids")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", "stop")


def check_prompt(ids: list[int], server, max_tokens: int | None, param: str) -> None:
    if not ids:
        raise bad_request("the prompt is empty", param)
    bad = [t for t in ids if not 0 <= t < server.vocab_size]
    if bad:
        raise bad_request(f"prompt token id {bad[0]} is outside the vocabulary (size {server.vocab_size})", param)
    ctx = server.max_model_len
    if len(ids) >= ctx or (max_tokens is not None and len(ids) + max_tokens > ctx):
        asked = f"{len(ids)} in the {param}" + (f" and {max_tokens} for the completion" if max_tokens else "")
        raise bad_request(f"this model's maximum context length is {ctx} tokens, but {asked} were requested; "
                          f"shorten the {param} or lower max_tokens", param, "context_length_exceeded")


def sampling_params(req: _Sampling, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """SamplingParams from the request; None fields take the OpenAI defaults."""

    def get(name, default):
        v = getattr(req, name)
        return default if v is None else v

    try:
        return SamplingParams(
            n=get("n", 1), temperature=get("temperature", 1.0), top_p=get("top_p", 1.0), top_k=get("top_k", 0),
            min_p=get("min_p", 0.0), presence_penalty=get("presence_penalty", 0.0),
            frequency_penalty=get("frequency_penalty", 0.0), repetition_penalty=get("repetition_penalty", 1.0),
            max_tokens=max_tokens, min_tokens=get("min_tokens", 0), stop=req.stop,
            stop_token_ids=req.stop_token_ids, include_stop_str_in_output=get("include_stop_str_in_output", False),
            ignore_eos=get("ignore_eos", False), seed=req.seed, logprobs=logprobs)
    except SamplingError as e:  # rules that span fields (min_tokens <= max_tokens, ...)
        msg = str(e)
        m = re.match(r"(\w+)", msg)
        raise bad_request(msg, m.group(1) if m and m.group(1) in type(req).model_fields else None) from None

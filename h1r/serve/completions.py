"""POST /v1/completions: raw prompts (text, token ids, or a batch of either), legacy logprobs."""

from __future__ import annotations

import time
from contextlib import aclosing

from h1r.serve.errors import APIError, bad_request
from h1r.serve.generation import FINISH, Generation
from h1r.serve.logprobs import TokenLogprobSlice
from h1r.serve.params import check_prompt, check_request, sampling_params
from h1r.serve.protocol import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from h1r.serve.sse import sse_event, sse_done, sse_stream

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


def _prompts(req: CompletionRequest, server) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        batch = [server.tokenizer.encode(p)]
    elif p and isinstance(p[0], int):
        batch = [list(p)]
    elif p and isinstance(p[0], str):
        batch = [server.tokenizer.encode(s) for s in p]
    else:
        batch = [list(x) for x in p]
    if not batch:
        raise bad_request("'prompt' is an empty list", "prompt")
    if len(batch) > server.config.max_batch_prompts:
        raise bad_request(f"at most {server.config.max_batch_prompts} prompts per request, got {len(batch)}",
                          "prompt")
    return batch


async def create_completion(server, req: CompletionRequest, http_request, received_at: float):
    check_request(req, server)
    if req.echo:
        raise bad_request("'echo' is not supported", "echo", "unsupported")
    if req.suffix:
        raise bad_request("'suffix' is not supported", "suffix", "unsupported")
    prompts = _prompts(req, server)
    for ids in prompts:
        check_prompt(ids, server, req.max_tokens, "prompt")
    room = server.max_model_len - max(len(ids) for ids in prompts)
    max_tokens = req.max_tokens if req.max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
    params = sampling_params(req, max_tokens, req.logprobs)
    gen = Generation(server, "completions", server.new_id("cmpl"), prompts, params, False, received_at)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_stream(server, _stream(server, gen, req, include_usage))
    await server.until_disconnect(http_request, gen.run())
    choices = []
    for i, (ct, o) in enumerate(gen.final_texts()):
        if o.finish_reason == "abort":
            raise APIError(503, "the server shut down before the request finished", code="shutdown")
        lp = None
        if req.logprobs is not None:
            lp = server.logprobs.completion(TokenLogprobSlice.from_output(o.token_ids, o.logprobs), ct.token_offsets)
        choices.append(CompletionChoice(index=i, text=ct.text, logprobs=lp, finish_reason=FINISH[o.finish_reason]))
    return CompletionResponse(id=gen.request_id, model=server.config.served_model_name, choices=choices,
                              usage=Usage.of(gen.prompt_tokens, gen.completion_tokens))


async def _stream(server, gen: Generation, req: CompletionRequest, include_usage: bool):
    head = {"id": gen.request_id, "object": "text_completion", "created": int(time.time()),
            "model": server.config.served_model_name}
    extra = {"usage": None} if include_usage else {}
    async with aclosing(gen.updates(want_logprobs=req.logprobs is not None)) as updates:
        async for u in updates:
            text = u.parts.get("content", "")
            lp = server.logprobs.completion(u.logprobs, u.token_offsets) if u.logprobs is not None else None
            if not text and lp is None and u.finish_reason is None:
                continue
            yield sse_event({**head, "choices": [{"index": u.index, "text": text, "logprobs": lp,
                                                  "finish_reason": u.finish_reason}], **extra})
    if include_usage:
        yield sse_event({**head, "choices": [], "usage": Usage.of(gen.prompt_tokens, gen.completion_tokens)
                         .model_dump()})
    yield sse_done()

"""POST /v1/chat/completions: the chat template, reasoning_content, chat-style logprobs, and the
`deepconf` extension (h1r/serve/deepconf.py)."""

from __future__ import annotations

import time
from contextlib import aclosing

from h1r.serve.errors import APIError, bad_request
from h1r.serve.generation import FINISH, Generation
from h1r.serve.logprobs import TokenLogprobSlice
from h1r.serve.params import check_prompt, check_request, sampling_params
from h1r.serve.protocol import ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatResponseMessage, Usage
from h1r.serve.reasoning import CONTENT, REASONING
from h1r.serve.sse import sse_done, sse_event, sse_stream


def _text_of(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"messages.{i}.content.{j}: only text content parts ({{'type': 'text', 'text': ...}}) "
                              "are supported", f"messages.{i}.content")
        texts.append(part["text"])
    return "".join(texts)


def render_prompt(req: ChatCompletionRequest, server) -> list[int]:
    messages = [{"role": m.role, "content": _text_of(m.content, i)} for i, m in enumerate(req.messages)]
    add_gen = True if req.add_generation_prompt is None else req.add_generation_prompt
    try:
        return server.tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen, tokenize=True)
    except Exception as e:  # a template's raise_exception, a role it rejects, ...
        raise bad_request(f"the chat template rejected the messages: {e}", "messages") from None


def _check_chat(req: ChatCompletionRequest) -> int | None:
    """-> top-k logprobs for the engine (None: no logprobs)."""
    if req.tools:
        raise bad_request("'tools' are not supported", "tools", "unsupported")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise bad_request("only response_format {'type': 'text'} is supported", "response_format", "unsupported")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


async def create_chat_completion(server, req: ChatCompletionRequest, http_request, received_at: float):
    check_request(req, server)
    k = _check_chat(req)
    ids = render_prompt(req, server)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    check_prompt(ids, server, max_tokens, "messages")
    if req.deepconf is not None:
        from h1r.serve.deepconf import create_deepconf_completion

        return await create_deepconf_completion(server, req, ids, max_tokens, http_request, received_at)
    params = sampling_params(req, max_tokens, k)
    split = server.parser.enabled
    gen = Generation(server, "chat", server.new_id("chatcmpl"), [ids], params, split, received_at)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_stream(server, _stream(server, gen, k, include_usage))
    await server.until_disconnect(http_request, gen.run())
    choices = []
    for i, (ct, o) in enumerate(gen.final_texts()):
        if o.finish_reason == "abort":
            raise APIError(503, "the server shut down before the request finished", code="shutdown")
        msg = ChatResponseMessage(content=ct.content if split else ct.text, reasoning_content=ct.reasoning)
        lp = {"content": server.logprobs.chat(TokenLogprobSlice.from_output(o.token_ids, o.logprobs), k)} \
            if k is not None else None
        choices.append(ChatChoice(index=i, message=msg, logprobs=lp, finish_reason=FINISH[o.finish_reason]))
    return ChatCompletionResponse(id=gen.request_id, model=server.config.served_model_name, choices=choices,
                                  usage=Usage.of(gen.prompt_tokens, gen.completion_tokens))


async def _stream(server, gen: Generation, k: int | None, include_usage: bool):
    head = {"id": gen.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": server.config.served_model_name}
    extra = {"usage": None} if include_usage else {}

    def chunk(index, delta, logprobs=None, finish_reason=None):
        return sse_event({**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                               "finish_reason": finish_reason}], **extra})

    for i in range(gen.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async with aclosing(gen.updates(want_logprobs=k is not None)) as updates:
        async for u in updates:
            delta = {}
            if u.parts.get(REASONING):
                delta["reasoning_content"] = u.parts[REASONING]
            if u.parts.get(CONTENT):
                delta["content"] = u.parts[CONTENT]
            lp = {"content": server.logprobs.chat(u.logprobs, k)} if u.logprobs is not None else None
            if delta or lp is not None or u.finish_reason is not None:
                yield chunk(u.index, delta, lp, u.finish_reason)
    if include_usage:
        yield sse_event({**head, "choices": [], "usage": Usage.of(gen.prompt_tokens, gen.completion_tokens)
                         .model_dump()})
    yield sse_done()

"""The `deepconf` extension of chat completions: DeepConf voting over many sampled traces
(h1r.deepconf.engine.solve) instead of one sample. The voted answer is the message content; the
vote's statistics go into the response's `deepconf` field.

`solve` drives an `LLM`-shaped object synchronously, so it runs in a worker thread against a thin
stand-in whose `generate` hands each request to the shared AsyncLLM on the event loop and waits:
DeepConf traces join the same continuous batch as every other client's requests. A client that
disconnects cancels the request in flight (its pages and slots are freed) and stops the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from contextlib import aclosing

from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingError, SamplingParams
from h1r.errors import ConfigError
from h1r.serve.engine_client import EngineClosed
from h1r.serve.errors import APIError, bad_request
from h1r.serve.protocol import ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatResponseMessage, Usage
from h1r.serve.sse import sse_done, sse_event, sse_stream


class _Cancelled(Exception):
    pass


class _AsyncBackedLLM:
    """What `solve` needs of an LLM (tokenizer, engine limits, generate), backed by the AsyncLLM."""

    def __init__(self, server, loop: asyncio.AbstractEventLoop, request_id: str):
        self.tokenizer, self.engine = server.tokenizer, server.engine.engine  # read-only use: limits
        self._server, self._loop, self._rid = server, loop, request_id
        self._calls = 0
        self._current: cf.Future | None = None
        self._lock = threading.Lock()
        self.cancelled = False
        self.completion_tokens = 0

    def generate(self, prompts, params: SamplingParams, use_tqdm: bool = False) -> list[RequestOutput]:
        with self._lock:
            if self.cancelled:
                raise _Cancelled()
            self._calls += 1
            fut = asyncio.run_coroutine_threadsafe(self._one(prompts[0], params, f"{self._rid}-{self._calls}"),
                                                   self._loop)
            self._current = fut
        try:
            out = fut.result()
        except (cf.CancelledError, EngineClosed):
            raise _Cancelled() from None
        self.completion_tokens += out.num_generated_tokens
        if any(o.finish_reason == "abort" for o in out.outputs):  # shut down mid-request: no vote
            raise _Cancelled()
        return [out]

    async def _one(self, ids, params, rid) -> RequestOutput:
        final = None
        async with aclosing(self._server.engine.stream([ids], params, rid)) as events:
            async for _, item in events:
                if isinstance(item, RequestOutput):
                    final = item
        return final

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._current is not None:
                self._current.cancel()


def _config(opts):
    from h1r.deepconf.run import DeepConfConfig

    kw = dict(mode=opts.mode, variant=opts.variant, budget=opts.budget, warmup_traces=opts.warmup,
              window=opts.window, consensus=opts.consensus, step=opts.step)
    if opts.vote_method:
        kw["vote_method"] = opts.vote_method
    try:
        return DeepConfConfig(**kw)
    except ConfigError as e:
        raise bad_request(f"deepconf: {e}", "deepconf") from None


def _sampling(req: ChatCompletionRequest, max_tokens: int | None) -> SamplingParams:
    """The request's decoding; unset temperature/top_p take DeepConf's defaults (0.6 / 0.95)."""
    from h1r.deepconf.engine import DEFAULT_SAMPLING as D

    get = lambda name, default: default if getattr(req, name) is None else getattr(req, name)  # noqa: E731
    try:
        return SamplingParams(temperature=get("temperature", D.temperature), top_p=get("top_p", D.top_p),
                              top_k=get("top_k", D.top_k), min_p=get("min_p", D.min_p), max_tokens=max_tokens,
                              repetition_penalty=get("repetition_penalty", 1.0),
                              presence_penalty=get("presence_penalty", 0.0), stop=req.stop,
                              stop_token_ids=req.stop_token_ids, seed=req.seed)
    except SamplingError as e:
        raise bad_request(str(e)) from None


async def create_deepconf_completion(server, req: ChatCompletionRequest, ids: list[int], max_tokens: int | None,
                                     http_request, received_at: float):
    from h1r.deepconf.engine import solve

    if (req.n or 1) != 1:
        raise bad_request("'n' must be 1 with 'deepconf' (the vote returns one answer)", "n")
    if req.logprobs:
        raise bad_request("'logprobs' is not available with 'deepconf'", "logprobs")
    cfg, sampling = _config(req.deepconf), _sampling(req, max_tokens)
    rid = server.new_id("chatcmpl")
    backend = _AsyncBackedLLM(server, asyncio.get_running_loop(), rid)

    async def run():
        fut = asyncio.get_running_loop().run_in_executor(server.deepconf_pool, lambda: solve(
            backend, ids, cfg, sampling, seed=req.seed, keep_text=False))
        try:
            return await fut
        except asyncio.CancelledError:
            backend.cancel()
            raise
        except _Cancelled:
            raise APIError(503, "the server shut down before the request finished", code="shutdown") from None
        except ConfigError as e:
            raise bad_request(f"deepconf: {e}", "deepconf") from None

    def response(result) -> ChatCompletionResponse:
        stats = result.to_dict()
        traces = stats.pop("traces")
        stats["num_traces"] = len(result.traces)
        stats["num_voted"] = sum(t.voted for t in result.traces)
        if req.deepconf.include_traces:
            stats["traces"] = traces
        msg = ChatResponseMessage(content=result.answer)
        return ChatCompletionResponse(id=rid, model=server.config.served_model_name,
                                      choices=[ChatChoice(index=0, message=msg, finish_reason="stop")],
                                      usage=Usage.of(len(ids), backend.completion_tokens), deepconf=stats)

    if not req.stream:
        result = await server.until_disconnect(http_request, run())
        server.metrics.prompt_tokens.inc(amount=len(ids))
        server.metrics.generation_tokens.inc(amount=backend.completion_tokens)
        return response(result)

    async def stream():  # the answer exists only after the vote: role chunk now, the rest at the end
        head = {"id": rid, "object": "chat.completion.chunk", "model": server.config.served_model_name}
        yield sse_event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
        body = response(await run())
        yield sse_event({**head, "choices": [{"index": 0, "delta": {"content": body.choices[0].message.content},
                                              "finish_reason": "stop"}], "deepconf": body.deepconf})
        if req.stream_options and req.stream_options.include_usage:
            yield sse_event({**head, "choices": [], "usage": body.usage.model_dump()})
        yield sse_done()

    return sse_stream(server, stream())

"""One API request's engine work: its prompts x n choices, as a stream of ChoiceUpdates (streaming)
or as finished outputs (non-streaming), with its latency and token metrics recorded once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from h1r.engine.async_llm import StreamDelta
from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingParams
from h1r.serve.logprobs import TokenLogprobSlice
from h1r.serve.text import ChoiceText

# engine finish reason -> API finish reason ("abort": the server shut down mid-request)
FINISH = {"stop": "stop", "length": "length", "abort": "abort", "hook": "stop"}


@dataclass
class ChoiceUpdate:
    index: int  # choice index in the response: prompt index * n + sample index
    parts: dict[str, str]  # text released now, by segment ("reasoning" / "content")
    logprobs: TokenLogprobSlice | None  # of the tokens of this update (when asked for)
    token_offsets: list[int]  # where each of those tokens' text starts in its segment
    finish_reason: str | None


class Generation:
    def __init__(self, server, endpoint: str, request_id: str, prompts: list[list[int]], params: SamplingParams,
                 split_reasoning: bool, received_at: float):
        self.server, self.endpoint, self.request_id = server, endpoint, request_id
        self.prompts, self.params, self.n = prompts, params, params.n
        self.split_reasoning = split_reasoning
        self.received_at = received_at
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.completion_tokens = 0
        self.outputs: list[RequestOutput | None] = [None] * len(prompts)

    def choice_text(self, prompt_index: int) -> ChoiceText:
        p = self.params
        return ChoiceText(self.server.tokenizer, self.prompts[prompt_index],
                          self.server.parser.router(self.split_reasoning), p.stop, p.include_stop_str_in_output)

    async def _events(self, stream_logprobs: bool) -> AsyncIterator[tuple[int, StreamDelta | RequestOutput]]:
        m, first, complete = self.server.metrics, None, False
        try:
            async with aclosing(self.server.engine.stream(self.prompts, self.params, self.request_id,
                                                          stream_logprobs)) as events:
                async for pi, item in events:
                    if isinstance(item, StreamDelta):
                        if first is None:
                            first = time.perf_counter()
                            m.ttft.observe(first - self.received_at, self.endpoint)
                        self.completion_tokens += len(item.token_ids)
                    else:
                        self.outputs[pi] = item
                        m.aborted.inc(amount=sum(o.finish_reason == "abort" for o in item.outputs))
                    yield pi, item
            complete = True
        finally:
            m.prompt_tokens.inc(amount=self.prompt_tokens)
            m.generation_tokens.inc(amount=self.completion_tokens)
            if complete:
                m.e2e.observe(time.perf_counter() - self.received_at, self.endpoint)

    async def run(self) -> list[RequestOutput]:
        """Non-streaming: wait for every prompt's final output."""
        async with aclosing(self._events(stream_logprobs=False)) as events:
            async for _ in events:
                pass
        return self.outputs

    def final_texts(self) -> list[tuple[ChoiceText, object]]:
        """Per choice, in order: (ChoiceText fed every token, CompletionOutput)."""
        out = []
        for pi, ro in enumerate(self.outputs):
            for o in ro.outputs:
                ct = self.choice_text(pi)
                ct.add(o.token_ids)
                ct.finish()
                out.append((ct, o))
        return out

    async def updates(self, want_logprobs: bool) -> AsyncIterator[ChoiceUpdate]:
        """Streaming: text and logprobs as they are released, then one update with each finish reason."""
        texts = [self.choice_text(pi) for pi in range(len(self.prompts)) for _ in range(self.n)]
        finished = [False] * len(texts)
        engine = self.server.engine
        async with aclosing(self._events(stream_logprobs=want_logprobs)) as events:
            async for pi, item in events:
                if isinstance(item, StreamDelta):
                    ci = pi * self.n + item.index
                    ct = texts[ci]
                    base = len(ct.token_offsets)
                    parts = ct.add(item.token_ids)
                    lp = engine.take_logprobs(f"{self.request_id}-{pi}", item.index, len(item.token_ids)) \
                        if want_logprobs else None
                    reason = None
                    if item.finished:
                        for k, v in ct.finish().items():
                            parts[k] = parts.get(k, "") + v
                        reason, finished[ci] = FINISH.get(item.finish_reason, item.finish_reason), True
                    yield ChoiceUpdate(ci, parts, lp, ct.token_offsets[base:], reason)
                else:  # the request ended: close choices that never finished (aborted)
                    for o in item.outputs:
                        ci = pi * self.n + o.index
                        if not finished[ci]:
                            finished[ci] = True
                            yield ChoiceUpdate(ci, texts[ci].finish(), None, [],
                                               FINISH.get(o.finish_reason or "abort", o.finish_reason))

"""The server's view of the engine: AsyncLLM plus what an HTTP server needs on top.

- Streamed logprobs: the engine keeps per-token logprobs on its Sequence objects and StreamDelta
  carries none, so they are copied here on the engine thread, as each delta is dispatched, into a
  per-request sink the asyncio side drains in order.
- Cancellation while a request is being added (a client gone within the first engine step) must
  neither cancel the engine's command future (the engine thread would crash setting its result) nor
  leak the request: the add is shielded, and a request that lands after its consumer left is aborted.
- After shutdown, new requests fail at once with EngineClosed instead of waiting forever.
- Several prompts of one request are merged into one stream of (prompt index, item).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np

from h1r.engine.async_llm import AsyncLLM, StreamDelta
from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingParams
from h1r.serve.logprobs import TokenLogprobSlice


class EngineClosed(RuntimeError):
    """The engine was shut down; no new requests."""


class ServingEngine(AsyncLLM):
    def __init__(self, engine):
        self._lp_sinks: dict[str, dict[int, deque]] = {}
        super().__init__(engine)

    # ---- engine thread ------------------------------------------------------------------------------
    def _dispatch(self, updates):
        for u in updates:
            sinks = self._lp_sinks.get(u.request_id)
            req = self.engine.requests.get(u.request_id)
            if sinks is None or req is None:
                continue
            seq, k, n = req.samples[u.index], req.params.logprobs or 0, len(u.new_token_ids)
            top = seq._top[-n:] if k and seq._top else None
            sinks[u.index].append(TokenLogprobSlice(
                list(u.new_token_ids), np.asarray(seq._chosen[-n:], dtype=np.float32),
                np.stack(seq._top_ids[-n:])[:, :k] if top else np.zeros((n, 0), np.int32),
                np.stack(top)[:, :k] if top else np.zeros((n, 0), np.float32)))
        super()._dispatch(updates)

    # ---- asyncio side -------------------------------------------------------------------------------
    async def _submit(self, kind, args):
        if not self.alive:
            raise EngineClosed("the engine is shut down")
        fut: cf.Future = cf.Future()
        self._cmds.put((kind, args, fut))
        try:
            return await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            if kind == "add":  # it may still be added: abort it as soon as it is
                rid = args[0]
                fut.add_done_callback(lambda f: self._cmds.put(("abort", rid, cf.Future())))
            raise

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def take_logprobs(self, request_id: str, index: int, num_tokens: int) -> TokenLogprobSlice | None:
        """The logprobs of the next `num_tokens` streamed tokens of one choice (call once per delta)."""
        sinks = self._lp_sinks.get(request_id)
        if sinks is None or not sinks[index]:
            return None
        s = sinks[index].popleft()
        assert len(s.token_ids) == num_tokens, "logprob sink out of step with the stream"
        return s

    async def stream(self, prompts: list[list[int]], params: SamplingParams, request_id: str,
                     stream_logprobs: bool = False) -> AsyncIterator[tuple[int, StreamDelta | RequestOutput]]:
        """(prompt index, StreamDelta | final RequestOutput) for every prompt; engine request ids are
        f"{request_id}-{i}". Closing this iterator aborts whatever is still running."""
        rids = [f"{request_id}-{i}" for i in range(len(prompts))]
        if stream_logprobs and params.logprobs is not None:
            for rid in rids:
                self._lp_sinks[rid] = defaultdict(deque)
        try:
            source = self._single(prompts[0], params, rids[0]) if len(prompts) == 1 else \
                self._merge(prompts, params, rids)
            async with aclosing(source) as pairs:  # closing us closes the engine streams at once
                async for pair in pairs:
                    yield pair
        finally:
            for rid in rids:
                self._lp_sinks.pop(rid, None)

    async def _single(self, prompt, params, rid):
        async with aclosing(self.generate(prompt, params, rid)) as items:
            async for item in items:
                yield 0, item

    async def _merge(self, prompts, params, rids):
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(i: int):
            try:
                async with aclosing(self.generate(prompts[i], params, rids[i])) as items:
                    async for item in items:
                        queue.put_nowait((i, item))
                queue.put_nowait((i, done))
            except Exception as e:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait((i, e))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(prompts))]
        try:
            left = len(tasks)
            while left:
                i, item = await queue.get()
                if item is done:
                    left -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

"""AsyncLLM: the engine stepping in a background thread, streaming to asyncio consumers.

Every engine mutation happens on the engine thread (commands arrive through a queue), so requests
from many clients share continuous batching safely. A consumer that stops listening (a client
disconnect, a cancelled task) aborts its request and its pages and slots are freed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from h1r.engine.llm_engine import LLMEngine
from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingParams


@dataclass
class StreamDelta:
    index: int  # sample index
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None = None


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    first_token_at: float | None = None


class AsyncLLM:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cmds: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="h1r-engine", daemon=True)
        self._thread.start()
        self.failed_steps = 0

    # ---- engine thread ----------------------------------------------------------------------------
    def _loop(self):
        eng = self.engine
        while not self._stop.is_set():
            if not eng.has_unfinished():  # idle: sleep until a command arrives
                self._run_cmd(self._cmds.get())
            while True:  # then take every queued command before the next step
                try:
                    self._run_cmd(self._cmds.get_nowait())
                except queue.Empty:
                    break
            if self._stop.is_set():
                break
            if not eng.has_unfinished():
                continue
            try:
                updates = eng.step()
            except Exception as e:  # a failing step must not wedge the server: fail the requests in flight
                self.failed_steps += 1
                for rid in [r for r, req in eng.requests.items() if not req.finished]:
                    eng.abort_request(rid)
                    self._close(rid, error=e)
                continue
            self._dispatch(updates)

    def _run_cmd(self, cmd):
        kind, args, fut = cmd
        if not fut.set_running_or_notify_cancel():  # the caller gave up before we got to it
            return
        try:
            if kind == "add":
                rid, prompt, params, stream = args
                self.engine.add_request(rid, prompt, params)
                self._streams[rid] = stream
                fut.set_result(None)
            elif kind == "abort":
                rid = args
                if self.engine.abort_request(rid):
                    self._close(rid)
                fut.set_result(None)
            elif kind == "stop":
                for rid in [r for r, req in self.engine.requests.items() if not req.finished]:
                    self.engine.abort_request(rid)
                    self._close(rid)
                self._stop.set()
                fut.set_result(None)
        except Exception as e:
            fut.set_exception(e)

    def _dispatch(self, updates):
        finished = set()
        for u in updates:
            st = self._streams.get(u.request_id)
            if st is None:
                continue
            if st.first_token_at is None:
                st.first_token_at = time.perf_counter()
            reason = None
            if u.finished:
                req = self.engine.requests[u.request_id]
                reason = req.samples[u.index].finish_reason
            st.loop.call_soon_threadsafe(st.queue.put_nowait, StreamDelta(u.index, u.new_token_ids, u.new_text,
                                                                          u.finished, reason))
            if self.engine.requests[u.request_id].finished:
                finished.add(u.request_id)
        for rid in finished:
            self._close(rid)

    def _close(self, rid: str, error: Exception | None = None):
        st = self._streams.pop(rid, None)
        if st is None:
            self.engine.release(rid)
            return
        final = self.engine.get_output(rid) if rid in self.engine.requests else None
        self.engine.release(rid)
        st.loop.call_soon_threadsafe(st.queue.put_nowait, error if error is not None else final)

    # ---- asyncio side -----------------------------------------------------------------------------
    async def _submit(self, kind, args):
        fut: cf.Future = cf.Future()
        self._cmds.put((kind, args, fut))
        return await asyncio.wrap_future(fut)

    async def generate(self, prompt, params: SamplingParams, request_id: str | None = None
                       ) -> AsyncIterator[StreamDelta | RequestOutput]:
        """Yield StreamDeltas as tokens arrive, then the final RequestOutput. Bad parameters raise at once."""
        rid = request_id or f"req-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        try:
            await self._submit("add", (rid, prompt, params, stream))
        except asyncio.CancelledError:  # cancelled mid-add: the add may still happen, so abort after it
            self._cmds.put(("abort", rid, cf.Future()))
            raise
        done = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    done = True
                    raise item
                if item is None or isinstance(item, RequestOutput):
                    done = True
                    if item is not None:
                        yield item
                    return
                yield item
        finally:
            if not done:  # the consumer went away: abort and free its pages and slots
                self._cmds.put(("abort", rid, cf.Future()))

    async def abort(self, request_id: str) -> None:
        await self._submit("abort", request_id)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort everything in flight and stop the engine thread."""
        if not self._thread.is_alive():
            return
        fut: cf.Future = cf.Future()
        self._cmds.put(("stop", None, fut))
        try:
            fut.result(timeout=timeout)
        except cf.TimeoutError:
            self._stop.set()
        self._thread.join(timeout=timeout)

    @property
    def num_active(self) -> int:
        return len(self._streams)

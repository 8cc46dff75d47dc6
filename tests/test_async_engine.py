"""The asynchronous/streaming interface: concurrent consumers, disconnects, shutdown."""

import asyncio

import pytest

from h1r import LLM, SamplingParams
from h1r.engine.async_llm import AsyncLLM, StreamDelta
from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingError
from tests.engine_fixtures import make_model_dir


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("m"))
    return LLM(str(d), dtype="float32", max_model_len=256, cache_memory=32 << 20, page_size=8)


def test_streams_match_offline_generation(llm):
    prompts = [[11, 12, 13], [20, 21, 22, 23, 24], [30] * 17]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    offline = [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]
    engine = AsyncLLM(llm.engine)

    async def consume(p):
        toks, final = [], None
        async for item in engine.generate(p, sp):
            if isinstance(item, StreamDelta):
                toks += item.token_ids
            else:
                final = item
        return toks, final

    async def main():
        return await asyncio.gather(*(consume(p) for p in prompts))

    try:
        results = asyncio.run(main())
    finally:
        engine.shutdown()
    for (toks, final), ref in zip(results, offline):
        assert toks == ref and isinstance(final, RequestOutput) and final.outputs[0].token_ids == ref
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and not llm.engine.requests


def test_disconnect_aborts_and_frees(llm):
    engine = AsyncLLM(llm.engine)
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=200, ignore_eos=True)

    def bad_params():
        p = SamplingParams()
        p.top_p = 0.0  # bypasses __post_init__, caught by the engine's validate()
        return p

    async def main():
        got = 0
        gen = engine.generate([11, 12, 13, 14], sp)
        async for item in gen:
            got += 1
            if got == 5:
                break
        await gen.aclose()
        for _ in range(100):
            if engine.num_active == 0 and not llm.engine.has_unfinished():
                break
            await asyncio.sleep(0.02)
        with pytest.raises(SamplingError, match="top_p"):
            async for _ in engine.generate([11], bad_params()):
                pass

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]


def test_shutdown_aborts_in_flight(llm):
    engine = AsyncLLM(llm.engine)
    sp = SamplingParams(temperature=1.0, max_tokens=240, ignore_eos=True)
    reasons = []

    async def main():
        async def consume():
            async for item in engine.generate([11, 12], sp):
                if isinstance(item, RequestOutput):
                    reasons.append(item.outputs[0].finish_reason)
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert reasons == ["abort"]
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"]


def test_cancel_during_add_does_not_wedge_the_engine(llm):
    engine = AsyncLLM(llm.engine)
    sp = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)

    async def consume():
        async for _ in engine.generate([11, 12, 13], sp):
            pass

    async def main():
        for _ in range(20):  # cancel at many different points, including inside the add
            t = asyncio.create_task(consume())
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        toks = []
        async for item in engine.generate([11, 12, 13], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)):
            if isinstance(item, StreamDelta):
                toks += item.token_ids
        return toks

    try:
        assert len(asyncio.run(asyncio.wait_for(main(), 60))) == 5  # the engine thread survived
        for _ in range(100):
            if not llm.engine.has_unfinished():
                break
            import time
            time.sleep(0.05)
    finally:
        engine.shutdown()
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]

"""Disconnects and shutdown: a client that leaves (streaming, non-streaming, DeepConf) has its engine work
aborted and every page and slot freed; SIGTERM with requests in flight finishes or aborts them and
the process exits 0."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from h1r import LLM
from h1r.serve.app import ServeConfig, build_app
from h1r.serve.metrics import parse_text
from h1r.serve.server import BackgroundServer, free_port
from tests.engine_fixtures import make_model_dir

MSG = [{"role": "user", "content": "w1 w2"}]
LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 1.0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve-life"))


def slow_steps(llm, seconds=0.005):
    """Each engine step takes at least `seconds`: a 200-token request then outlasts the clients' short read
    timeouts on any machine (on a fast one the tiny model answered inside 0.4 s and nothing disconnected)."""
    step = llm.engine.step

    def slow():
        time.sleep(seconds)
        return step()

    llm.engine.step = slow
    return llm


@pytest.fixture(scope="module")
def srv(model_dir):
    llm = slow_steps(LLM(str(model_dir), dtype="float32", max_model_len=256, cache_memory=16 << 20, page_size=8))
    with BackgroundServer(build_app(llm, ServeConfig(served_model_name="tiny"))) as bg:
        yield bg, llm


def wait_all_free(llm, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        u = llm.engine.cache_usage()
        if u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"] and not llm.engine.requests:
            return u
        time.sleep(0.05)
    raise AssertionError(f"cache not freed: {llm.engine.cache_usage()}, requests {list(llm.engine.requests)}")


def aborted(llm) -> int:
    return llm.engine.stats.finished.get("abort", 0)


def test_disconnect_mid_stream_frees_every_page_and_slot(srv):
    bg, llm = srv
    before = aborted(llm)
    with httpx.Client(base_url=bg.url, timeout=30) as http:
        for path, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "w1 w2"})):
            with http.stream("POST", path, json={**body, **LONG, "n": 3, "stream": True}) as r:
                assert r.status_code == 200
                events = 0
                for line in r.iter_lines():
                    events += line.startswith("data: ")
                    if events == 8:
                        break  # leave mid-stream: closing the response drops the connection
            u = llm.engine.cache_usage()
            assert u["pages_free"] < u["pages_total"] or llm.engine.requests  # it was still running
            wait_all_free(llm)
    assert aborted(llm) - before == 6  # 2 requests x n=3 samples, none ran to max_tokens
    m = parse_text(httpx.get(bg.url + "/metrics").text)
    assert m["h1r_client_disconnects_total"] >= 2 and m["h1r_cache_pages_used"] == 0


def test_disconnect_while_waiting_for_a_non_streamed_answer_frees_everything(srv):
    bg, llm = srv
    before, tokens_before = aborted(llm), llm.engine.stats.generated_tokens
    for path, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "w1 w2"})):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(bg.url + path, json={**body, **LONG, "n": 2}, timeout=httpx.Timeout(30, read=0.4))
        wait_all_free(llm)
    assert aborted(llm) - before == 4
    assert llm.engine.stats.generated_tokens - tokens_before < 4 * 200


def test_disconnect_during_deepconf_stops_the_vote(srv):
    bg, llm = srv
    body = {"messages": MSG, "max_tokens": 100, "deepconf": {"budget": 256, "warmup": 16, "window": 8}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(bg.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    wait_all_free(llm)
    time.sleep(0.5)  # the DeepConf loop must not start another batch
    assert not llm.engine.requests and bg.server.started


def test_cancel_while_the_request_is_being_added_keeps_the_engine_alive(model_dir):
    """AsyncLLM alone loses its engine thread here (it sets the result of a future the cancel already
    cancelled); ServingEngine shields the add and aborts the request once it lands."""
    import asyncio

    from h1r import SamplingParams
    from h1r.serve.engine_client import ServingEngine

    llm = LLM(str(model_dir), dtype="float32", max_model_len=256, cache_memory=16 << 20, page_size=8)
    eng = ServingEngine(llm.engine)

    async def consume(prompt, n):
        async for _ in eng.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True)):
            pass

    async def main():
        busy = asyncio.create_task(consume([11] * 150, 100))  # a long prefill keeps the engine thread busy
        await asyncio.sleep(0.05)
        for _ in range(5):
            t = asyncio.create_task(consume([12, 13], 50))
            await asyncio.sleep(0.001)  # the add is queued behind the running step
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        await asyncio.wait_for(busy, 60)
        await asyncio.wait_for(consume([14], 3), 30)  # still serving

    try:
        asyncio.run(main())
        assert eng.alive
        wait_all_free(llm)
    finally:
        eng.shutdown()


def _serve_subprocess(model_dir, port, grace):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("H1R_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "h1r", "serve", "--model", str(model_dir), "--port", str(port), "--max-model-len",
         "1024", "--shutdown-grace", str(grace), "--served-model-name", "tiny", "--dtype", "float32",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_healthy(proc, url, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def test_sigterm_with_requests_in_flight_exits_cleanly(model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve_subprocess(model_dir, port, grace=2)
    try:
        _wait_healthy(proc, url)
        results = {}
        streaming = threading.Event()

        def long_stream():
            reasons, done = [], False
            body = {"messages": MSG, "max_tokens": 1000, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        streaming.set()
                        reasons += [c["finish_reason"] for c in json.loads(line[6:])["choices"] if c["finish_reason"]]
            results["stream"] = (r.status_code, reasons, done)

        def long_plain():
            r = httpx.post(url + "/v1/completions", json={"prompt": "w1", "max_tokens": 1000, "ignore_eos": True},
                           timeout=60)
            results["plain"] = (r.status_code, r.json())

        def short_plain():
            r = httpx.post(url + "/v1/completions", json={"prompt": "w3", "max_tokens": 40, "ignore_eos": True},
                           timeout=60)
            results["short"] = (r.status_code, r.json())

        threads = [threading.Thread(target=f) for f in (long_stream, long_plain)]
        for t in threads:
            t.start()
        assert streaming.wait(30)
        short = threading.Thread(target=short_plain)
        short.start()
        deadline = time.monotonic() + 30
        while parse_text(httpx.get(url + "/metrics").text)["h1r_requests_in_flight"] < 3:  # all three running
            assert time.monotonic() < deadline and "short" not in results
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        for t in threads + [short]:
            t.join(10)
        out = proc.stdout.read()
        assert rc == 0, out
        assert "Traceback" not in out, out
        status, reasons, done = results["stream"]
        assert status == 200 and done and reasons == ["abort"]  # 1000 tokens take longer than the 2 s grace
        status, body = results["plain"]
        assert status == 503 and body["error"]["code"] == "shutdown"
        status, body = results["short"]
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"  # finished within the grace
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

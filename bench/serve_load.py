"""Load test of `h1r serve` on loopback: N requests from C concurrent clients, a mix of chat and
completions, streaming and not, of which 10% are malformed and 10% hang up mid-stream.

Checks (exit 1 if any fails): no 5xx and no transport error for a valid request, a 4xx for every
malformed one, and, once the load is over, no request in flight and every cache page and state slot
free (read from the server's /metrics); then SIGTERM, exit code 0. Prints and writes latency
percentiles and throughput; with --baseline also the engine alone doing the valid requests' work
offline, all submitted at once (absolute CPU figures on a shared machine are noise: the load average
is recorded with them).

    python bench/serve_load.py [--requests 500] [--clients 32] [--out bench/results/serve_load.json]
    python bench/serve_load.py --url http://127.0.0.1:8000     # an already running server (no model made)

Without --url it writes a random `tiny`-preset checkpoint with the test tokenizer and starts
`h1r serve` on it in a subprocess (CPU, float32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h1r.serve.metrics import parse_text  # noqa: E402
from h1r.serve.server import free_port  # noqa: E402

WORDS = [f"w{i}" for i in range(200)]


def make_model(d: Path) -> None:
    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset
    from h1r.tokenizer import load_tokenizer
    from tests.helpers import tiny_tokenizer_dir

    tiny_tokenizer_dir(d / "tok")
    tok = load_tokenizer(d / "tok")
    save_model(init_model(preset("tiny", vocab_size=tok.vocab_size), seed=0), d / "model", tokenizer=tok)


def start_server(model: Path, port: int, max_model_len: int, max_num_seqs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "h1r", "serve", "--model", str(model), "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--served-model-name",
           "tiny", "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "H1R_API_KEY"}
    return subprocess.Popen(cmd, env=env)


async def wait_healthy(url: str, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            try:
                if (await c.get(url + "/health", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not become healthy")


# ---- the workload ---------------------------------------------------------------------------------------
def malformed(i: int, max_model_len: int) -> tuple[str, dict]:
    """(path, httpx kwargs) of the i-th kind of client mistake."""
    kinds = [
        ("/v1/chat/completions", {"content": b'{"messages": [{"role": "user", "content": "w1"}', }),
        ("/v1/completions", {"json": {"prompt": "w1", "temperature": "hot"}}),
        ("/v1/completions", {"json": {"prompt": "w1", "temperature": -1}}),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "w1"}], "top_p": 2}}),
        ("/v1/completions", {"json": {"prompt": "w1", "n": 0}}),
        ("/v1/completions", {"json": {"prompt": "w1", "logprobs": 25}}),
        ("/v1/completions", {"json": {"prompt": " ".join(["w1"] * (max_model_len + 10))}}),
        ("/v1/chat/completions", {"json": {"messages": "hello"}}),
        ("/v1/completions", {"json": {"model": "no-such-model", "prompt": "w1"}}),
        ("/v1/completions", {"content": b'{"prompt": "' + b"w1 " * 400_000 + b'"}'}),  # > 1 MiB
        ("/v1/chat/completions", {"content": b"[]"}),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "w1"}], "top_logprobs": 3}}),
    ]
    path, kw = kinds[i % len(kinds)]
    return path, {**kw, "headers": {"content-type": "application/json"}}


def plan(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    kinds = ["malformed"] * (n // 10) + ["disconnect"] * (n // 10)
    kinds += ["valid"] * (n - len(kinds))
    rng.shuffle(kinds)
    jobs = []
    for i, kind in enumerate(kinds):
        chat = rng.random() < 0.5
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(4, 40)))
        body = {"max_tokens": rng.randint(8, 32), "temperature": 0.8, "seed": i,
                "ignore_eos": rng.random() < 0.5, "n": 2 if rng.random() < 0.15 else 1}
        if kind == "disconnect":
            body.update(max_tokens=128, ignore_eos=True, n=1)
        body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
        stream = kind == "disconnect" or rng.random() < 0.5
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        jobs.append({"i": i, "kind": kind, "path": "/v1/chat/completions" if chat else "/v1/completions",
                     "body": body, "stream": stream, "hang_up_after": rng.randint(1, 6)})
    return jobs


async def run_job(client: httpx.AsyncClient, job: dict, max_model_len: int) -> dict:
    t0 = time.perf_counter()
    res = {"kind": job["kind"], "stream": job["stream"], "path": job["path"]}
    try:
        if job["kind"] == "malformed":
            path, kw = malformed(job["i"], max_model_len)
            r = await client.post(path, **kw)
            res["status"] = r.status_code
            res["error_object"] = set(r.json().get("error", {})) == {"message", "type", "param", "code"}
        elif job["stream"]:
            events, first = 0, None
            async with client.stream("POST", job["path"], json=job["body"]) as r:
                res["status"] = r.status_code
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events += 1
                    if first is None:
                        first = time.perf_counter() - t0
                    if line.startswith('data: {"error"'):
                        res["stream_error"] = line
                    if job["kind"] == "disconnect" and events >= job["hang_up_after"]:
                        break  # leaving the block closes the connection mid-stream
                    if line == "data: [DONE]":
                        res["done"] = True
            res["ttft"] = first
        else:
            r = await client.post(job["path"], json=job["body"])
            res["status"] = r.status_code
    except httpx.HTTPError as e:
        res["status"], res["transport_error"] = 0, f"{type(e).__name__}: {e}"
    res["latency"] = time.perf_counter() - t0
    return res


async def load(url: str, jobs: list[dict], clients: int, max_model_len: int) -> tuple[list[dict], float]:
    queue: asyncio.Queue = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), limits=limits) as client:
        async def worker():
            while not queue.empty():
                results.append(await run_job(client, queue.get_nowait(), max_model_len))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - t0


async def settle(url: str, timeout: float = 30) -> dict:
    """Wait until nothing is in flight; returns the final metrics."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            m = parse_text((await c.get(url + "/metrics")).text)
            idle = m["h1r_requests_in_flight"] == 0 and m["h1r_cache_pages_used"] == 0 \
                and m["h1r_cache_slots_used"] == 0
            if idle or time.monotonic() > deadline:
                return m
            await asyncio.sleep(0.1)


def engine_baseline(model: Path, jobs: list[dict], args) -> dict:
    """The valid requests' work done by the engine alone, offline, in one `generate` call (after the
    server has exited, same machine)."""
    from h1r import LLM, SamplingParams

    llm = LLM(str(model), dtype="float32", max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    tok, prompts, params = llm.tokenizer, [], []
    for j in jobs:
        if j["kind"] != "valid":
            continue
        b = j["body"]
        chat = "messages" in b
        prompts.append(tok.apply_chat_template(b["messages"], tokenize=True) if chat else tok.encode(b["prompt"]))
        params.append(SamplingParams(n=b["n"], temperature=b["temperature"], seed=b["seed"], max_tokens=b["max_tokens"],
                                     ignore_eos=b["ignore_eos"]))
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for r in outs for o in r.outputs)
    return {"requests": len(prompts), "generated_tokens": tokens, "seconds": round(dt, 3),
            "generated_tokens_per_s": round(tokens / dt, 1)}


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 4) if xs else None


def summarize(results, wall, before, after, args) -> dict:
    valid = [r for r in results if r["kind"] == "valid"]
    bad = [r for r in results if r["kind"] == "malformed"]
    gone = [r for r in results if r["kind"] == "disconnect"]
    ok = [r for r in valid if r["status"] == 200 and "stream_error" not in r and (not r["stream"] or r.get("done"))]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["stream"] and r.get("ttft") is not None]
    server_5xx = sum(v for k, v in after.items() if k.startswith("h1r_requests_total") and 'status="5' in k)
    gen_tokens = after["h1r_generation_tokens_total"] - before.get("h1r_generation_tokens_total", 0)
    checks = {
        "valid_all_ok": len(ok) == len(valid),
        "no_5xx": server_5xx == 0 and not any(500 <= r["status"] < 600 for r in results),
        "malformed_all_4xx": all(400 <= r["status"] < 500 and r["error_object"] for r in bad),
        "cache_free_at_end": after["h1r_cache_pages_used"] == 0 and after["h1r_cache_slots_used"] == 0,
        "nothing_in_flight_at_end": after["h1r_requests_in_flight"] == 0,
    }
    return {
        "requests": len(results), "clients": args.clients, "wall_s": round(wall, 3),
        "counts": {"valid": len(valid), "valid_ok": len(ok), "malformed": len(bad),
                   "malformed_4xx": sum(400 <= r["status"] < 500 for r in bad),
                   "malformed_statuses": sorted({r["status"] for r in bad}),
                   "disconnected": len(gone),
                   "server_counted_disconnects": after["h1r_client_disconnects_total"]
                   - before.get("h1r_client_disconnects_total", 0),
                   "valid_failures": [r for r in valid if r not in ok][:5]},
        "latency_s": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "ttft_stream_s": {"p50": pct(ttft, 50), "p99": pct(ttft, 99)},
        "throughput": {"valid_requests_per_s": round(len(ok) / wall, 2),
                       "generated_tokens_per_s": round(gen_tokens / wall, 1), "generated_tokens": int(gen_tokens)},
        "cache_at_end": {k: after[k] for k in ("h1r_cache_pages_used", "h1r_cache_pages_total", "h1r_cache_slots_used",
                                              "h1r_cache_slots_total", "h1r_requests_in_flight")},
        "checks": checks,
    }


async def amain(args) -> int:
    proc, tmp = None, None
    url = args.url
    try:
        if url is None:
            tmp = tempfile.TemporaryDirectory()
            make_model(Path(tmp.name))
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(Path(tmp.name) / "model", port, args.max_model_len, args.max_num_seqs)
        await wait_healthy(url, proc)
        async with httpx.AsyncClient() as c:
            before = parse_text((await c.get(url + "/metrics")).text)
        jobs = plan(args.requests, args.seed)
        load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
        results, wall = await load(url, jobs, args.clients, args.max_model_len)
        after = await settle(url)
        report = summarize(results, wall, before, after, args)
        report["setup"] = {"model": "tiny preset, random weights, float32, CPU" if args.url is None else args.url,
                           "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
                           "python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(),
                           "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        if proc is not None:  # stop the server before measuring the engine alone
            proc.send_signal(signal.SIGTERM)
            report["server_exit_code_after_sigterm"] = proc.wait(timeout=60)
            report["checks"]["server_exit_code_0"] = report["server_exit_code_after_sigterm"] == 0
            proc = None
            if args.baseline:
                report["engine_offline_baseline"] = engine_baseline(Path(tmp.name) / "model", jobs, args)
                report["throughput"]["server_over_engine_tokens_per_s"] = round(
                    report["throughput"]["generated_tokens_per_s"]
                    / report["engine_offline_baseline"]["generated_tokens_per_s"], 3)
        print(json.dumps({k: report[k] for k in ("counts", "latency_s", "ttft_stream_s", "throughput", "checks",
                                                 "engine_offline_baseline") if k in report}, indent=2, default=str))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        return 0 if all(report["checks"].values()) else 1
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
                print(f"server exited with {rc} after SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--url", default=None, help="load an already running server instead of starting one")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", action="store_true",
                    help="after the server exits, time the engine alone (offline) on the valid requests' work")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    return asyncio.run(amain(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

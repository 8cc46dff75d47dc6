"""Fast inference on one GPU: the Falcon-H1-7B shape with random bf16 weights.

    python bench/decode_gpu.py [--quick] [--scenarios a,b,c,d,m] [--out bench/results/decode_gpu.json]

Scenarios (issue 4): (a) one stream, 1k prompt / 1k generated; (b) 64 concurrent, 1k in / 1k out;
(c) 64 concurrent, 512 in / 8k out; (d) single-sequence prefill of 32k and 128k tokens; (m) whether
64 sequences of 32k context fit in memory. For each: output tok/s end-to-end and in pure-decode
steps, achieved GB/s against the bytes each decode step must move (weights + Mamba state read and
write + K/V read + logits) and against the copy bandwidth measured in the same run, peak memory;
and transformers' `generate` on the same weights where it runs (a, and b with short prompts).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

GB = 1e9


class NullTokenizer:
    """Benchmarks feed token ids; nothing needs text."""

    chat_template = None
    stop_token_ids: list[int] = []

    def decode(self, ids, skip_special_tokens=False):
        return ""

    def encode(self, text):
        raise ValueError("NullTokenizer cannot encode")


def copy_rate(dev) -> float:
    """Bytes/s of a 2 GB device-to-device copy (read + write): the practical bandwidth ceiling."""
    x = torch.empty(int(2 * GB) // 2, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 2 * n / (time.perf_counter() - t)


def ceilings(dev):
    bw = copy_rate(dev)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    flops = 2 * 8192 ** 3 * 10 / (time.perf_counter() - t)
    return bw, flops


def step_bytes(cfg, batch, mean_ctx, state_bytes=2, kv_bytes=2, w_bytes=2):
    """Bytes one decode step must move (reference: ../shared/reference/bytes_model.py)."""
    streamed = (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) * w_bytes  # all but the embedding table
    L = cfg.num_hidden_layers
    ssm = L * cfg.mamba_n_heads * cfg.ssm_head_dim * cfg.mamba_d_state * state_bytes * 2
    conv = L * cfg.conv_dim * (cfg.mamba_d_conv - 1) * 2 * 2
    kv = mean_ctx * cfg.kv_bytes_per_token(kv_bytes)
    return streamed + batch * (ssm + conv + kv + cfg.vocab_size * 4)


def drive(llm, prompts, max_tokens):
    """Run requests to completion, timing every engine step; split prefill-bearing and pure-decode steps."""
    from h1r import SamplingParams

    eng = llm.engine
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    ids = [f"b{time.time_ns()}-{i}" for i in range(len(prompts))]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for rid, p in zip(ids, prompts):
        eng.add_request(rid, p, sp)
    decode_time = decode_tokens = 0.0
    ctx_sum = ctx_n = 0
    first_decode = None
    prefill_steps = []  # (prefill tokens, decode tokens, ms) of every step that prefilled
    while eng.has_unfinished():
        pre = eng.stats.prefill_tokens
        dec = eng.stats.decode_tokens
        gen = eng.stats.generated_tokens
        t = time.perf_counter()
        eng.step()
        dt = time.perf_counter() - t
        if eng.stats.prefill_tokens != pre:
            prefill_steps.append((eng.stats.prefill_tokens - pre, eng.stats.decode_tokens - dec, round(dt * 1e3, 1)))
        if eng.stats.prefill_tokens == pre:
            decode_time += dt
            decode_tokens += eng.stats.generated_tokens - gen
            running = eng.scheduler.running
            ctx_sum += sum(s.num_tokens for s in running)
            ctx_n += len(running)
            first_decode = first_decode or t
    total = time.perf_counter() - t0
    n = sum(len(eng.get_output(r).outputs[0].token_ids) for r in ids)
    for r in ids:
        eng.release(r)
    return {"seconds": total, "tokens": n, "tok_s": n / total, "decode_seconds": decode_time,
            "decode_tok_s": decode_tokens / max(decode_time, 1e-9),
            "mean_context": ctx_sum / max(ctx_n, 1), "prefill_steps": prefill_steps,
            "prefill_seconds": (first_decode - t0) if first_decode else total}


def replay_ms(graph, reps=30):
    """Milliseconds per replay of a captured CUDA graph, replayed back to back (no host work between)."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def time_graph(fn, calls=10, reps=50):
    """Microseconds per call of fn, captured `calls` times in one CUDA graph (as the engine runs it)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (Triton compiles, cuBLAS picks) off the capture
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return replay_ms(graph, reps) * 1e3 / calls


def replay_times(llm, sizes, reps=30):
    """Milliseconds per decode step with no host work: replay each bucket's CUDA graph back to back."""
    graphs = llm.engine.runner.graphs
    return {bs: replay_ms(graphs[bs][0], reps) for bs in sizes if bs in graphs}


def profile_step(llm, bs):
    """Top CUDA kernels of one eager decode step at batch `bs` (the graph runs the same kernels)."""
    from torch.profiler import ProfilerActivity, profile

    runner = llm.engine.runner
    args = runner._graph_args(bs)
    fast = runner.fast
    fast.logits(fast.hidden(*args))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fast.logits(fast.hidden(*args))
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18)
    print(table, flush=True)
    return table


def profile_prefill(llm, lengths):
    """Top CUDA kernels of one prefill step made of segments of the given lengths (fresh sequences)."""
    from torch.profiler import ProfilerActivity, profile

    from h1r.engine.context import PrefillSegment, StepBatch

    eng, runner = llm.engine, llm.engine.runner
    dev, ps = runner.fast.device, runner.page_size
    segs, pages, ids, pos, kv, off = [], [], [], [], [], 0
    for n in lengths:
        need = -(-n // ps)
        pg = [eng.scheduler.pages.allocate() for _ in range(need)]
        pages += pg
        slot = eng.scheduler.slots.allocate()
        eng.cache.zero_slot(slot)
        segs.append(PrefillSegment(off, n, slot, torch.tensor(pg, device=dev), 0))
        p = torch.arange(n)
        pos.append(p)
        kv.append(torch.tensor(pg)[p // ps] * ps + p % ps)
        ids.append(torch.randint(10, 1000, (n,)))
        off += n
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    batch = StepBatch(torch.cat(ids).to(dev), torch.cat(pos).to(dev), torch.cat(kv).to(dev), empty,
                      empty.view(0, 1), empty, segs)
    plan = runner._plan(batch)
    run = lambda: runner.fast.hidden(batch.input_ids, batch.positions, batch.kv_index, eng.cache, empty,
                                     empty.view(0, 1), empty, plan)
    run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    run()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        run()
        torch.cuda.synchronize()
    print(f"prefill step {lengths[:3]}x{len(lengths)}: {secs * 1000:.0f} ms", flush=True)
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=30,
                                                               max_name_column_width=40, max_shapes_column_width=70)
    print(table, flush=True)
    for p in pages:
        eng.scheduler.pages.release(p)
    for sg in segs:
        eng.scheduler.slots.release(sg.slot)
    return {"lengths": lengths, "seconds": secs, "table": table}


def hf_generate(model, cfg, dev, batch, prompt_len, new_tokens):
    """transformers' generate on the same weights; at too large a batch its pure-PyTorch Mamba scan runs
    out of memory (it materialises a [batch, chunks, 256, 256, heads, d_state] tensor), so halve the
    batch until it fits and say so."""
    while batch >= 1:
        try:
            return _hf_generate(model, cfg, dev, batch, prompt_len, new_tokens)
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            print(f"transformers: out of memory at batch {batch}", flush=True)
            batch //= 2
    return {"error": "out of memory at batch 1"}


def _hf_generate(model, cfg, dev, batch, prompt_len, new_tokens):
    import transformers

    hcfg = transformers.FalconH1Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                          if k not in ("architectures", "model_type", "extra", "dtype")})
    with torch.device(dev):
        hf = transformers.FalconH1ForCausalLM(hcfg).to(torch.bfloat16).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(10, cfg.vocab_size - 1, (batch, prompt_len), device=dev)
    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t, out.shape[1] - prompt_len

    try:
        with torch.no_grad():
            hf.generate(ids[:, :16], max_new_tokens=2, do_sample=False, pad_token_id=0)
            t1, _ = timed(1)  # ~ the prefill
            dt, n = timed(new_tokens)
    finally:
        del hf
        gc.collect()
        torch.cuda.empty_cache()
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "seconds": dt,
            "tok_s": n * batch / dt, "decode_tok_s": (n - 1) * batch / max(dt - t1, 1e-9),
            "version": transformers.__version__}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", default="a,b,c,d,m")
    ap.add_argument("--quick", action="store_true", help="short runs to validate the script")
    ap.add_argument("--preset", default="falcon-h1-7b")
    ap.add_argument("--state-dtype", default="bfloat16")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--repeat-b", type=int, default=1, help="run (b) this many times on one engine (1st: cold)")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of one batch-64 decode step")
    ap.add_argument("--batched-tokens", type=int, default=16384,
                    help="the engines' token budget per step (max_num_batched_tokens): the prefill chunk size")
    ap.add_argument("--out", default="bench/results/decode_gpu.json")
    args = ap.parse_args(argv)
    if args.repeat_b < 1:
        ap.error(f"--repeat-b must be at least 1, got {args.repeat_b}")
    if args.batched_tokens < 1:
        ap.error(f"--batched-tokens must be at least 1, got {args.batched_tokens}")
    from h1r import LLM
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from h1r.model import kernels

    if not kernels.fla_available():  # the prefill rows would time the reference scan
        ap.error("fla-core is not installed: the engine's prefill would run the reference SSD scan; install it "
                 "first (the wheel carried to the device)")

    dev = torch.device("cuda")
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "preset": args.preset,
           "max_num_batched_tokens": args.batched_tokens,
           "ssm_state_dtype": args.state_dtype, "quick": args.quick, "scenarios": {}}
    bw, flops = ceilings(dev)
    res["copy_GBps"], res["matmul_TFLOPs"] = bw / GB, flops / 1e12
    print(f"ceilings: copy {bw / GB:.0f} GB/s (read+write), bf16 matmul {flops / 1e12:.0f} TFLOP/s", flush=True)
    cfg = preset(args.preset)
    t = time.perf_counter()
    model = init_model(cfg, seed=0, device=dev, dtype=torch.bfloat16)
    res["init_seconds"] = time.perf_counter() - t
    sc = set(args.scenarios.split(","))
    q = args.quick
    hf = {}
    if not args.no_hf:  # the peer first, while memory is free
        if "a" in sc:
            hf["a"] = hf_generate(model, cfg, dev, 1, 1024 if not q else 128, 32 if not q else 8)
        if "b" in sc:  # batch 64 runs out of memory in its pure-PyTorch scan (96 GiB intermediate): start at 32
            hf["b"] = hf_generate(model, cfg, dev, 32, 128, 3)
        print("transformers:", {k: (v.get("batch"), round(v.get("tok_s", 0), 1), round(v.get("decode_tok_s", 0), 1))
                                 for k, v in hf.items()}, flush=True)
    res["transformers"] = hf
    g = torch.Generator().manual_seed(1)

    def save():  # after every scenario, so a run cut short keeps what it measured
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    def make_llm(max_seqs, max_len, batched=None):
        batched = batched or args.batched_tokens
        t = time.perf_counter()
        llm = LLM(model, NullTokenizer(), device=dev, max_num_seqs=max_seqs, max_model_len=max_len,
                  max_num_batched_tokens=batched, ssm_state_dtype=args.state_dtype, keep_reference_model=True,
                  gpu_memory_utilization=0.92)
        return llm, time.perf_counter() - t

    def prompts(n, length):
        return torch.randint(10, cfg.vocab_size - 1, (n, length), generator=g).tolist()

    def record(name, r, batch, hf_key=None):
        sb = step_bytes(cfg, batch, r["mean_context"], 2 if args.state_dtype == "bfloat16" else 4)
        r["bytes_per_decode_step"] = sb
        step_s = batch / r["decode_tok_s"] if r["decode_tok_s"] else float("nan")
        r["decode_GBps"] = sb / step_s / GB
        r["roofline_fraction"] = r["decode_GBps"] * GB / bw
        r["roofline_tok_s"] = batch / (sb / bw)
        r["peak_memory_GB"] = torch.cuda.max_memory_allocated() / GB
        if hf_key and "tok_s" in hf.get(hf_key, {}):
            r["vs_transformers"] = r["tok_s"] / hf[hf_key]["tok_s"]
            r["decode_vs_transformers"] = r["decode_tok_s"] / hf[hf_key]["decode_tok_s"]
        res["scenarios"][name] = r
        save()
        print(f"{name}: {r['tok_s']:.0f} tok/s end-to-end, {r['decode_tok_s']:.0f} decode-only, "
              f"{r['decode_GBps']:.0f} GB/s = {100 * r['roofline_fraction']:.0f}% of copy bandwidth, "
              f"peak {r['peak_memory_GB']:.1f} GB", flush=True)

    if "a" in sc or "b" in sc:
        llm, t_init = make_llm(64, 2048 + 64)
        res["engine_init_seconds"] = t_init
        res["graph_replay_ms"] = replay_times(llm, [1, 8, 32, 64])
        print("pure GPU decode step (graph replay), ms:", {k: round(v, 2) for k, v in res["graph_replay_ms"].items()},
              flush=True)
        if args.profile:
            res["profile_b64"] = profile_step(llm, 64)
            res["profile_prefill_8x2k"] = profile_prefill(llm, [2048] * 8)
            res["profile_prefill_16x1k"] = profile_prefill(llm, [1024] * 16)
        if "a" in sc:
            n = 1024 if not q else 128
            torch.cuda.reset_peak_memory_stats()
            r = drive(llm, prompts(1, n), n)
            record("a_1x1k_1k", r, 1, "a")
        if "b" in sc:
            n = 1024 if not q else 128
            for i in range(args.repeat_b):  # later runs: the same engine again (nothing left to compile)
                torch.cuda.reset_peak_memory_stats()
                r = drive(llm, prompts(64, n), n)
                record("b_64x1k_1k" + (f"_run{i + 1}" if i else ""), r, 64, "b")
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    if "c" in sc:
        out = 8192 if not q else 256
        llm, _ = make_llm(64, 512 + out + 64)
        torch.cuda.reset_peak_memory_stats()
        r = drive(llm, prompts(64, 512), out)
        record("c_64x512_8k", r, 64)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    if "d" in sc:
        lens = [32768, 131072] if not q else [4096, 16384]
        llm, _ = make_llm(1, lens[-1] + 64, batched=16384)
        d = {}
        for n in lens:
            torch.cuda.reset_peak_memory_stats()
            r = drive(llm, prompts(1, n), 1)
            lin = 2 * (cfg.num_parameters() - 2 * cfg.vocab_size * cfg.hidden_size) * n
            attn = 2 * n * n * cfg.num_attention_heads * cfg.attn_head_dim * cfg.num_hidden_layers
            d[str(n)] = {"seconds": r["seconds"], "tok_s": n / r["seconds"], "flops": lin + attn,
                         "TFLOPs": (lin + attn) / r["seconds"] / 1e12,
                         "fraction_of_matmul_rate": (lin + attn) / r["seconds"] / flops,
                         "peak_memory_GB": torch.cuda.max_memory_allocated() / GB}
            print(f"prefill {n}: {r['seconds']:.2f} s, {d[str(n)]['TFLOPs']:.0f} TFLOP/s "
                  f"({100 * d[str(n)]['fraction_of_matmul_rate']:.0f}% of matmul)", flush=True)
        a, b = d[str(lens[0])], d[str(lens[1])]
        d["time_ratio"] = b["seconds"] / a["seconds"]
        d["flop_ratio"] = b["flops"] / a["flops"]
        res["scenarios"]["d_prefill"] = d
        save()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    if "m" in sc:  # last: the unfused weights are dropped to make room, as LLM(path) does
        ctx = 32768
        llm = LLM(model, NullTokenizer(), device=dev, max_num_seqs=64, max_model_len=ctx + 64,
                  max_num_batched_tokens=8192, ssm_state_dtype=args.state_dtype, keep_reference_model=False,
                  gpu_memory_utilization=0.95, cuda_graphs=False)
        spec = llm.engine.cache.spec
        need = 64 * -(-(ctx + 64) // spec.page_size)
        res["scenarios"]["m_64x32k_fit"] = {"pages": spec.num_pages, "pages_needed": need, "fits": spec.num_pages >= need,
                                            "cache_GB": llm.engine.cache.nbytes / GB,
                                            "allocated_GB": torch.cuda.memory_allocated() / GB}
        print("64 x 32k fit:", res["scenarios"]["m_64x32k_fit"], flush=True)
        del llm
    save()
    return res


if __name__ == "__main__":
    main()

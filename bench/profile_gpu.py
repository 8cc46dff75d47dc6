"""Where the time goes on one GPU: the profile behind the closing notes of the GPU issues.

    WHAT=fla,dec,train python bench/profile_gpu.py      (needs fla-core; prints, writes nothing)

fla   fla-core's chunked simple-GLA SSD (its Hopper guard for fla #640 lifted for this comparison only)
      against the parallel kernels training uses: relative error and fwd+bwd milliseconds, 1.5B-deep head
      shapes (H=24, N=256, P=64) over packed documents.
dec   the top kernels of one eager decode step at batch 1 and 64 (7B shape, bf16 state), then the engine's
      host split per decode step (launch, wait for the GPU, post-process) while generating 256 tokens
      for 64 and for 1 prompt of 1k, and the graph replay time at the context reached.
train the top kernels of one 1.5B-deep SFT step of 16k packed tokens.
prefill the top kernels of one 7B prefill step of 16 fresh 1k prompts.
gaps  a CPU+CUDA trace of 24 batch-64 decode steps of the engine (7B, ~1.1k context) written to
      $OUT/decode_trace.json.gz, and the GPU's idle time between kernels per step.
"""
import sys, time, os, json
sys.path.insert(0, ".")
import torch
sys.argv = [sys.argv[0]]
from bench import decode_gpu as D, train_gpu as TG

dev = torch.device("cuda")
what = os.environ.get("WHAT", "dec,train,fla")
out = {}
if "fla" in what:
    import fla.ops.common.chunk_o as co
    from fla.ops.simple_gla import chunk_simple_gla, parallel_simple_gla
    co.TRITON_ABOVE_3_7_1 = True
    torch.manual_seed(0)
    H, K, V = 24, 256, 64
    lens = [2387, 1353, 3134, 1318, 100, 63, 64, 129]
    T = sum(lens)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=dev)
    q = torch.randn(1, T, H, K, device=dev, dtype=torch.bfloat16) * 0.1
    k = torch.randn(1, T, H, K, device=dev, dtype=torch.bfloat16) * 0.1
    v = torch.randn(1, T, H, V, device=dev, dtype=torch.bfloat16)
    g = -torch.rand(1, T, H, device=dev) * 0.2
    do = torch.randn(1, T, H, V, device=dev, dtype=torch.bfloat16)
    res = {}
    for name, fn in [("parallel", parallel_simple_gla), ("chunk", chunk_simple_gla)]:
        xs = [t.clone().requires_grad_() for t in (q, k, v, g)]
        o, _ = fn(*xs[:3], g=xs[3], scale=1.0, cu_seqlens=cu)
        o.backward(do)
        res[name] = [o.float()] + [t.grad.float() for t in xs]
        def run():
            xs = [t.clone().requires_grad_() for t in (q, k, v, g)]
            o, _ = fn(*xs[:3], g=xs[3], scale=1.0, cu_seqlens=cu)
            o.backward(do)
        run(); torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(5): run()
        torch.cuda.synchronize(); print(name, "fwd+bwd ms", (time.perf_counter() - t0) / 5 * 1e3, flush=True)
    for i, n in enumerate(["o", "dq", "dk", "dv", "dg"]):
        a, b = res["chunk"][i], res["parallel"][i]
        print("chunk vs parallel", n, ((a - b).norm() / b.norm()).item(), flush=True)
if "prefill" in what or "gaps" in what:
    from h1r import LLM
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from torch.profiler import ProfilerActivity, profile
    cfg = preset("falcon-h1-7b")
    model = init_model(cfg, seed=0, device=dev, dtype=torch.bfloat16)
    llm = LLM(model, D.NullTokenizer(), device=dev, max_num_seqs=64, max_model_len=2112, max_num_batched_tokens=16384,
              ssm_state_dtype="bfloat16", keep_reference_model=True, gpu_memory_utilization=0.92)
    if "prefill" in what:
        D.profile_prefill(llm, [1024] * 16)
    if "gaps" in what:
        from h1r import SamplingParams
        eng = llm.engine
        sp = SamplingParams(temperature=0, max_tokens=160, ignore_eos=True)
        g = torch.Generator().manual_seed(1)
        for i, p in enumerate(torch.randint(10, 1000, (64, 1024), generator=g).tolist()):
            eng.add_request(f"gap{i}", p, sp)
        while eng.stats.prefill_tokens < 64 * 1024 or eng.stats.decode_tokens < 64 * 100:
            eng.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(24):
                eng.step()
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        kern = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA)
        busy, cur_s, cur_e = 0.0, None, None
        for a, b in kern:
            if cur_e is None or a > cur_e:
                if cur_e is not None:
                    busy += cur_e - cur_s
                cur_s, cur_e = a, b
            else:
                cur_e = max(cur_e, b)
        busy += (cur_e - cur_s) if cur_e is not None else 0
        print(f"gaps: 24 steps {wall * 1e3 / 24:.2f} ms/step wall, GPU busy {busy / 1e3 / 24:.2f} ms/step "
              f"({len(kern)} device events)", flush=True)
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30), flush=True)
        if os.environ.get("OUT"):
            prof.export_chrome_trace(os.path.join(os.environ["OUT"], "decode_trace.json.gz"))
        while eng.has_unfinished():
            eng.step()
    del llm, model
    torch.cuda.empty_cache()
if "dec" in what:
    from h1r import LLM
    from h1r.checkpoint import init_model
    from h1r.config import preset
    cfg = preset("falcon-h1-7b")
    model = init_model(cfg, seed=0, device=dev, dtype=torch.bfloat16)
    llm = LLM(model, D.NullTokenizer(), device=dev, max_num_seqs=64, max_model_len=2112, max_num_batched_tokens=16384,
              ssm_state_dtype="bfloat16", keep_reference_model=True, gpu_memory_utilization=0.92)
    for bs in (1, 64):
        D.profile_step(llm, bs)
    eng = llm.engine
    T = {"launch": 0.0, "complete": 0.0, "wait": 0.0, "run": 0.0}
    orig_l, orig_c, orig_run = eng._launch_decode, eng._complete, eng.runner.run
    def launch(*a, **k):
        t = time.perf_counter(); r = orig_l(*a, **k); T["launch"] += time.perf_counter() - t; return r
    def complete(inf, u):
        t = time.perf_counter()
        if inf.event is not None: inf.event.synchronize()
        T["wait"] += time.perf_counter() - t
        orig_c(inf, u); T["complete"] += time.perf_counter() - t
    def run(*a, **k):
        t = time.perf_counter(); r = orig_run(*a, **k); T["run"] += time.perf_counter() - t; return r
    eng._launch_decode, eng._complete, eng.runner.run = launch, complete, run
    g = torch.Generator().manual_seed(1)
    for B in (64, 1):
        for key in T: T[key] = 0.0
        prompts = torch.randint(10, 1000, (B, 1024), generator=g).tolist()
        steps0 = eng.stats.steps
        r = D.drive(llm, prompts, 256)
        n = eng.stats.steps - steps0
        print(B, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}, {k: round(v / n * 1e3, 3) for k, v in T.items()}, "ms/step", n, flush=True)
        print("replay after run", D.replay_times(llm, [B]), flush=True)
    del llm, model
    torch.cuda.empty_cache()
if "train" in what:
    from h1r.config import preset
    cfg = preset("falcon-h1-1.5b-deep")
    gg = torch.Generator().manual_seed(0)
    TG.profile_step(cfg, 16384, TG.documents(16384, gg), dev)

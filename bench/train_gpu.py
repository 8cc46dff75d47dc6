"""Training speed on one GPU: one SFT step (forward, backward, AdamW) over a sequence of packed documents.

    python bench/train_gpu.py [--presets falcon-h1-0.5b,falcon-h1-1.5b-deep] [--lengths 8192,16384,32768] [--ac off,on]

H1R's path: fla's Triton causal conv, the grouped chunked SSD (h1r.model.ssd_packed) and varlen flash
attention over document boundaries, fused chunked
LM-head cross-entropy (no [tokens, vocab] logits, matmuls in bf16 on a 64-aligned vocabulary), µP
multipliers applied to the weights rather than the activations, the elementwise glue (norms, gate,
RoPE, SiLU) fused by torch.compile (by default from 16k tokens per call, falcon_h1.COMPILE_MIN_TOKENS;
this script compiles at every length it times), bf16 autocast with fp32 master weights. Each length is timed
without (SFT's default) and with per-layer activation checkpointing (`--ac`); `--eager-glue-lengths` also
times the step with the compiled glue off, `--ssd-compare-lengths` with fla's parallel SSD kernels. The
peer: transformers' FalconH1ForCausalLM (gradient checkpointing, no compiled Mamba kernels, one
document per sequence since it has no packing), where it fits.

Model FLOPs per step (what MFU counts; recomputation from checkpointing is not counted):
    6 * P_matmul * tokens                          all Linear weights incl. the LM head (embedding excluded)
  + 6 * L * Hq * hd * sum_doc n_doc^2              causal attention: 2 matmuls x n^2/2 x hd x 2 FLOPs, fwd+bwd x3
  + 6 * L * tokens * (G*Q*N + H*Q*P + 2*H*N*P)    SSD: C.B once per group, (C.B).X per head, chunk states, outputs
MFU = model FLOPs / step time / bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib
import itertools
import json
import re
import time
import traceback
import warnings
from pathlib import Path

import torch


def matmul_rate(dev) -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t)


def model_flops(cfg, docs: list[int]) -> float:
    T = sum(docs)
    D, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    p_matmul = cfg.num_parameters() - V * D - (0 if cfg.tie_word_embeddings else 0)  # LM head stays in
    if cfg.tie_word_embeddings:
        p_matmul += V * D
    attn = 6 * L * cfg.num_attention_heads * cfg.attn_head_dim * sum(n * n for n in docs)
    H, P, N, Q, G = cfg.mamba_n_heads, cfg.ssm_head_dim, cfg.mamba_d_state, cfg.mamba_chunk_size, cfg.mamba_n_groups
    ssd = 6 * L * T * (G * Q * N + H * Q * P + 2 * H * N * P)
    return 6 * p_matmul * T + attn + ssd


def documents(T: int, g: torch.Generator) -> list[int]:
    """Packed documents of 512..4096 tokens (a reasoning-trace-like spread) filling T tokens."""
    out, left = [], T
    while left > 0:
        n = min(left, int(torch.randint(512, 4097, (1,), generator=g)))
        out.append(n)
        left -= n
    return out


def sync_sites(step) -> collections.Counter:
    """Run step() once with CUDA's sync debug mode on; count each call site (the innermost frames outside
    torch) of an operation that made the host wait for the GPU."""
    sites = collections.Counter()
    shown = warnings.showwarning

    def note(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and not f.filename.endswith("warnings.py")]
        sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))] += 1

    warnings.showwarning = note
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = note
            step()
        torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = shown
    return sites


# Kernel name patterns -> what part of the step they are (first match wins), for the profile's summary.
KERNEL_CATEGORIES = [
    ("compiled glue (Triton)", r"^triton_"),
    ("attention (flash)", r"flash"),  # before GEMM: flash's kernel names carry cutlass types
    ("GEMM (cuBLAS)", r"nvjet|gemm|xmma|cutlass|cublas"),
    ("SSD (Triton)", r"^_(out|pass)_(fwd|bwd)(_cols)?_kernel"),
    ("conv", r"conv1d|^_(fwd|bwd_g4?|bwd_dx)_kernel$"),
    ("optimizer", r"adam|multi_tensor"),
    ("copies / casts", r"copy|cast|CatArrayBatched|memcpy|memset|fill"),
    ("reductions", r"reduce"),
    ("other elementwise", r"elementwise"),
]


def kernel_categories(kernels: list[tuple[str, float]]) -> dict[str, float]:
    """[(kernel name, ms per step)] -> ms per step by KERNEL_CATEGORIES, the rest as 'other', largest first."""
    out: dict[str, float] = collections.defaultdict(float)
    for name, ms in kernels:
        cat = next((c for c, pat in KERNEL_CATEGORIES if re.search(pat, name, re.IGNORECASE)), "other")
        out[cat] += ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def sft_setup(cfg, T, docs, dev, ac):
    """A fresh fp32 model (per-layer checkpointing if `ac`), its loss module and fused AdamW, and one packed
    row of T random tokens in documents of the given lengths, all supervised."""
    from h1r.checkpoint import init_model
    from h1r.train.loss import TokenNLL

    model = init_model(cfg, seed=0, device=dev, dtype=torch.float32)
    model.set_activation_checkpointing(ac)
    model.train()
    lossmod = TokenNLL(model, fused=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(10, cfg.vocab_size - 1, (1, T), device=dev)
    mask = torch.ones(1, T, dtype=torch.bool, device=dev)
    return model, lossmod, opt, ids, packed_reset(T, docs, dev), mask


def packed_reset(T: int, docs: list[int], dev) -> torch.Tensor:
    """[1, T] bool: True at each document's first token."""
    reset = torch.zeros(1, T, dtype=torch.bool, device=dev)
    reset[0, torch.tensor([0] + list(itertools.accumulate(docs))[:-1])] = True
    return reset


def graphed_step_time(cfg, T, docs, dev, ac, steps=5) -> dict:
    """The SFT trainer's `cuda_graph` step: h1r.train.sft.optimizer_step itself (the micro-batch's forward and
    backward replayed from one CUDA graph, clipping, fused AdamW, the metrics read back), so the row includes
    the trainer's waits for the GPU. (Rows before 2026-12-05d ran clip and AdamW from a loop of their own that
    never read the metrics back.) The documents enter as data, so after timing a second layout is replayed
    and its loss compared with an eager forward on the same weights ("layout_change")."""
    from h1r.train.batching import MicroBatch
    from h1r.train.distributed import DistInfo
    from h1r.train.graphed_step import GraphedMicroStep
    from h1r.train.sft import optimizer_step

    model, lossmod, opt, ids, reset, mask = sft_setup(cfg, T, docs, dev, ac)
    micro = GraphedMicroStep(lossmod, 1, T, dev, 0, False, torch.bfloat16)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    info = DistInfo(device=dev)
    unused = torch.autocast("cuda", enabled=False)  # the graphed path sets its own autocast

    def batch(reset):
        return MicroBatch(ids.cpu(), mask.cpu(), mask.float().cpu(), None, reset.cpu(), T, T)

    b = batch(reset)

    # CUDA events (with the host's clock) at each step's start, after its micro-step call and when
    # optimizer_step returns: GPU ms per part, idle gaps included, and host ms spent in it
    parts = ("micro_step", "clip_optimizer_metrics")
    marks: list[list] = []

    def note():
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        marks[-1].append((time.perf_counter(), e))

    def marked(b, scale):  # what optimizer_step calls for each micro-batch
        out = micro(b, scale)
        note()
        return out

    def step(b, mark=False):
        if mark:
            marks.append([])
            note()
        m = optimizer_step(lossmod, [b], opt, sched, info, unused, False, 1.0, marked if mark else micro)
        if mark:
            note()
        return m["loss"]

    try:
        for _ in range(micro.warmup + 1):  # eager warm-ups, then the capture and first replay
            step(b)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            loss = step(b, mark=True)
        host = (time.perf_counter() - t) / steps
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        # the graph's buffers live in its private pool, freed back to it after capture: max_memory_allocated
        # would miss them, so report what the caching allocator holds
        out = {"seconds": dt, "tok_s": T / dt, "host_queue_seconds": host, "loss": float(loss),
               "reserved_memory_GB": torch.cuda.memory_reserved() / 1e9, "stats": dict(micro.stats)}
        # where a step's time goes: per part, mean GPU ms between its events (idle gaps included) and mean host
        # ms spent issuing it; "between_steps" is the GPU time from one step's last event to the next's first
        out["parts_ms"] = {
            name: {"gpu": sum(m[i][1].elapsed_time(m[i + 1][1]) for m in marks) / steps,
                   "host": 1e3 * sum(m[i + 1][0] - m[i][0] for m in marks) / steps}
            for i, name in enumerate(parts)}
        out["parts_ms"]["between_steps"] = {
            "gpu": sum(a[-1][1].elapsed_time(b_[0][1]) for a, b_ in zip(marks, marks[1:])) / max(steps - 1, 1),
            "host": 1e3 * sum(b_[0][0] - a[-1][0] for a, b_ in zip(marks, marks[1:])) / max(steps - 1, 1)}
        other = packed_reset(T, documents(T, torch.Generator().manual_seed(1)), dev)  # another layout
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            eager = float(lossmod(ids, mask, reset=other).mean())  # the current weights, read op by op
        replayed = float(micro(batch(other), 1.0 / (T - 1))[0])
        opt.zero_grad(set_to_none=False)
        out["layout_change"] = {"graph_loss": replayed, "eager_loss": eager, "replays": micro.stats["replays"]}
        return out
    except Exception as e:  # report why it did not capture, keep the other rows
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        del model, lossmod, opt, micro
        gc.collect()
        torch.cuda.empty_cache()


def h1r_step_time(cfg, T, docs, dev, steps=3, ac=True, profile=False, sync_debug=False):
    """Seconds per SFT step (after one warm-up step), peak GB, loss, and seconds per step until the host had
    queued the timed steps (close to the step time when the host is the bottleneck, or when something in
    the step synchronises). `ac`: per-layer activation checkpointing. The step is the trainer's plain path
    from a loop of its own, which never reads the loss or norm back (the trainer does, once a step).
    `profile`: print the top CUDA kernels of the timed steps (steady state: no compile, no optimizer init).
    `sync_debug`: print where one steady-state step synchronises with the GPU (sync_sites)."""
    model, lossmod, opt, ids, reset, mask = sft_setup(cfg, T, docs, dev, ac)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lossmod(ids, mask, reset=reset).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        step()  # compile / autotune / optimizer state
        torch.cuda.synchronize()
        if sync_debug:
            sites = sync_sites(step)
            print(f"host waits in one step: {sum(sites.values())}", flush=True)
            for site, n in sites.most_common():
                print(f"{n:5d}  {site}", flush=True)
        if profile:
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile as prof_ctx

            with prof_ctx(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
            # kernels only: a CPU op's self device time repeats the kernels it launched
            cuda_ms = sum(getattr(e, key) for e in events if e.device_type == DeviceType.CUDA) / 1e3 / steps
            print(f"profile of {steps} steady-state steps: kernels {cuda_ms:.0f} ms per step", flush=True)
            kernels = [(e.key, getattr(e, key) / 1e3 / steps) for e in events if e.device_type == DeviceType.CUDA]
            for cat, ms in kernel_categories(kernels).items():
                print(f"  {cat:28s} {ms:7.1f} ms  {ms / cuda_ms:6.1%}", flush=True)
            print(events.table(sort_by=key, row_limit=30, max_name_column_width=60), flush=True)
            print("by host time (self CPU):", flush=True)
            print(events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60), flush=True)
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            loss = step()
        host = (time.perf_counter() - t) / steps  # until the host has queued the steps: ~dt when host-bound
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        return dt, torch.cuda.max_memory_allocated() / 1e9, float(loss.detach()), host
    finally:
        del model, lossmod, opt
        gc.collect()
        torch.cuda.empty_cache()


def run_one(cfg, name, T, docs, dev, rate, ac) -> dict:
    try:
        dt, peak, loss, host = h1r_step_time(cfg, T, docs, dev, ac=ac)
    except torch.OutOfMemoryError:
        from h1r.model.kernels.graphs import release_all

        release_all()  # a capture cut short must not keep its buffers into the next row
        gc.collect()
        torch.cuda.empty_cache()
        return {"preset": name, "tokens": T, "activation_checkpointing": ac, "error": "out of memory"}
    r = {"preset": name, "tokens": T, "activation_checkpointing": ac, "docs": docs, "seconds": dt, "tok_s": T / dt,
         "host_queue_seconds": host, "model_flops": model_flops(cfg, docs), "peak_memory_GB": peak, "loss": loss}
    r["MFU"] = r["model_flops"] / dt / rate
    return r


def hf_step_time(cfg, T, dev, steps=1):
    import transformers

    hcfg = transformers.FalconH1Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                          if k not in ("architectures", "model_type", "dtype")})
    try:
        with torch.device(dev):
            model = transformers.FalconH1ForCausalLM(hcfg)
        model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        ids = torch.randint(10, cfg.vocab_size - 1, (1, T), device=dev)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return {"seconds": (time.perf_counter() - t) / steps, "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9}
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        model = opt = None
        gc.collect()
        torch.cuda.empty_cache()


# Same-process A/B rows: (result key, --flag, the module attributes switched, their value, what the row runs,
# printed label). Each row is the same SFT step with those attributes set, restored afterwards.
VARIANTS = [
    ("eager_glue", "--eager-glue-lengths", ["h1r.model.falcon_h1.COMPILE_TRAINING"], False,
     "the torch.compile'd glue off (H1R_COMPILE=0's path)", "eager glue"),
    ("fla_parallel_ssd", "--ssd-compare-lengths", ["h1r.model.kernels.train.SSD_KERNEL"], "fla-parallel",
     "fla's parallel SSD kernels (the path before ssd_packed)", "fla-parallel SSD"),
    ("ssd_eager", "--ssd-eager-lengths", ["h1r.model.ssd_packed.COMPILE"], False,
     "the SSD's elementwise pieces unfused (no torch.compile)", "SSD eager"),
    ("ssd_scan", "--ssd-scan-lengths", ["h1r.model.ssd_packed.SCAN"], True,
     "the Triton scan between SSD chunks (H1R_SSD_SCAN=1's path)", "SSD scan"),
    ("ssd_fused", "--ssd-fused-lengths", ["h1r.model.ssd_packed.SCAN", "h1r.model.ssd_packed.FUSED"], True,
     "the fused chunk-output kernels and the scan (H1R_SSD_FUSED=1 H1R_SSD_SCAN=1's path)", "SSD fused+scan"),
    ("fp32_norm_out", "--fp32-norm-lengths", ["h1r.model.falcon_h1.HALF_NORM_OUTPUT"], False,
     "the norms returning fp32 under autocast (H1R_HALF_NORM=0's path: each Linear casts its own copy)",
     "fp32 norm output"),
    ("no_layer_graphs", "--no-graph-lengths", ["h1r.model.ssd_packed.GRAPHS", "h1r.model.kernels.train.CONV_GRAPHS"],
     False, "the SSD and conv called op by op in every layer, not replayed from CUDA graphs "
     "(H1R_LAYER_GRAPHS=0's path)", "no layer graphs"),
    ("eager_layers", "--eager-layers-lengths", ["h1r.model.falcon_h1.COMPILE_LAYERS"], False,
     "the decoder layers run eagerly, not compiled whole (H1R_COMPILE_LAYERS=0's path)", "eager layers"),
    ("doc_conv", "--doc-conv-lengths", ["h1r.model.kernels.train.DOC_CONV"], True,
     "the conv read from the document index (kernels/doc_conv.py, the default since 2026-12-04d)", "doc conv"),
    ("fla_conv", "--fla-conv-lengths", ["h1r.model.kernels.train.DOC_CONV"], False,
     "fla's varlen conv instead of the document-indexed one (H1R_DOC_CONV=0's path)", "fla conv"),
    ("dcb_heads", "--dcb-heads-lengths", ["h1r.model.kernels.ssd_chunk.DCB_ATOMIC"], False,
     "the SSD backward's dCB written per head and summed by torch, not by atomic adds (H1R_SSD_DCB_ATOMIC=0's "
     "path)", "dCB per head"),
]


def time_variant(cfg, T, docs, dev, ac, switches: list[str], value, flops_per_rate: float) -> dict:
    """The same step with each "module.ATTR" in `switches` set to value, restored afterwards."""
    targets = [(importlib.import_module(s.rsplit(".", 1)[0]), s.rsplit(".", 1)[1]) for s in switches]
    saved = [getattr(m, a) for m, a in targets]
    for m, a in targets:
        setattr(m, a, value)
    try:
        dt, _, loss, host = h1r_step_time(cfg, T, docs, dev, ac=ac)
    finally:
        for (m, a), v in zip(targets, saved):
            setattr(m, a, v)
    return {"seconds": dt, "tok_s": T / dt, "host_queue_seconds": host, "loss": loss, "MFU": flops_per_rate / dt}


def parse_ac(text: str) -> bool | float:
    """--ac entries: on, off, or the fraction of layers to checkpoint (0.5)."""
    if text in ("on", "off"):
        return text == "on"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ac: {text!r} is not on, off or a fraction") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--ac: {value} is not a fraction in (0, 1]")
    return value


def parse_setting(item: str) -> tuple[object, str, object]:
    """"module.attr=literal" -> (the module, attr, the literal's value); ValueError naming what is wrong (an
    attribute the module does not have is refused: a typo would otherwise time the defaults)."""
    import ast

    name, eq, text = item.partition("=")
    if not eq or "." not in name:
        raise ValueError("expected MODULE.ATTR=VALUE")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{text!r} is not a Python literal") from None
    module_name, attr = name.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name}: {e}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{module_name} has no attribute {attr!r}")
    return module, attr, value


def ac_label(ac: bool | float) -> str:
    return ("on" if ac else "off") if isinstance(ac, bool) else f"{ac:g}"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="falcon-h1-0.5b,falcon-h1-1.5b-deep")
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--ac", default="off,on",
                    help="activation checkpointing settings to time, comma-separated: off, on, or a fraction of the "
                         "layers (0.5)")
    ap.add_argument("--hf-lengths", default="8192")
    for _, flag, _, _, what, _ in VARIANTS:
        ap.add_argument(flag, default="", help=f"also time these lengths with {what}")
    ap.add_argument("--cuda-graph-lengths", default="",
                    help="also time these lengths with the SFT trainer's cuda_graph step (graphed_step_time)")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.ATTR=VALUE",
                    help="set a module attribute (a Python literal) for the whole run, e.g. "
                         "h1r.model.kernels.doc_conv.LAUNCH=\"{...}\"; recorded in the JSON")
    ap.add_argument("--out", default="bench/results/train_gpu.json")
    ap.add_argument("--profile", action="store_true", help="profile steady-state steps of the first preset/length/ac")
    ap.add_argument("--sync-debug", action="store_true",
                    help="with --profile: first list where a step makes the host wait for the GPU")
    args = ap.parse_args(argv)
    try:
        acs = [parse_ac(a) for a in args.ac.split(",")]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    settings = {}
    for item in args.set:
        try:
            module, attr, value = parse_setting(item)
        except ValueError as e:
            ap.error(f"--set {item!r}: {e}")
        setattr(module, attr, value)
        settings[f"{module.__name__}.{attr}"] = value
    import h1r.model.falcon_h1 as fh
    from h1r.config import preset
    from h1r.model import kernels
    from h1r.model.kernels import train as TK

    if not TK.ready():  # the rows would time the reference path (and run out of memory at 16k)
        ap.error("the training kernels cannot run here (kernels/train.ready(): triton, and fla-core for the fla "
                 "switches); install them first, e.g. the fla-core wheel carried to the device")

    fh.COMPILE_MIN_TOKENS = 0  # time the compiled glue at every length; eager_glue rows time the other path
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    if args.profile:
        cfg = preset(args.presets.split(",")[0])
        T = int(args.lengths.split(",")[0])
        dt, peak, _, host = h1r_step_time(cfg, T, documents(T, g), dev, steps=2, ac=acs[0], profile=True,
                                          sync_debug=args.sync_debug)
        print(f"wall {1e3 * dt:.0f} ms per step ({1e3 * host:.0f} ms to queue it), peak {peak:.1f} GB", flush=True)
        return
    rate = matmul_rate(dev)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "matmul_TFLOPs": rate / 1e12,
           "fla_core": kernels.fla_available(),
           "settings": {k: repr(v) for k, v in settings.items()}, "runs": []}
    print(f"bf16 matmul rate {rate / 1e12:.0f} TFLOP/s", flush=True)
    print(f"{'preset':<22}{'tokens':>7}{'AC':>4}{'tok/s':>9}{'MFU':>7}{'peak GB':>9}{'HF tok/s':>10}{'speedup':>9}", flush=True)
    for name in args.presets.split(","):
        cfg = preset(name)
        for T in [int(x) for x in args.lengths.split(",")]:
            docs = documents(T, g)
            for ac in acs:
                r = run_one(cfg, name, T, docs, dev, rate, ac)
                for key, flag, switches, value, _, _ in VARIANTS:
                    lengths = getattr(args, flag.lstrip("-").replace("-", "_"))
                    if "error" not in r and str(T) in lengths.split(","):
                        r[key] = time_variant(cfg, T, docs, dev, ac, switches, value, r["model_flops"] / rate)
                if "error" not in r and str(T) in args.cuda_graph_lengths.split(","):
                    r["cuda_graph"] = graphed_step_time(cfg, T, docs, dev, ac)
                    if "seconds" in r["cuda_graph"]:
                        r["cuda_graph"]["MFU"] = r["model_flops"] / r["cuda_graph"]["seconds"] / rate
                if "error" not in r and ac == acs[0] and str(T) in args.hf_lengths.split(","):
                    hf = hf_step_time(cfg, T, dev)  # transformers needs gradient checkpointing to fit
                    r["transformers"] = hf
                    if "seconds" in hf:
                        r["speedup_vs_transformers"] = hf["seconds"] / r["seconds"]
                res["runs"].append(r)
                hf = r.get("transformers", {})
                print(f"{name:<22}{T:>7}{ac_label(ac):>4}{r.get('tok_s', 0):>9.0f}{100 * r.get('MFU', 0):>6.1f}%"
                      f"{r.get('peak_memory_GB', 0):>9.1f}"
                      f"{(T / hf['seconds']) if 'seconds' in hf else 0:>10.0f}"
                      f"{r.get('speedup_vs_transformers', 0):>8.1f}x  {hf.get('error', r.get('error', ''))}"
                      + "".join(f"  {label} {r[key]['tok_s']:.0f} tok/s ({100 * r[key]['MFU']:.1f}%)"
                                for key, _, _, _, _, label in VARIANTS if key in r)
                      + (f"  cuda_graph {r['cuda_graph']['tok_s']:.0f} tok/s ({r['cuda_graph']['MFU']:.1%})"
                         if "tok_s" in r.get("cuda_graph", {})
                         else f"  cuda_graph: {r['cuda_graph']['error']}" if "cuda_graph" in r else "")
                      + (f"  (queued in {r['host_queue_seconds'] / r['seconds']:.0%} of the step)" if "seconds" in r else ""),
                      flush=True)
                if "parts_ms" in r.get("cuda_graph", {}):
                    print("    cuda_graph step, ms (GPU / host): " + ", ".join(
                        f"{k} {v['gpu']:.1f} / {v['host']:.1f}" for k, v in r["cuda_graph"]["parts_ms"].items()),
                        flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after every run: a cut-off run keeps its rows
                Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The GPU bench scripts' CPU-side parts: what they switch exists, and bad arguments are argparse errors."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_gpu_variants_switch_attributes_that_exist():
    sys.path.insert(0, str(ROOT))
    from bench.train_gpu import VARIANTS

    flags = [v[1] for v in VARIANTS]
    assert len(set(flags)) == len(flags)
    for _, _, switches, _, _, _ in VARIANTS:
        for s in switches:
            module, attr = s.rsplit(".", 1)
            assert attr in module_globals(module), s


def module_globals(module: str) -> set[str]:
    """Names a module defines, by importing it or, where it needs Triton and this machine has none (CPU CI),
    from its top-level assignments."""
    try:
        return set(vars(importlib.import_module(module)))
    except ModuleNotFoundError as e:
        if e.name != "triton":
            raise
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


@pytest.mark.parametrize("script,args,message", [
    ("train_gpu.py", ["--ac", "on,2"], "not a fraction"),
    ("train_gpu.py", ["--ac", "sometimes"], "not on, off or a fraction"),
    ("train_gpu.py", ["--set", "h1r.x=[1,"], "is not a Python literal"),
    ("train_gpu.py", ["--set", "nodot"], "expected MODULE.ATTR=VALUE"),
    ("train_gpu.py", ["--set", "h1r.model.ssd_packed.COMPLIE=False"], "has no attribute 'COMPLIE'"),
    ("train_gpu.py", ["--set", "h1r.no_such_module.X=1"], "cannot import h1r.no_such_module"),
    ("doc_conv_gpu.py", ["--tokens", "0"], "must be >= 1"),
    ("decode_kernels_gpu.py", ["--batches", "1,x"], "not a comma-separated list"),
    ("decode_kernels_gpu.py", ["--batches", "0"], "must lie in 1..--pool-slots"),
    ("decode_gpu.py", ["--batched-tokens", "0"], "--batched-tokens must be at least 1"),
])
def test_bad_arguments_are_argparse_errors(script, args, message):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_profile_summary_sorts_kernels_into_the_steps_parts():
    sys.path.insert(0, str(ROOT))
    from bench.train_gpu import kernel_categories

    cats = kernel_categories([
        ("triton_poi_fused__to_copy_mul_0", 1.0),  # Inductor's fused glue, though its name says copy
        ("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT", 4.0),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel<Flash_bwd_kernel_traits<cutlass::bfloat16_t>>", 2.0),
        ("_out_bwd_kernel", 1.0), ("_out_bwd_cols_kernel", 0.5), ("_pass_fwd_kernel", 0.5),
        ("causal_conv1d_bwd_kernel", 0.125), ("_bwd_g4_kernel", 0.125), ("_bwd_dx_kernel", 0.25),
        ("void at::native::unrolled_elementwise_kernel<copy>", 0.3),
        ("something new", 0.1),
    ])
    assert cats == {"GEMM (cuBLAS)": 4.0, "attention (flash)": 2.0, "SSD (Triton)": 2.0, "compiled glue (Triton)": 1.0,
                    "conv": 0.5, "copies / casts": 0.3, "other": 0.1}
    assert list(cats) == sorted(cats, key=lambda c: -cats[c])


@pytest.mark.parametrize("script,message,missing", [
    ("train_gpu.py", "the training kernels cannot run here", "training kernels"),
    ("decode_gpu.py", "fla-core is not installed", "fla-core prefill"),
])
def test_gpu_benches_refuse_to_time_the_reference_path(script, message, missing):
    """Without their kernels the benches would time the slow reference path (train_gpu.py ran out of memory on
    a device without fla-core): they stop at once, naming what is missing."""
    from h1r.model import kernels
    from h1r.model.kernels import train as TK

    ready = TK.ready() if missing == "training kernels" else kernels.fla_available()
    if ready:
        pytest.skip(f"the {missing} are installed here: the bench would start a real run")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


class _HostEvent:
    """torch.cuda.Event's timing API on the host clock, so the bench's CUDA-only timing code runs on CPU."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return 1e3 * (end.t - self.t)


def test_graphed_step_row_runs_the_trainers_step_on_cpu(monkeypatch):
    """The cuda_graph row end to end on the tiny preset with CUDA's timing calls stubbed (the micro-step runs
    eagerly off CUDA): it goes through the trainer's optimizer_step, reports each part, and replays a second
    document layout, so a device session does not find a broken row."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench import train_gpu
    from h1r.config import preset
    from h1r.train import sft

    for name, fn in [("Event", _HostEvent), ("synchronize", lambda *a: None), ("empty_cache", lambda: None),
                     ("reset_peak_memory_stats", lambda *a: None), ("memory_reserved", lambda *a: 0)]:
        monkeypatch.setattr(torch.cuda, name, fn)
    calls = []
    real = sft.optimizer_step
    monkeypatch.setattr(sft, "optimizer_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    T = 96
    r = train_gpu.graphed_step_time(preset("tiny"), T, [40, 1, 55], torch.device("cpu"), False, steps=2)
    assert "error" not in r, r
    assert len(calls) == 3 + 2  # two warm-ups and the capture call, then the timed steps
    assert r["stats"]["eager"] == 5 and r["stats"]["replays"] == 0  # eager off CUDA
    assert set(r["parts_ms"]) == {"micro_step", "clip_optimizer_metrics", "between_steps"}
    assert all(v["host"] >= 0 for v in r["parts_ms"].values())
    assert r["tok_s"] == pytest.approx(T / r["seconds"]) and r["loss"] > 0
    assert r["layout_change"]["graph_loss"] > 0 and r["layout_change"]["eager_loss"] > 0

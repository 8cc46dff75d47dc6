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
    from h1r.model.kernels import prefill
    from h1r.model.kernels import train as TK

    ready = TK.ready() if missing == "training kernels" else prefill.fla_available()
    if ready:
        pytest.skip(f"the {missing} are installed here: the bench would start a real run")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr

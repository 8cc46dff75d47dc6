"""The GPU bench scripts' CPU-side parts: what they switch exists, and bad arguments are argparse errors."""

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
            assert hasattr(importlib.import_module(module), attr), s


@pytest.mark.parametrize("script,args,message", [
    ("train_gpu.py", ["--ac", "on,2"], "not a fraction"),
    ("train_gpu.py", ["--ac", "sometimes"], "not on, off or a fraction"),
    ("decode_gpu.py", ["--batched-tokens", "0"], "--batched-tokens must be at least 1"),
])
def test_bad_arguments_are_argparse_errors(script, args, message):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr

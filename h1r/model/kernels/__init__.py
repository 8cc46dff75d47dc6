"""Triton fast paths. Each sits beside its PyTorch reference (h1r.model.ssd, h1r.engine.context) and is
tested against it. Importable without CUDA; `available()` says whether they can run."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache  # a failed import is not cached by Python: this is asked once per layer in training
def fla_available() -> bool:
    """fla-core's kernels import: its varlen causal conv and chunked simple-GLA (the engine's prefill, the
    forward-only training SSD, and the H1R_DOC_CONV=0 / H1R_TRAIN_SSD=fla-parallel training paths)."""
    try:
        import fla.modules.causal_conv1d  # noqa: F401
        import fla.ops.simple_gla  # noqa: F401
    except Exception:
        return False
    return True


def available(device=None) -> bool:
    """True when the kernels can run on `device` (CUDA), or everywhere under TRITON_INTERPRET=1."""
    if not triton_available():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    dev = torch.device(device) if device is not None else None
    return torch.cuda.is_available() and (dev is None or dev.type == "cuda")


_ONE_ROW = contextvars.ContextVar("h1r_pdl_one_row", default=False)


@contextlib.contextmanager
def one_row_step(on: bool = True):
    """Kernels launched inside belong to a one-row decode step: under H1R_PDL=auto they launch early."""
    token = _ONE_ROW.set(on)
    try:
        yield
    finally:
        _ONE_ROW.reset(token)


def pdl(t) -> dict:
    """Launch arguments for a decode-path kernel that starts with `launch.pdl_enter(PDL)`: programmatic
    dependent launch on Hopper or newer, so each of the ~400 small kernels of a one-row decode step is
    scheduled while the one before it drains, instead of ~3 µs after. H1R_PDL=wait (the default) lets the
    next kernel launch as this one's programs exit; H1R_PDL=early lets it launch at once (H200: 1 x 1k->1k
    200 -> 207 tok/s, but batch-32/64 graph replays 5-7% slower); H1R_PDL=auto is early inside
    `one_row_step()` (one-row decode steps) and wait elsewhere, meant to keep both gains but not yet timed;
    H1R_PDL=0 launches normally. Off outside CUDA, before Triton 3.4 and in the interpreter."""
    mode = _pdl_mode(str(t.device))
    if mode == 3:
        mode = 2 if _ONE_ROW.get() else 1
    return {"PDL": mode, "launch_pdl": True} if mode else {"PDL": 0}


@functools.lru_cache(maxsize=None)
def _pdl_mode(device: str) -> int:
    """0 off, 1 wait, 2 early, 3 auto (early for one-row steps)."""
    import torch

    env = os.environ.get("H1R_PDL", "wait")
    if env not in ("0", "wait", "early", "auto"):
        from h1r.errors import ConfigError

        raise ConfigError(f"H1R_PDL={env!r}: expected 0, wait, early or auto")
    if env == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return 0
    dev = torch.device(device)
    if dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] < 9:
        return 0
    from h1r.model.kernels.launch import HAS_PDL  # needs triton, which a CUDA kernel call has

    return {"wait": 1, "early": 2, "auto": 3}[env] if HAS_PDL else 0

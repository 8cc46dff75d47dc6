"""Triton fast paths. Each sits beside its PyTorch reference (h1r.model.ssd, h1r.engine.context) and is
tested against it. Importable without CUDA; `available()` says whether they can run."""

from __future__ import annotations

import functools
import os


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
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


def pdl(t) -> dict:
    """Launch arguments for a decode-path kernel whose first statement is `if PDL: gdc_wait()`:
    programmatic dependent launch, so the next kernel is already scheduled while this one
    drains, which hides most of the ~3 µs gap between the ~400 small kernels of a one-row decode step.
    Hopper or newer on CUDA, outside the interpreter, unless H1R_PDL=0."""
    return {"PDL": True, "launch_pdl": True} if _pdl_ok(str(t.device)) else {"PDL": False}


@functools.lru_cache(maxsize=None)
def _pdl_ok(device: str) -> bool:
    import torch

    if os.environ.get("H1R_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9

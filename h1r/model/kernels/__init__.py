"""Triton fast paths. Each sits beside its PyTorch reference (h1r.model.ssd, h1r.engine.context) and is
tested against it. Importable without CUDA; `available()` says whether they can run."""

from __future__ import annotations

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

"""Training/eval metrics to JSONL (always) and TensorBoard (when installed)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from h1r.utils.io import JsonlAppender


class MetricsLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = JsonlAppender(self.run_dir / "metrics.jsonl")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb = None

    def log(self, step: int, **metrics: float) -> None:
        row = {"step": step, "time": time.time()}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else None
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._jsonl.write(row)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

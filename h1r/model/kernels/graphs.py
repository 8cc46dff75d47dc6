"""Replay one CUDA graph for every layer of a step.

A training step calls the same function (the SSD's forward, its backward) once per layer on tensors of the
same shapes, over the same packed-document layout. Launched op by op, each call issues dozens of kernel
launches from Python, and the training step waits on the host. `LayerGraphs` runs the first call of a key
eagerly (it compiles and autotunes whatever needs it), captures the second and replays it for the rest: each
later call costs copying its inputs into the graph's buffers, one replay and copying the outputs out. A new
key (the next step's layout) drops the old graph and its memory. Measured on the SSD and conv of a 1.5B-deep
step at 16k tokens: 17,556 -> 17,743 tok/s, within noise (bench/results/train_gpu_2026-12-04c.json).

The function must be a pure function of its tensor arguments and of state fixed by the key: it may not
synchronise with the host, and it must return a tuple of fresh tensors.
"""

from __future__ import annotations

from typing import Callable

import torch

_REGISTRY: dict[str, "LayerGraphs"] = {}


def layer_graphs(name: str) -> "LayerGraphs":
    """The process's LayerGraphs for one function ("ssd_packed.forward", "conv.backward", ...)."""
    if name not in _REGISTRY:
        _REGISTRY[name] = LayerGraphs(name)
    return _REGISTRY[name]


def release_all() -> None:
    """Drop every captured graph and its buffers (after an out-of-memory error, say): the next calls start over."""
    for g in _REGISTRY.values():
        g.reset()


def _same_key(a, b) -> bool:
    """Keys match element by element: tensors by identity (== would compare values), the rest by ==."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_key(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


class LayerGraphs:
    def __init__(self, name: str):
        self.name = name
        self._key = None  # the key of the entry below; holding it keeps objects in it alive (no id reuse)
        self._calls = 0  # calls with this key so far
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: tuple[torch.Tensor, ...] = ()
        self.stats = {"eager": 0, "captures": 0, "replays": 0}  # for tests and benches

    def reset(self) -> None:
        self._key, self._calls, self._graph, self._inputs, self._outputs = None, 0, None, [], ()

    def __call__(self, key: tuple, fn: Callable[..., tuple], *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """fn(*args) for this key: eagerly the first time, captured the second, replayed after that."""
        if not _same_key(key, self._key):
            self.reset()
            self._key = key
        self._calls += 1
        if self._calls == 1:
            self.stats["eager"] += 1
            return fn(*args)
        if self._graph is None:
            self._capture(fn, args)
        for buf, a in zip(self._inputs, args):
            buf.copy_(a)
        self._graph.replay()
        self.stats["replays"] += 1
        return tuple(o.clone() for o in self._outputs)

    def _capture(self, fn, args) -> None:
        # contiguous buffers (a copy_ fills them from inputs of any strides); the capture runs on a side
        # stream, as CUDA requires, and records without running anything
        self._inputs = [torch.empty_like(a, memory_format=torch.contiguous_format) for a in args]
        for buf, a in zip(self._inputs, args):
            buf.copy_(a)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                outputs = fn(*self._inputs)
            except BaseException:  # out of memory, say: end the capture, drop the buffers, raise the cause
                try:
                    graph.capture_end()
                except Exception:
                    pass
                self.reset()
                raise
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        if not isinstance(outputs, tuple) or not all(isinstance(o, torch.Tensor) for o in outputs):
            raise TypeError(f"{self.name}: the graphed function must return a tuple of tensors")
        self._graph, self._outputs = graph, outputs
        self.stats["captures"] += 1

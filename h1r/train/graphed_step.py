"""One SFT micro-batch's forward and backward replayed from a CUDA graph, so the host leaves the loop.

Why: a packed 16k-token step of the 1.5B-deep shape queues its ~0.7 s of kernels from Python about as fast
as the GPU runs them (bench/results/train_gpu_*.json: host_queue_seconds ~ seconds), so the step waits on
the host. Captured once, a micro-batch is one replay.

What a graph needs, and how the step provides it:
- fixed shapes: every micro-batch is laid out as [micro_batch_size, max_seq_len]; a short row ends in a
  document of pad tokens, a missing row is all padding (both weigh 0 in the loss);
- no host reads: the loss is taken at every position with a weight (0 where nothing is supervised) instead
  of gathering the supervised positions, the documents enter as data (DenseContext(doc_capacity=...) and
  the document-indexed conv, kernels/train.py DOC_CONV), and the loss scale is a device scalar;
- the same gradient buffers: the backward accumulates into each parameter's .grad in place, so they exist
  before the capture and are zeroed in place between steps (zero_grad(set_to_none=False)).
The first `warmup` calls run eagerly (they compile and autotune; their gradients count like any other),
the next one captures and every later call replays. A micro-batch with more documents than the capacity
runs eagerly; a capture that fails leaves the run eager, with a warning. Off CUDA the same fixed-shape step
runs eagerly: the tests compare it with the plain path.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from h1r.errors import ConfigError
from h1r.train.batching import MicroBatch


def layout(b: MicroBatch, rows: int, T: int, pad_id: int, use_weights: bool):
    """MicroBatch -> the fixed [rows, T] layout: ids [rows,T] long, reset [rows,T] bool, loss weight of the
    token each position predicts [rows*(T-1)] fp32, supervised mask alike, and the document count
    (kernels/train.py's _document_starts: row starts and resets)."""
    R, t = b.input_ids.shape
    if R > rows or t > T:
        raise ValueError(f"micro-batch of {R} rows x {t} tokens does not fit the fixed {rows} x {T} layout")
    ids = torch.full((rows, T), pad_id, dtype=torch.long)
    ids[:R, :t] = b.input_ids
    reset = torch.zeros(rows, T, dtype=torch.bool)
    reset[:, 0] = True
    if b.reset is not None:
        reset[:R, :t] |= b.reset
    else:  # one example per row: each row is one document
        reset[:R, 0] = True
    lens = b.attention_mask.sum(1) if b.attention_mask is not None else torch.full((R,), t)
    lens = torch.cat([lens, torch.zeros(rows - R, dtype=lens.dtype)])
    tail = torch.nonzero(lens < T)[:, 0]
    reset[tail, lens[tail]] = True  # the padding after the last document is a document of its own
    sup = torch.zeros(rows, T, dtype=torch.float32)
    sup[:R, :t] = b.target_mask.float()
    w = torch.zeros(rows, T, dtype=torch.float32)
    w[:R, :t] = b.token_weight if use_weights else b.target_mask.float()
    return ids, reset, w[:, 1:].reshape(-1), sup[:, 1:].reshape(-1), int(reset.sum())


def check_supported(device: torch.device, distributed: bool = False) -> None:
    """ConfigError unless a graphed micro-step can run here: CUDA, one process, the document-indexed conv and
    the other training kernels."""
    if device.type != "cuda":
        raise ConfigError(f"cuda_graph needs a CUDA device; this run is on {device.type}")
    if distributed:
        raise ConfigError("cuda_graph runs in one process (FSDP2's hooks are not captured); drop it or torchrun")
    from h1r.model.kernels import train as TK

    if not TK.DOC_CONV:
        raise ConfigError("cuda_graph needs the document-indexed conv (unset H1R_DOC_CONV=0): fla's varlen conv "
                          "reads the document layout on the host")
    if not TK.ready():  # the reference path reads the layout on the host: it cannot be captured
        raise ConfigError("cuda_graph needs the training kernels: install triton (pip install 'h1r[gpu]'), and "
                          "fla-core for H1R_TRAIN_SSD=fla-parallel")


class GraphedMicroStep:
    def __init__(self, module: torch.nn.Module, rows: int, T: int, device: torch.device, pad_id: int,
                 use_weights: bool, half_dtype: torch.dtype | None, docs_per_row: int = 128, warmup: int = 2):
        """module: TokenNLL (one process; FSDP2's hooks are not captured). half_dtype: the autocast dtype
        or None (fp32). docs_per_row: the documents a row may hold in the graph (more run eagerly)."""
        if device.type == "cuda":
            check_supported(device)
        self.module, self.rows, self.T, self.device = module, rows, T, device
        self.pad_id, self.use_weights, self.half_dtype = pad_id, use_weights, half_dtype
        self.capacity = rows * docs_per_row
        self.warmup = warmup
        self.use_graph = device.type == "cuda"
        n = rows * (T - 1)
        self.ids = torch.zeros(rows, T, dtype=torch.long, device=device)
        self.reset = torch.zeros(rows, T, dtype=torch.bool, device=device)
        self.w = torch.zeros(n, device=device)
        self.sup = torch.zeros(n, device=device)
        self.scale = torch.zeros((), device=device)
        # every position that predicts a next token, row-major: r*T + t for t < T-1
        self.positions = (torch.arange(rows, device=device)[:, None] * T + torch.arange(T - 1, device=device)).reshape(-1)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = 0
        self.stats = {"eager": 0, "captures": 0, "replays": 0, "over_capacity": 0}

    def _autocast(self):
        if self.half_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: inside a graph it would hold casts of the previous step's weights
        return torch.autocast(self.device.type, dtype=self.half_dtype, cache_enabled=False)

    def _body(self, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward of the micro-batch in the buffers -> (its loss share, its summed NLL) [] fp32."""
        from h1r.model.context import DenseContext

        with self._autocast():
            ctx = DenseContext(None, self.ids.shape, self.device, None, self.reset, None, doc_capacity=capacity)
            nll = self.module(self.ids, None, reset=self.reset, positions=self.positions, ctx=ctx)  # [rows*(T-1)]
        loss = (nll * self.w).sum() * self.scale
        loss.backward()
        return loss.detach(), (nll.detach() * self.sup).sum()

    def __call__(self, b: MicroBatch, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate this micro-batch's gradient of  scale * sum(w * nll)  into .grad -> (loss share, summed
        NLL of its supervised tokens), device scalars."""
        ids, reset, w, sup, docs = layout(b, self.rows, self.T, self.pad_id, self.use_weights)
        for buf, host in ((self.ids, ids), (self.reset, reset), (self.w, w), (self.sup, sup)):
            buf.copy_(host.pin_memory() if self.device.type == "cuda" else host, non_blocking=True)
        self.scale.fill_(scale)
        self.calls += 1
        if docs > self.capacity:
            if not self.stats["over_capacity"]:
                warnings.warn(f"a micro-batch holds {docs} documents, more than the CUDA graph's {self.capacity} "
                              "(docs_per_row x rows): such micro-batches run eagerly", stacklevel=2)
            self.stats["over_capacity"] += 1
            return self._eager(None)
        if not self.use_graph or self.calls <= self.warmup:  # warm-up: the graph's own path, compiled here
            return self._eager(self.capacity if self.use_graph else None)
        if self.graph is None:
            try:
                self._capture()
            except Exception as e:  # out of memory, an op that cannot be captured: keep training, eagerly
                warnings.warn(f"cuda_graph: capturing the micro-step failed ({type(e).__name__}: {e}); this run "
                              "goes on without the graph", stacklevel=2)
                self.use_graph = False
                torch.cuda.empty_cache()
                return self._eager(None)
        self.graph.replay()
        self.stats["replays"] += 1
        return self.out[0].clone(), self.out[1].clone()

    def _eager(self, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        self.stats["eager"] += 1
        return self._body(capacity)

    def _capture(self) -> None:
        from h1r.model.kernels.graphs import release_all

        params = [p for p in self.module.parameters() if p.requires_grad]
        for p in params:  # the graph adds into these tensors: they must exist, and stay
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        release_all()  # the per-layer graphs of the eager calls: inside the capture the kernels run as they are
        torch.cuda.empty_cache()  # the eager calls' cached blocks, so the graph's pool finds the memory
        grads = [p.grad for p in params]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self._body(self.capacity)
            swapped = any(p.grad is None or p.grad.data_ptr() != g.data_ptr() for p, g in zip(params, grads))
            if swapped:  # replays would write elsewhere than into .grad
                raise RuntimeError("CUDA graph capture replaced a parameter's .grad instead of adding into it")
        finally:
            for p, g in zip(params, grads):  # a capture only records: the gradients so far are these tensors
                p.grad = g
        self.graph, self.out = graph, out
        self.stats["captures"] += 1

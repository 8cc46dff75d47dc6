"""Training fast paths (CUDA, bf16/fp16): packed documents described by `cu_seqlens` go through the
document-indexed causal conv (kernels/doc_conv.py; fla's varlen conv with H1R_DOC_CONV=0), H1R's grouped chunked
SSD (h1r.model.ssd_packed) and PyTorch's variable-length flash attention (forward and backward). fla-core is needed
only by the fla paths (H1R_DOC_CONV=0, H1R_TRAIN_SSD=fla-parallel); forward-only SSD calls take fla's chunked
forward when it is installed. References: DenseContext's plain path with `reset` (h1r.model.ssd.causal_conv1d /
ssd_chunked and masked SDPA); tests/test_kernels.py compares values and gradients.
"""

from __future__ import annotations

import os

import torch

from h1r.errors import ConfigError
from h1r.model import kernels
from h1r.utils.env import flag

CALLS = {"attention": 0, "conv": 0, "ssd": 0}  # lets tests prove the kernels, not the reference, ran


def ready() -> bool:
    """Whether the training fast paths can run as configured: Triton always, fla-core only where a switch
    picks one of its kernels. (Before 2026-12-05 they required fla-core outright, so a GPU without it trained
    through the reference path: 16k tokens of the 1.5B-deep shape then ran out of 80 GB.)"""
    if not kernels.triton_available():
        return False
    return (DOC_CONV and SSD_KERNEL == "chunked") or kernels.fla_available()


def _document_starts(shape, reset: torch.Tensor | None, valid: torch.Tensor | None, device) -> torch.Tensor:
    """[B*T] bool: every row start, every reset, and every switch between padding and tokens (so padding
    forms documents of its own)."""
    B, T = shape
    starts = torch.zeros(B, T, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if reset is not None:
        starts |= reset
    if valid is not None:
        starts[:, 1:] |= valid[:, 1:] != valid[:, :-1]
    return starts.flatten()


def cu_seqlens_from(shape, reset: torch.Tensor | None, valid: torch.Tensor | None, device) -> torch.Tensor:
    """Document boundaries of a [B,T] batch flattened to one row (see _document_starts)."""
    idx = _document_starts(shape, reset, valid, device).nonzero()[:, 0]
    return torch.cat([idx, torch.tensor([shape[0] * shape[1]], device=device)])


def cu_seqlens_static(shape, reset: torch.Tensor | None, valid: torch.Tensor | None, capacity: int,
                      device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same boundaries in a fixed shape, computed without reading anything on the host (a CUDA graph can
    replay it for any layout): cu [capacity+1], the unused tail repeating B*T (empty documents), and the
    document index per token [B*T]. More than `capacity` documents is an error raised on the device."""
    starts = _document_starts(shape, reset, valid, device)
    n = starts.numel()
    torch._assert_async(starts.sum() <= capacity, f"cu_seqlens_static: more than {capacity} documents")
    idx = torch.nonzero_static(starts, size=capacity, fill_value=n)[:, 0]
    return torch.cat([idx, idx.new_full((1,), n)]), starts.long().cumsum(0) - 1


class _VarlenFlash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu, max_len: int, scale: float):
        cu32 = cu.to(torch.int32)
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu32, cu32, max_len, max_len, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu32, rng, unused)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu32, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            dout.contiguous(), q, k, v, out, lse, cu32, cu32, ctx.max_len, ctx.max_len, 0.0, True, rng, unused,
            scale=ctx.scale)
        return dq, dk, dv, None, None, None


def varlen_causal_attention(q, k, v, cu: torch.Tensor, max_len: int, scale: float) -> torch.Tensor:
    """q [N,Hq,d], k/v [N,Hkv,d] packed by `cu` -> [N,Hq,d]; causal within each document, GQA native."""
    if not torch.compiler.is_compiling():  # a counter read inside a compiled layer would be a guard per value
        CALLS["attention"] += 1
    return _VarlenFlash.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu, max_len, scale)


# fla's varlen conv, forward and backward, replayed from one CUDA graph per step for every layer after the
# second (kernels/graphs.py); 0 calls it op by op. H1R_LAYER_GRAPHS sets this and ssd_packed.GRAPHS.
CONV_GRAPHS = flag("H1R_LAYER_GRAPHS", True)
FLA_CONV_CHUNK = 64  # fla's default chunk of tokens per conv program
_chunk_index: tuple | None = None  # (cu, fla's chunk index table for cu): one step's documents


def _fla_chunk_index(cu: torch.Tensor) -> torch.Tensor:
    """fla's chunk table for `cu`, built once per step (it reads cu on the host, which no graph may do)."""
    global _chunk_index
    if _chunk_index is None or _chunk_index[0] is not cu:
        from fla.ops.utils.index import prepare_chunk_indices

        _chunk_index = (cu, prepare_chunk_indices(cu, FLA_CONV_CHUNK))
    return _chunk_index[1]


class _GraphedConv(torch.autograd.Function):
    """silu(causal conv) over packed documents through fla's forward and backward functions, each replayed
    from a CUDA graph shared by the step's layers."""

    @staticmethod
    def forward(ctx, x, w, b, cu):  # x [1, N, C], w [C, K], b [C] or None, all in x's dtype
        from fla.modules.causal_conv1d.ops import causal_conv1d_fwd

        from h1r.model.kernels.graphs import layer_graphs

        idx = _fla_chunk_index(cu)

        def fwd(x, w, *b):
            return causal_conv1d_fwd(x=x, weight=w, bias=b[0] if b else None, residual=None, activation="silu",
                                     cu_seqlens=cu, chunk_indices=idx, chunk_size=FLA_CONV_CHUNK)[:1]

        args = (x, w) + ((b,) if b is not None else ())
        # the key holds cu and idx: the graph reads both, so they must outlive it
        key = (cu, idx, *((t.shape, t.dtype) for t in args))
        (y,) = layer_graphs("conv.forward")(key, fwd, *args)
        ctx.save_for_backward(*args)
        ctx.cu = cu
        return y

    @staticmethod
    def backward(ctx, dy):
        from fla.modules.causal_conv1d.ops import causal_conv1d_bwd

        from h1r.model.kernels.graphs import layer_graphs

        args = ctx.saved_tensors
        cu = ctx.cu
        idx = _fla_chunk_index(cu)

        def bwd(dy, x, w, *b):
            dx, dw, db, _, _ = causal_conv1d_bwd(x=x, dy=dy, dht=None, weight=w, bias=b[0] if b else None,
                                                 residual=None, initial_state=None, activation="silu",
                                                 cu_seqlens=cu, chunk_indices=idx, chunk_size=FLA_CONV_CHUNK)
            return (dx, dw) + ((db,) if b else ())

        key = (cu, idx, *((t.shape, t.dtype) for t in (dy,) + args))
        grads = layer_graphs("conv.backward")(key, bwd, dy, *args)
        return grads[0], grads[1], grads[2] if len(grads) > 2 else None, None


# The conv through kernels/doc_conv.py, whose launch depends on the token count only (the documents are data,
# so one CUDA graph can serve any layout: the SFT trainer's cuda_graph needs it) and which reads the fp32 weight
# as it is. Its speed against fla's is within the noise of the host-bound eager step: H200, 1.5B-deep at 16k
# tokens, same process, 22,369 tok/s against fla's 23,277 (bench/results/train_gpu_2026-12-05a.json), where an
# earlier run had it ahead. H1R_DOC_CONV=0: fla's varlen conv.
DOC_CONV = flag("H1R_DOC_CONV", True)


# a graph break inside a compiled layer (COMPILE_LAYERS): fla's kernels and the CUDA graphs run as they are
@torch.compiler.disable
def conv_varlen(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu: torch.Tensor,
                doc: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, C] (pre-conv xBC of packed documents) -> silu(causal depthwise conv) [N, C]; no state crosses a
    document boundary. doc [N]: the document index per token (DOC_CONV's kernel reads it instead of cu)."""
    CALLS["conv"] += 1
    if DOC_CONV and doc is not None:
        from h1r.model.kernels.doc_conv import doc_conv

        return doc_conv(x, weight, bias, doc)  # the fp32 weight and bias, read as they are
    from fla.modules.causal_conv1d import causal_conv1d

    w = weight.to(x.dtype)
    b = bias.to(x.dtype) if bias is not None else None
    if CONV_GRAPHS and x.is_cuda and not torch.cuda.is_current_stream_capturing():
        return _GraphedConv.apply(x[None], w, b, cu)[0]
    # the chunk table built once per step here, not by fla from cu on the host (no wait inside a graph capture)
    y, _ = causal_conv1d(x[None], weight=w, bias=b, activation="silu", cu_seqlens=cu,
                         chunk_indices=_fla_chunk_index(cu))
    return y[0]


# "chunked": h1r.model.ssd_packed (grouped, linear in the length, any GPU); "fla-parallel": fla's within-document
# quadratic simple-GLA kernels on per-head copies of B and C (the path before; kept for comparison benches)
SSD_KERNEL = os.environ.get("H1R_TRAIN_SSD", "chunked")


@torch.compiler.disable  # as conv_varlen
def ssd_varlen(x, dt, A, B, C, cu: torch.Tensor, doc: torch.Tensor | None = None, chunk_size: int = 128) -> torch.Tensor:
    """x [N,H,P], dt [N,H] (after softplus), A [H], B/C [N,G,Ns] -> y [N,H,P] fp32 (no D skip), with grads.

    doc [N]: document index per token (doc_ids_from_cu(cu)); pass it to skip recomputing it every layer.
    Forward-only calls (GRPO's logprob recomputation) keep fla's chunked forward where fla-core is installed
    (else ssd_packed's forward), as before: it is correct on Hopper and was faster (1.4 ms against ssd_packed's
    first, unfused version's 2.6 ms, 1.5B-deep shape, 16k tokens, bench/results/ssd_train_gpu.json)."""
    CALLS["ssd"] += 1
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C))
    if SSD_KERNEL == "chunked" and (needs_grad or not kernels.fla_available()):
        from h1r.model.ssd_packed import doc_ids_from_cu, ssd_packed

        doc = doc if doc is not None else doc_ids_from_cu(cu, x.shape[0])
        return ssd_packed(x, dt, A, B, C, doc, chunk_size)
    if SSD_KERNEL not in ("chunked", "fla-parallel"):
        raise ConfigError(f"H1R_TRAIN_SSD={SSD_KERNEL!r}: expected 'chunked' or 'fla-parallel'")
    return _ssd_fla(x, dt, A, B, C, cu)  # without gradients: fla's chunked forward (correct on Hopper)


def _ssd_fla(x, dt, A, B, C, cu):
    """SSD as simple-GLA with a scalar decay per head: q=C, k=B, v=x*dt, g=dt*A, scale 1. With gradients
    this uses fla's parallel (within-document quadratic) kernels: the chunked backward refuses to run on
    Hopper with Triton 3.4-3.7.0 (fla #640, wrong results)."""
    from fla.ops.simple_gla import chunk_simple_gla, parallel_simple_gla

    H, G = x.shape[1], B.shape[1]
    dtype = x.dtype
    q = C.repeat_interleave(H // G, dim=1).to(dtype)
    k = B.repeat_interleave(H // G, dim=1).to(dtype)
    v = (x * dt[..., None].to(x.dtype)).to(dtype)
    g = (dt * A.float()).float()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g)):
        o, _ = parallel_simple_gla(q[None], k[None], v[None], g=g[None], scale=1.0, cu_seqlens=cu)
    else:
        o, _ = chunk_simple_gla(q[None], k[None], v[None], g=g[None], scale=1.0, cu_seqlens=cu)
    return o[0]

"""The SSD's state passing between chunks as a scan (training, h1r.model.ssd_packed), forward and backward.

ssd_packed carries the state each chunk makes to the start of every later chunk with a dense [nc, nc]
matrix per head: S_in = Gam @ S. That is O(nc^2) work (39 of the 165 GFLOP of a 1.5B-deep layer at 16k
tokens, bench/results/ssd_cost_model.json) plus two head-major copies of the states each way. Because
document ids never decrease, the same thing is a first-order recurrence over chunks,

    S_in[0] = 0,   S_in[k+1] = decay[k] * S_in[k] + S[k],   decay[k] = exp(tot[k]) * [doc_end[k] == doc_end[k-1]]

(decay[0] = 0), which one program per (head, block of N*P state elements) runs in order, reading S once
and writing S_in once, in the states' own [nc, G, N, Hg*P] layout. Backward, with G the gradient of
S_in[k+1] (0 past the last chunk), for k = nc-1 .. 0:

    dS[k] = G,   d decay[k] = <G, S_in[k]>,   G <- dS_in[k] + decay[k] * G

Reference: the dense path of ssd_packed (`_chunk_decay`, `states_in`); tests compare values and gradients.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _fwd_step(k, acc, S_ptr, decay_ptr, out_ptr, off, ok, s_c, d_c, h):
    tl.store(out_ptr + k * s_c + off, acc.to(out_ptr.dtype.element_ty), mask=ok)
    d = tl.load(decay_ptr + k * d_c + h)
    return d * acc + tl.load(S_ptr + k * s_c + off, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _pass_fwd_kernel(S_ptr, decay_ptr, out_ptr, nc, s_c, s_g, s_n, d_c, HG, P, NP,
                     BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    h = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # flat (n, p) within the head
    ok = i < NP
    off = (h // HG) * s_g + (i // P) * s_n + (h % HG) * P + i % P
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot run a for-loop over a runtime bound
        k = 0
        while k < nc:
            acc = _fwd_step(k, acc, S_ptr, decay_ptr, out_ptr, off, ok, s_c, d_c, h)
            k += 1
    else:
        for k in range(0, nc):
            acc = _fwd_step(k, acc, S_ptr, decay_ptr, out_ptr, off, ok, s_c, d_c, h)


@triton.jit
def _bwd_step(k, g, dSin_ptr, Sin_ptr, decay_ptr, dS_ptr, ddecay_ptr, off, ok, s_c, d_c, h):
    tl.store(dS_ptr + k * s_c + off, g.to(dS_ptr.dtype.element_ty), mask=ok)
    s_in = tl.load(Sin_ptr + k * s_c + off, mask=ok, other=0.0).to(tl.float32)
    tl.atomic_add(ddecay_ptr + k * d_c + h, tl.sum(g * s_in, axis=0), sem="relaxed")
    d = tl.load(decay_ptr + k * d_c + h)
    return tl.load(dSin_ptr + k * s_c + off, mask=ok, other=0.0).to(tl.float32) + d * g


@triton.jit
def _pass_bwd_kernel(dSin_ptr, Sin_ptr, decay_ptr, dS_ptr, ddecay_ptr, nc, s_c, s_g, s_n, d_c, HG, P, NP,
                     BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    h = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = i < NP
    off = (h // HG) * s_g + (i // P) * s_n + (h % HG) * P + i % P
    g = tl.zeros([BLOCK], dtype=tl.float32)  # the gradient of S_in[k+1], all paths included
    if INTERPRET:
        k = nc - 1
        while k >= 0:
            g = _bwd_step(k, g, dSin_ptr, Sin_ptr, decay_ptr, dS_ptr, ddecay_ptr, off, ok, s_c, d_c, h)
            k -= 1
    else:
        for j in range(0, nc):
            g = _bwd_step(nc - 1 - j, g, dSin_ptr, Sin_ptr, decay_ptr, dS_ptr, ddecay_ptr, off, ok, s_c, d_c, h)


def chunk_decay_factors(tot: torch.Tensor, doc_end: torch.Tensor) -> torch.Tensor:
    """tot [nc, H] (each chunk's summed log-decay), doc_end [nc] -> decay [nc, H] fp32 (see the module
    docstring): what carries S_in[k] over chunk k, zero where chunk k starts a new document."""
    keep = torch.zeros_like(doc_end, dtype=torch.bool)
    keep[1:] = doc_end[1:] == doc_end[:-1]
    return torch.exp(tot.float()) * keep[:, None]


def _check(S: torch.Tensor, H: int):
    nc, G, N, HP = S.shape
    assert S.stride(-1) == 1 and HP % (H // G) == 0, (S.shape, S.stride(), H)
    if S.stride(0) * nc >= 2 ** 31:  # the kernels index in int32
        raise ValueError(f"state_pass: {nc} chunks of {S.stride(0)} state elements pass 2^31 elements; "
                         "split the packed batch (fewer tokens per call) or use a longer chunk")
    return nc, G, N, HP // (H // G)


def _grid(H: int, NP: int, block: int):
    return (H, triton.cdiv(NP, block))


BLOCK = 1024


def state_pass(S: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """S [nc, G, N, Hg*P] (each chunk's own state, a group's heads side by side), decay [nc, H] fp32 ->
    S_in [nc, G, N, Hg*P] in S's dtype: the state entering each chunk."""
    H = decay.shape[1]
    nc, G, N, P = _check(S, H)
    out = torch.empty_like(S)
    _pass_fwd_kernel[_grid(H, N * P, BLOCK)](S, decay, out, nc, S.stride(0), S.stride(1), S.stride(2),
                                             decay.stride(0), H // G, P, N * P, BLOCK=BLOCK, INTERPRET=_INTERPRET,
                                             num_warps=4)
    return out


def state_pass_backward(dS_in: torch.Tensor, S_in: torch.Tensor, decay: torch.Tensor):
    """-> (dS like S_in, d decay [nc, H] fp32). dS_in and S_in share one layout (contiguous last dim)."""
    H = decay.shape[1]
    nc, G, N, P = _check(S_in, H)
    assert dS_in.shape == S_in.shape and dS_in.stride() == S_in.stride() and decay.is_contiguous()
    dS = torch.empty_like(S_in)
    ddecay = torch.zeros(nc, H, device=decay.device, dtype=torch.float32)
    _pass_bwd_kernel[_grid(H, N * P, BLOCK)](dS_in, S_in, decay, dS, ddecay, nc, S_in.stride(0), S_in.stride(1),
                                             S_in.stride(2), ddecay.stride(0), H // G, P, N * P, BLOCK=BLOCK,
                                             INTERPRET=_INTERPRET, num_warps=4)
    return dS, ddecay

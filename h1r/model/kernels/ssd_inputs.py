"""The inputs of fla's simple-GLA form of SSD in one pass: q = C and k = B broadcast from their group to
every head, v = x * dt, g = dt * A. Eager PyTorch spends six strided copies and casts on this (about
9% of a 7B prefill step on an H200); here each (token, head) program reads its rows once.
Reference: h1r.model.kernels.prefill.ssd_inputs_reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ssd_inputs_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, q_ptr, k_ptr, v_ptr, g_ptr, x_s, b_s, c_s, H,
                       HEADS_PER_GROUP: tl.constexpr, P: tl.constexpr, NS: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    grp = h // HEADS_PER_GROUP
    row = n * H + h
    dt = tl.load(dt_ptr + row)
    tl.store(g_ptr + row, dt * tl.load(A_ptr + h))
    p = tl.arange(0, BLOCK_P)
    mp = p < P
    x = tl.load(x_ptr + n * x_s + h * P + p, mask=mp, other=0.0).to(tl.float32)
    tl.store(v_ptr + row * P + p, (x * dt).to(v_ptr.dtype.element_ty), mask=mp)
    s = tl.arange(0, BLOCK_N)
    ms = s < NS
    b = tl.load(B_ptr + n * b_s + grp * NS + s, mask=ms, other=0.0)
    c = tl.load(C_ptr + n * c_s + grp * NS + s, mask=ms, other=0.0)
    tl.store(k_ptr + row * NS + s, b.to(k_ptr.dtype.element_ty), mask=ms)
    tl.store(q_ptr + row * NS + s, c.to(q_ptr.dtype.element_ty), mask=ms)


def ssd_inputs(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dtype):
    """x [N,H,P] (rows may be strided), dt [N,H] fp32 (after softplus), A [H] fp32, B/C [N,G,Ns] (rows may be
    strided) -> q, k [N,H,Ns], v [N,H,P] in `dtype`; g [N,H] fp32."""
    N, H, P = x.shape
    G, Ns = B.shape[1], B.shape[2]
    assert x.stride(2) == 1 and x.stride(1) == P and B.stride(2) == 1 and B.stride(1) == Ns
    assert C.stride(2) == 1 and C.stride(1) == Ns and H % G == 0
    dt = dt.float().contiguous()
    q = torch.empty(N, H, Ns, device=x.device, dtype=dtype)
    k = torch.empty_like(q)
    v = torch.empty(N, H, P, device=x.device, dtype=dtype)
    g = torch.empty(N, H, device=x.device, dtype=torch.float32)
    if N:
        _ssd_inputs_kernel[(N, H)](x, dt, A.float().contiguous(), B, C, q, k, v, g, x.stride(0), B.stride(0),
                                   C.stride(0), H, HEADS_PER_GROUP=H // G, P=P, NS=Ns,
                                   BLOCK_P=triton.next_power_of_2(P), BLOCK_N=triton.next_power_of_2(Ns), num_warps=2)
    return q, k, v, g

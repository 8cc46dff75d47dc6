"""One-row decode projections as a single Triton GEMV each, with their neighbours folded in.

At batch 1 a decode step was ~570 kernels; inside a CUDA graph each costs ~3 µs of launch and tail
whatever its size, and cuBLAS reaches only 2.4-3.2 TB/s on the 7B's narrower shapes (w_in, w_mo, w_down:
bench/results/gemv_gpu.json). This kernel takes the
elementwise work next to each projection into the pass that streams the weight:

- `norm`: the RMSNorm before w_in / w_gu / lm_head. Its weight is folded into the projection's columns
  at load time (FastFalconH1), so what is left is one scale per row, 1/rms(h), summed from the very
  input elements the GEMV reads anyway: out = (W' h) / rms(h).
- `silu_mul`: the MLP activation; the input is [gate | up] and the kernel multiplies silu(gate) * up.
- `residual`: out = residual + (W x + b), which is the residual-stream add (in place is safe: each
  program reads and writes only its own output columns).
- `gated_gemv`: the output projection, whose input is [gated RMSNorm of the SSM output | attention
  output]; each program recomputes the group norms from y and z (a few KB from L2) as it reads them.

References: `gemv_reference` below (what FastFalconH1's generic path computes with F.linear), and
fused.gated_rmsnorm followed by `gemv` for `gated_gemv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter


@triton.jit
def _finish(y, b_ptr, r_ptr, o_ptr, m, n, n_ok, r_s, o_s, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    """y [BLOCK_N] fp32 -> (+ bias) (+ residual) -> stored. The projection rounds to the stream's dtype
    before the residual add, as h + F.linear(...) does."""
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    if HAS_RES:
        y = tl.load(r_ptr + m * r_s + n, mask=n_ok, other=0.0).to(tl.float32) + y.to(o_ptr.dtype.element_ty).to(tl.float32)
    tl.store(o_ptr + m * o_s + n, y.to(o_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_kernel(a_ptr, w_ptr, b_ptr, r_ptr, o_ptr, N, a_s, w_s, r_s, o_s, eps, K: tl.constexpr,
                 PRO: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    # K is a compile-time constant: a model has three or four widths, and a fixed trip count unrolls well
    # PRO: 0 plain input, 1 input scaled by 1/rms(input), 2 silu(input[:K]) * input[K:2K]
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    a_row = a_ptr + m * a_s
    w_rows = w_ptr + n.to(tl.int64)[:, None] * w_s
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    ss = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        if EVEN_K:
            a = tl.load(a_row + k)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = k < K
            a = tl.load(a_row + k, mask=k_ok, other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if PRO == 2:
            if EVEN_K:
                u = tl.load(a_row + K + k)
            else:
                u = tl.load(a_row + K + k, mask=k_ok, other=0.0)
            g = a.to(tl.float32)
            x = ((g / (1.0 + tl.exp(-g))).to(u.dtype) * u).to(tl.float32)  # rounded as silu_mul rounds
        else:
            x = a.to(tl.float32)
            if PRO == 1:
                ss += x * x
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)  # [BLOCK_N]
    if PRO == 1:
        y = y * tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
    _finish(y, b_ptr, r_ptr, o_ptr, m, n, n_ok, r_s, o_s, HAS_BIAS, HAS_RES)


def _config(N: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps). Eight output rows per program keeps 380+ programs in flight even for
    N = 3072; the wider the weight, the longer the K step. Picked from a `bench/gemv_gpu.py --sweep` on the
    H200 (7B shapes) whose weights still fitted in L2 (its JSON is not kept); the committed
    bench/results/gemv_gpu.json times these defaults with the weights cycled past L2."""
    if K >= 8192:  # w_down
        return 8, 1024, 8
    if N * K >= 1 << 26:  # w_gu, lm_head
        return 8, 1024, 4
    return 8, (512 if K >= 4096 else min(256, triton.next_power_of_2(K))), 4


def gemv(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, norm_eps: float | None = None,
         silu_mul: bool = False, residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
         config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """a [M, K] (or [M, 2K] with silu_mul), w [N, K] -> [M, N] in w's dtype (or residual's), fp32 accumulation.
    Meant for M == 1: each row re-streams w."""
    assert not (silu_mul and norm_eps is not None), "one prologue at a time"
    M = a.shape[0]
    N, K = w.shape
    assert a.shape[1] == (2 * K if silu_mul else K), f"input width {a.shape[1]} does not fit weight {tuple(w.shape)}"
    assert a.stride(-1) == 1 and w.stride(-1) == 1
    if out is None:
        out = torch.empty(M, N, device=a.device, dtype=residual.dtype if residual is not None else w.dtype)
    if residual is not None:
        assert residual.shape == (M, N) and residual.stride(-1) == 1
    block_n, block_k, warps = config or _config(N, K)
    grid = (triton.cdiv(N, block_n), M)
    _gemv_kernel[grid](a, w, bias if bias is not None else w, residual if residual is not None else out, out,
                       N, a.stride(0), w.stride(0), residual.stride(0) if residual is not None else 0,
                       out.stride(0), float(norm_eps or 0.0), K=K,
                       PRO=2 if silu_mul else 1 if norm_eps is not None else 0, HAS_BIAS=bias is not None,
                       HAS_RES=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=K % block_k == 0,
                       num_warps=warps, **pdl(a))
    return out


def gemv_reference(a, w, bias=None, *, norm_eps=None, silu_mul=False, residual=None):
    """What the kernel computes, in plain PyTorch (the weight already carries any folded norm weight)."""
    if silu_mul:
        g, u = a.chunk(2, dim=-1)
        a = F.silu(g.float()).to(u.dtype) * u
    if norm_eps is not None:
        af = a.float()
        y = F.linear(af, w.float()) * torch.rsqrt(af.pow(2).mean(-1, keepdim=True) + norm_eps)
        y = y + (bias.float() if bias is not None else 0.0)
    else:
        y = F.linear(a.float(), w.float(), bias.float() if bias is not None else None)
    if residual is not None:
        return residual + y.to(residual.dtype)
    return y.to(w.dtype)


@triton.jit
def _gated_gemv_kernel(y_ptr, z_ptr, nw_ptr, a_ptr, w_ptr, b_ptr, r_ptr, o_ptr, N, y_s, z_s, a_s, w_s, r_s, o_s,
                       eps, KS: tl.constexpr, KA: tl.constexpr, G: tl.constexpr, HAS_NORM: tl.constexpr,
                       NORM_FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    # input row = [gated_rmsnorm(y, z) (KS wide, G groups) | a (KA wide)]; BLOCK_K divides KS / G and KA
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + n.to(tl.int64)[:, None] * w_s
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    GW: tl.constexpr = KS // G
    for g in tl.static_range(G):
        rstd = 1.0
        if HAS_NORM:  # the group's 1/rms first: a pass over y and z, 6 bytes a column, from L2
            ss = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(g * GW, (g + 1) * GW, BLOCK_K):
                v = tl.load(y_ptr + m * y_s + k0 + kk).to(tl.float32)
                if not NORM_FIRST:
                    zz = tl.load(z_ptr + m * z_s + k0 + kk).to(tl.float32)
                    v = v * (zz / (1.0 + tl.exp(-zz)))
                ss += v * v
            rstd = tl.rsqrt(tl.sum(ss, axis=0) / GW + eps)
        for k0 in range(g * GW, (g + 1) * GW, BLOCK_K):
            k = k0 + kk
            v = tl.load(y_ptr + m * y_s + k).to(tl.float32)
            zz = tl.load(z_ptr + m * z_s + k).to(tl.float32)
            gate = zz / (1.0 + tl.exp(-zz))
            if HAS_NORM:
                if NORM_FIRST:
                    v = v * rstd * tl.load(nw_ptr + k).to(tl.float32) * gate
                else:
                    v = v * gate * rstd * tl.load(nw_ptr + k).to(tl.float32)
            else:
                v = v * gate
            x = v.to(o_ptr.dtype.element_ty).to(tl.float32)  # rounded as gated_rmsnorm's output is
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None], other=0.0)
            acc += w.to(tl.float32) * x[None, :]
    for k0 in range(0, KA, BLOCK_K):
        k = k0 + kk
        x = tl.load(a_ptr + m * a_s + k).to(tl.float32)
        w = tl.load(w_rows + KS + k[None, :], mask=n_ok[:, None], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    _finish(tl.sum(acc, axis=1), b_ptr, r_ptr, o_ptr, m, n, n_ok, r_s, o_s, HAS_BIAS, True)


def _gated_block_k(d_ssm: int, groups: int, d_attn: int, N: int) -> int:
    """The GEMV's K step, halved until it divides each norm group and the attention part (0: none does)."""
    bk = _config(N, d_ssm + d_attn)[1]
    while bk >= 16 and (d_ssm % groups or (d_ssm // groups) % bk or d_attn % bk):
        bk //= 2
    return bk if bk >= 16 else 0


def gated_gemv_fits(d_ssm: int, groups: int, d_attn: int, N: int) -> bool:
    """Whether gated_gemv can read this row layout (else use gated_rmsnorm + gemv)."""
    return _gated_block_k(d_ssm, groups, d_attn, N) > 0


def gated_gemv(y: torch.Tensor, z: torch.Tensor, norm_w: torch.Tensor | None, groups: int, eps: float,
               norm_before_gate: bool, a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """residual + [gated_rmsnorm(y, z) | a] @ w^T (+ bias), for the output projection of a layer whose
    input is the gated SSM output next to the attention output: the gated norm (fused.gated_rmsnorm's
    arithmetic) happens as the GEMV reads its input. y [M, KS] fp32, z [M, KS] (strided view is fine),
    a [M, KA], w [N, KS + KA], residual [M, N] (may be `out`)."""
    M, KS = y.shape
    KA = a.shape[1]
    N, K = w.shape
    assert K == KS + KA, f"input width {KS} + {KA} does not fit weight {tuple(w.shape)}"
    assert gated_gemv_fits(KS, groups, KA, N), "use gated_rmsnorm + gemv for this shape"
    assert all(t.stride(-1) == 1 for t in (y, z, a, w, residual))
    out = torch.empty_like(residual) if out is None else out
    block_n, _, warps = _config(N, K)
    block_k = _gated_block_k(KS, groups, KA, N)
    _gated_gemv_kernel[(triton.cdiv(N, block_n), M)](
        y, z, norm_w if norm_w is not None else y, a, w, bias if bias is not None else w, residual, out, N,
        y.stride(0), z.stride(0), a.stride(0), w.stride(0), residual.stride(0), out.stride(0), float(eps),
        KS=KS, KA=KA, G=groups, HAS_NORM=norm_w is not None, NORM_FIRST=norm_before_gate,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **pdl(y))
    return out

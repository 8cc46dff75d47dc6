"""Decode projections for 2-64 rows: y = x W^T, streaming W once, split along K so every SM streams.

A decode step's projections only have to read their weights, but with few rows the output is thin:
w_mo and w_down (N = 3072) make 48 tiles of 64 columns for 132 SMs. The grid here is (N tiles,
K splits), with enough splits for whole waves; each program streams its [BLOCK_N, K/SPLIT] strip of W
and the splits meet in fp32 by atomic adds into a zeroed output (SPLIT == 1 stores in the output's
dtype).

On the H200 (bench/results/skinny_gemm_gpu.json, weights cycled past L2) it beats cuBLAS at 8-16 rows
and on the LM head, and ties or loses at 32-64 rows elsewhere, so `preferred` picks per projection.
(Applying silu(gate) * up as w_down's input was loaded, to drop the silu_mul kernel, made that GEMM
2-5x slower: bench/results/skinny_gemm_gpu_silu_dropped.json.)
Reference: `skinny_reference` (F.linear in fp32), compared on ragged M, N, K, splits and bias.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter


@triton.jit
def _finish(acc, b_ptr, o_ptr, m, n, m_ok, n_ok, o_s, pid_k, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] fp32 (+ bias, from the first K split only) -> added into or stored in the output."""
    if HAS_BIAS:
        acc += tl.where(pid_k == 0, 1.0, 0.0) * tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = o_ptr + m.to(tl.int64)[:, None] * o_s + n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask, sem="relaxed")
    else:
        tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M, N, x_s, w_s, o_s,
                   K: tl.constexpr, K_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
                   PDL: tl.constexpr):
    pdl_enter(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    kk = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_SPLIT
    x_rows = x_ptr + m.to(tl.int64)[:, None] * x_s
    w_rows = w_ptr + n.to(tl.int64)[:, None] * w_s
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K_SPLIT, BLOCK_K):  # a compile-time trip count: the loop pipelines
        k = k_lo + k0 + kk
        k_ok = (k < K) & (k0 + kk < K_SPLIT)
        a = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PREC)
    _finish(acc, b_ptr, o_ptr, m, n, m_ok, n_ok, o_s, pid_k, HAS_BIAS, ATOMIC)


@triton.jit
def _skinny_tma_kernel(x_desc, w_desc, b_ptr, o_ptr, M, N, o_s,
                       K: tl.constexpr, K_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PREC: tl.constexpr, PDL: tl.constexpr):
    """The same through tensor descriptors (TMA copies; out-of-range rows and columns read as zero)."""
    pdl_enter(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    k_lo = pid_k * K_SPLIT
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K_SPLIT, BLOCK_K):
        a = x_desc.load([0, k_lo + k0])  # [BLOCK_M, BLOCK_K]
        w = w_desc.load([pid_n * BLOCK_N, k_lo + k0])  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(a, w.T, acc, input_precision=PREC)
    m = tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _finish(acc, b_ptr, o_ptr, m, n, m < M, n < N, o_s, pid_k, HAS_BIAS, ATOMIC)


def _blocks(M: int) -> int:
    return max(16, triton.next_power_of_2(M))


def default_config(M: int, N: int, K: int, sms: int = 132) -> tuple[int, int, int, int, int, bool]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, stages, TMA) from bench/results/skinny_gemm_gpu.json (H200):
    up to 32 rows, the fewest K splits that give two waves of 64-column programs; above, at least one
    wave, three stages and TMA loads (the [64, 128] row tile makes each program heavier)."""
    block_n, block_k = 64, 128
    tiles = -(-N // block_n)
    waves = 2 if M <= 32 else 1
    split = 1
    while tiles * split < waves * sms and K // (2 * split) >= 4 * block_k:
        split *= 2
    return (block_n, block_k, split, 4, 4, False) if M <= 32 else (block_n, block_k, split, 4, 3, True)


# The largest row count at which this kernel beat cuBLAS per projection on the H200, 7B shapes
# (bench/results/skinny_gemm_gpu.json, zeroing the split-K output included; at 32 rows w_down and the
# LM head win alone by 1-2% but the 32-row graph replay got 1% slower with them, so 16). 0: never.
FASTER_UP_TO = {"w_in": 0, "w_mo": 16, "w_gu": 16, "w_down": 16, "lm_head": 16}


def preferred(name: str, rows: int) -> bool:
    """Whether a decode step of `rows` rows should run projection `name` here rather than in cuBLAS."""
    return 1 < rows <= FASTER_UP_TO.get(name, 0)


def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                  out: torch.Tensor | None = None, config: tuple | None = None, tma: bool | None = None
                  ) -> torch.Tensor:
    """x [M, K] (M <= 64, any row stride); w [N, K] contiguous; bias [N] -> [M, N]. With more than one
    K split the sum is accumulated in fp32: the result is fp32, in `out` if given (which must then be
    zeroed)."""
    M = x.shape[0]
    N, K = w.shape
    assert x.shape[1] == K, (x.shape, w.shape)
    assert w.stride(1) == 1 and x.stride(1) == 1 and M <= 64
    cfg = tuple(config) if config is not None else default_config(M, N, K)
    block_n, block_k, split, warps, stages = cfg[:5]
    use_tma = (cfg[5] if len(cfg) > 5 else False) if tma is None else tma
    use_tma = use_tma and K % block_k == 0 and all(  # TMA needs 16-byte aligned bases and row strides
        t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in (x, w))
    k_split = -(-(-(-K // split)) // block_k) * block_k
    split = -(-K // k_split)
    if out is None:
        out = (torch.zeros(M, N, device=x.device, dtype=torch.float32) if split > 1
               else torch.empty(M, N, device=x.device, dtype=x.dtype))
    assert out.shape == (M, N) and out.stride(1) == 1 and (split == 1 or out.dtype == torch.float32)
    grid = (triton.cdiv(N, block_n), split)
    common = dict(K=K, K_SPLIT=k_split, HAS_BIAS=bias is not None, ATOMIC=split > 1, BLOCK_M=_blocks(M),
                  BLOCK_N=block_n, BLOCK_K=block_k, PREC="ieee" if x.dtype == torch.float32 else "tf32",
                  num_warps=warps, num_stages=stages, **pdl(x))
    b = bias if bias is not None else w
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        xd = TensorDescriptor(x, list(x.shape), [x.stride(0), 1], [_blocks(M), block_k])
        wd = TensorDescriptor(w, [N, K], [w.stride(0), 1], [block_n, block_k])
        _skinny_tma_kernel[grid](xd, wd, b, out, M, N, out.stride(0), **common)
    else:
        _skinny_kernel[grid](x, w, b, out, M, N, x.stride(0), w.stride(0), out.stride(0), **common)
    return out


def skinny_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What skinny_linear computes, in fp32."""
    return torch.nn.functional.linear(x.float(), w.float(), bias.float() if bias is not None else None)

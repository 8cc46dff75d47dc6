"""Fused elementwise kernels for the fast path: one launch where eager PyTorch needs five to ten
(which, at 44 layers, would cost more than the weights take to stream at batch 1).

References: FastFalconH1._rms, ._rope (+ K/V index_copy), ._gate, and F.silu(g) * u.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter


@triton.jit
def _add_rmsnorm_kernel(h_ptr, a_ptr, b_ptr, w_ptr, out_h_ptr, out_x_ptr, D, eps,
                        HAS_A: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < D
    h = tl.load(h_ptr + r * D + c, mask=m, other=0.0)
    if HAS_A:
        # a may be an fp32 split-K sum (skinny_gemm): rounded to the stream's dtype as F.linear's output is
        delta = tl.load(a_ptr + r * D + c, mask=m, other=0.0).to(h.dtype)
        if HAS_B:
            delta = delta + tl.load(b_ptr + r * D + c, mask=m, other=0.0).to(h.dtype)
        h = h + delta
        tl.store(out_h_ptr + r * D + c, h, mask=m)
    hf = h.to(tl.float32)
    var = tl.sum(hf * hf, axis=0) / D
    x = (hf * tl.rsqrt(var + eps)).to(h.dtype)
    w = tl.load(w_ptr + c, mask=m, other=0.0)
    tl.store(out_x_ptr + r * D + c, (w * x).to(out_x_ptr.dtype.element_ty), mask=m)


def add_rmsnorm(h: torch.Tensor, weight: torch.Tensor, eps: float, a: torch.Tensor | None = None,
                b: torch.Tensor | None = None):
    """h' = h + (a + b) (when given; a may be fp32); x = weight * rmsnorm(h'). Returns (h', x). All [R, D]
    contiguous."""
    R, D = h.shape
    out_x = torch.empty_like(h)
    out_h = torch.empty_like(h) if a is not None else h
    _add_rmsnorm_kernel[(R,)](h, a if a is not None else h, b if b is not None else h, weight, out_h, out_x, D, eps,
                              HAS_A=a is not None, HAS_B=b is not None, BLOCK=triton.next_power_of_2(D),
                              num_warps=8, **pdl(h))
    return out_h, out_x


@triton.jit
def _rope_store_kernel(proj_ptr, pos_ptr, inv_ptr, kvidx_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
                       proj_s, q_off, k_off, v_off, HQ: tl.constexpr, HKV: tl.constexpr, hd: tl.constexpr,
                       HALF: tl.constexpr, HALF_PAD: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    t = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1)  # 0..HQ-1 query heads, then HKV key heads, then HKV value heads
    i = tl.arange(0, HALF_PAD)
    im = i < HALF
    pos = tl.load(pos_ptr + t).to(tl.float32)
    ang = pos * tl.load(inv_ptr + i, mask=im, other=0.0)
    cos, sin = tl.cos(ang), tl.sin(ang)
    row = proj_ptr + t * proj_s
    if hh < HQ:
        base = row + q_off + hh * hd
        x1 = tl.load(base + i, mask=im, other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF + i, mask=im, other=0.0).to(tl.float32)
        dst = q_out_ptr + (t * HQ + hh) * hd
        tl.store(dst + i, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=im)
        tl.store(dst + HALF + i, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=im)
    else:
        slot = tl.load(kvidx_ptr + t).to(tl.int64)
        if hh < HQ + HKV:
            kh = hh - HQ
            base = row + k_off + kh * hd
            x1 = tl.load(base + i, mask=im, other=0.0).to(tl.float32)
            x2 = tl.load(base + HALF + i, mask=im, other=0.0).to(tl.float32)
            dst = k_cache_ptr + (slot * HKV + kh) * hd
            tl.store(dst + i, (x1 * cos - x2 * sin).to(k_cache_ptr.dtype.element_ty), mask=im)
            tl.store(dst + HALF + i, (x2 * cos + x1 * sin).to(k_cache_ptr.dtype.element_ty), mask=im)
        else:
            vh = hh - HQ - HKV
            base = row + v_off + vh * hd
            dst = v_cache_ptr + (slot * HKV + vh) * hd
            tl.store(dst + i, tl.load(base + i, mask=im).to(v_cache_ptr.dtype.element_ty), mask=im)
            tl.store(dst + HALF + i, tl.load(base + HALF + i, mask=im).to(v_cache_ptr.dtype.element_ty), mask=im)


def rope_and_store(proj: torch.Tensor, q_off: int, k_off: int, v_off: int, positions: torch.Tensor,
                   inv_freq: torch.Tensor, kv_index: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   hq: int, hkv: int, hd: int) -> torch.Tensor:
    """From the fused projection rows [N, W]: rotate q (returned, [N, hq, hd]) and k, and write k and v
    into the flat caches [P*page, hkv, hd] at kv_index. RoPE angles are computed in fp32 from positions."""
    N = proj.shape[0]
    assert proj.stride(-1) == 1 and hd % 2 == 0
    q = torch.empty(N, hq, hd, device=proj.device, dtype=proj.dtype)
    _rope_store_kernel[(N, hq + 2 * hkv)](proj, positions, inv_freq, kv_index, q, k_cache, v_cache, proj.stride(0),
                                         q_off, k_off, v_off, HQ=hq, HKV=hkv, hd=hd, HALF=hd // 2,
                                         HALF_PAD=triton.next_power_of_2(hd // 2), num_warps=1, **pdl(proj))
    return q


@triton.jit
def _gated_norm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, y_s, z_s, out_s, GW, eps,
                       HAS_NORM: tl.constexpr, NORM_FIRST: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    r = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    c = tl.arange(0, BLOCK)
    m = c < GW
    off = g * GW + c
    y = tl.load(y_ptr + r * y_s + off, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r * z_s + off, mask=m, other=0.0).to(tl.float32)
    gate = z / (1.0 + tl.exp(-z))
    if HAS_NORM:
        if not NORM_FIRST:
            y = y * gate
        var = tl.sum(y * y, axis=0) / GW
        y = y * tl.rsqrt(var + eps) * tl.load(w_ptr + off, mask=m, other=0.0).to(tl.float32)
        if NORM_FIRST:
            y = y * gate
    else:
        y = y * gate
    tl.store(out_ptr + r * out_s + off, y.to(out_ptr.dtype.element_ty), mask=m)


def gated_rmsnorm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, groups: int, eps: float,
                  norm_before_gate: bool, out_dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [R, d] (fp32), z [R, d] (a strided view is fine) -> [R, d] in out_dtype (into `out`, any row stride,
    when given)."""
    R, d = y.shape
    if out is None:
        out = torch.empty(R, d, device=y.device, dtype=out_dtype)
    assert out.shape == (R, d) and out.stride(-1) == 1 and y.stride(-1) == 1 and z.stride(-1) == 1
    gw = d // groups
    _gated_norm_kernel[(R, groups)](y, z, weight if weight is not None else y, out, y.stride(0), z.stride(0),
                                    out.stride(0), gw, eps, HAS_NORM=weight is not None, NORM_FIRST=norm_before_gate,
                                    BLOCK=triton.next_power_of_2(gw), num_warps=8, **pdl(y))
    return out


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, I, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < I
    g = tl.load(gu_ptr + r * 2 * I + c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + r * 2 * I + I + c, mask=m, other=0.0)
    act = (g / (1.0 + tl.exp(-g))).to(u.dtype)
    tl.store(out_ptr + r * I + c, act * u, mask=m)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """gu [R, 2I] (gate | up) -> silu(gate) * up [R, I]."""
    R, I2 = gu.shape
    I = I2 // 2
    out = torch.empty(R, I, device=gu.device, dtype=gu.dtype)
    BLOCK = 1024
    _silu_mul_kernel[(R, triton.cdiv(I, BLOCK))](gu, out, I, BLOCK=BLOCK, num_warps=4, **pdl(gu))
    return out

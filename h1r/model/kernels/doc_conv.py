"""The training conv over packed documents, read from a per-token document index (forward and backward).

fla's varlen conv finds its chunks from `cu_seqlens` on the host (a table built from a device-to-host copy), so
its launch grid depends on the step's document layout: no CUDA graph can serve two steps. Here the grid
depends only on the token and channel counts, and the documents enter as data: input s feeds output t when
doc[s] == doc[t] (ids never decrease, so that is "s is in t's document"). The backward recomputes the
pre-activation instead of the forward's output, and writes per-block partial sums of dw and db, summed after.

    y[t, c] = silu(b[c] + sum_j w[c, j] * x[t-K+1+j, c] * [doc[t-K+1+j] == doc[t]])

Reference: h1r.model.ssd.causal_conv1d with `reset` at the document starts (tests/test_doc_conv.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# each kernel's launch: (tokens, channels, warps) per program; for bwd_g a fourth entry > 1 runs _bwd_g4_kernel
# over that many token blocks per program, taking the dw/db sums once per program. Swept by bench/doc_conv_gpu.py
# on an H100 at a 1.5B-deep layer (16k tokens x 2048 channels): 663 -> 515 us for the three kernels against
# the former (64, 128, 4) for all (doc_conv_gpu_2026-12-05.json), then bwd_g 330 -> 193 us with 16 blocks a
# program (doc_conv_gpu_2026-12-05b_h100.json). Some larger tiles fall off a cliff (x10, maybe spilling), so
# re-sweep before widening.
LAUNCH = {"fwd": (32, 128, 4), "bwd_g": (16, 128, 4, 16), "bwd_dx": (16, 256, 4)}


@triton.jit
def _pre_activation(x_ptr, doc_ptr, w_ptr, b_ptr, t, c, tok, ch, d, N, sxt, K: tl.constexpr,
                    HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """b + the masked window sum, fp32 [BT, BC]."""
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=ch, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        ok = tok & (s >= 0)
        ok = ok & (tl.load(doc_ptr + s, mask=ok, other=-1) == d)
        xs = tl.load(x_ptr + s[:, None] * sxt + c[None, :], mask=ok[:, None] & ch[None, :], other=0.0)
        acc += xs.to(tl.float32) * tl.load(w_ptr + c * K + j, mask=ch, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _fwd_kernel(x_ptr, doc_ptr, w_ptr, b_ptr, y_ptr, N, C, sxt, syt,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    tok, ch = t < N, c < C
    d = tl.load(doc_ptr + t, mask=tok, other=-2)
    pre = _pre_activation(x_ptr, doc_ptr, w_ptr, b_ptr, t, c, tok, ch, d, N, sxt, K, HAS_BIAS, BT, BC)
    y = pre * tl.sigmoid(pre)
    tl.store(y_ptr + t[:, None] * syt + c[None, :], y.to(y_ptr.dtype.element_ty), mask=tok[:, None] & ch[None, :])


@triton.jit
def _bwd_g_kernel(x_ptr, doc_ptr, w_ptr, b_ptr, dy_ptr, g_ptr, dw_ptr, db_ptr, N, C, sxt, sdyt,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """g = dy * silu'(pre) [N, C] fp32, and this block's sums of g * x (dw, [blocks, C, K]) and of g (db)."""
    pid = tl.program_id(0)
    t = pid * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    tok, ch = t < N, c < C
    m2 = tok[:, None] & ch[None, :]
    d = tl.load(doc_ptr + t, mask=tok, other=-2)
    pre = _pre_activation(x_ptr, doc_ptr, w_ptr, b_ptr, t, c, tok, ch, d, N, sxt, K, HAS_BIAS, BT, BC)
    sig = tl.sigmoid(pre)
    dy = tl.load(dy_ptr + t[:, None] * sdyt + c[None, :], mask=m2, other=0.0).to(tl.float32)
    g = dy * sig * (1.0 + pre * (1.0 - sig))
    tl.store(g_ptr + t[:, None] * C + c[None, :], g, mask=m2)
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        ok = tok & (s >= 0)
        ok = ok & (tl.load(doc_ptr + s, mask=ok, other=-1) == d)
        xs = tl.load(x_ptr + s[:, None] * sxt + c[None, :], mask=ok[:, None] & ch[None, :], other=0.0)
        tl.store(dw_ptr + (pid * C + c) * K + j, tl.sum(g * xs.to(tl.float32), axis=0), mask=ch)
    if HAS_BIAS:
        tl.store(db_ptr + pid * C + c, tl.sum(g, axis=0), mask=ch)


@triton.jit
def _tap(x_ptr, doc_ptr, t, c, tok, ch, d, sxt, back: tl.constexpr):
    """x[t - back] where it is in t's document, else 0, fp32 [BT, BC]."""
    s = t - back
    ok = tok & (s >= 0)
    ok = ok & (tl.load(doc_ptr + s, mask=ok, other=-1) == d)
    return tl.load(x_ptr + s[:, None] * sxt + c[None, :], mask=ok[:, None] & ch[None, :], other=0.0).to(tl.float32)


@triton.jit
def _bwd_g4_kernel(x_ptr, doc_ptr, w_ptr, b_ptr, dy_ptr, g_ptr, dw_ptr, db_ptr, N, C, sxt, sdyt,
                   HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, STEPS: tl.constexpr):
    """_bwd_g_kernel for K = 4 over STEPS token blocks per program: the products g * x accumulate elementwise
    in [BT, BC] tiles and are summed over tokens once at the end, not once per block (that kernel ran at ~27%
    of copy bandwidth at its best launch, bench/results/doc_conv_gpu_2026-12-05.json)."""
    pid = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    ch = c < C
    w0 = tl.load(w_ptr + c * 4, mask=ch, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(w_ptr + c * 4 + 1, mask=ch, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + c * 4 + 2, mask=ch, other=0.0).to(tl.float32)[None, :]
    w3 = tl.load(w_ptr + c * 4 + 3, mask=ch, other=0.0).to(tl.float32)[None, :]
    bias = tl.zeros([BC], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=ch, other=0.0).to(tl.float32)
    a0 = tl.zeros([BT, BC], dtype=tl.float32)
    a1 = tl.zeros([BT, BC], dtype=tl.float32)
    a2 = tl.zeros([BT, BC], dtype=tl.float32)
    a3 = tl.zeros([BT, BC], dtype=tl.float32)
    ab = tl.zeros([BT, BC], dtype=tl.float32)
    for i in range(STEPS):
        t = (pid * STEPS + i) * BT + tl.arange(0, BT)
        tok = t < N
        m2 = tok[:, None] & ch[None, :]
        d = tl.load(doc_ptr + t, mask=tok, other=-2)
        x0 = _tap(x_ptr, doc_ptr, t, c, tok, ch, d, sxt, 3)  # weight column j holds input t-3+j
        x1 = _tap(x_ptr, doc_ptr, t, c, tok, ch, d, sxt, 2)
        x2 = _tap(x_ptr, doc_ptr, t, c, tok, ch, d, sxt, 1)
        x3 = _tap(x_ptr, doc_ptr, t, c, tok, ch, d, sxt, 0)
        pre = bias[None, :] + x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3
        sig = tl.sigmoid(pre)
        dy = tl.load(dy_ptr + t[:, None] * sdyt + c[None, :], mask=m2, other=0.0).to(tl.float32)
        g = dy * sig * (1.0 + pre * (1.0 - sig))
        tl.store(g_ptr + t[:, None] * C + c[None, :], g, mask=m2)
        a0 += g * x0
        a1 += g * x1
        a2 += g * x2
        a3 += g * x3
        ab += g
    base = dw_ptr + (pid * C + c) * 4
    tl.store(base, tl.sum(a0, axis=0), mask=ch)
    tl.store(base + 1, tl.sum(a1, axis=0), mask=ch)
    tl.store(base + 2, tl.sum(a2, axis=0), mask=ch)
    tl.store(base + 3, tl.sum(a3, axis=0), mask=ch)
    if HAS_BIAS:
        tl.store(db_ptr + pid * C + c, tl.sum(ab, axis=0), mask=ch)


@triton.jit
def _bwd_dx_kernel(g_ptr, doc_ptr, w_ptr, dx_ptr, N, C, sdxt, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """dx[s] = sum_j w[:, j] * g[s+K-1-j] over the outputs in s's document."""
    s = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    tok, ch = s < N, c < C
    d = tl.load(doc_ptr + s, mask=tok, other=-2)
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(K):
        t = s + (K - 1) - j
        ok = tok & (t < N)
        ok = ok & (tl.load(doc_ptr + t, mask=ok, other=-1) == d)
        gt = tl.load(g_ptr + t[:, None] * C + c[None, :], mask=ok[:, None] & ch[None, :], other=0.0)
        acc += gt * tl.load(w_ptr + c * K + j, mask=ch, other=0.0).to(tl.float32)[None, :]
    tl.store(dx_ptr + s[:, None] * sdxt + c[None, :], acc.to(dx_ptr.dtype.element_ty), mask=tok[:, None] & ch[None, :])


def _check(x, weight, doc):
    N, C = x.shape
    if x.stride(1) != 1:
        raise ValueError(f"doc_conv: x needs unit stride over channels, got strides {tuple(x.stride())}")
    if weight.shape[0] != C or weight.dim() != 2 or not weight.is_contiguous():
        raise ValueError(f"doc_conv: weight must be a contiguous [{C}, K] tensor, got {tuple(weight.shape)}")
    if doc.shape != (N,):
        raise ValueError(f"doc_conv: {N} tokens but the document index has shape {tuple(doc.shape)}")
    if x.stride(0) * N >= 2 ** 31 or N * C >= 2 ** 31:  # the kernels index in int32
        raise ValueError(f"doc_conv: {N} tokens x {C} channels pass 2^31 elements; split the packed batch")
    return N, C, weight.shape[1]


class DocConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, doc):
        N, C, K = _check(x, weight, doc)
        y = torch.empty(N, C, device=x.device, dtype=x.dtype)
        BT, BC, warps = LAUNCH["fwd"]
        grid = (triton.cdiv(N, BT), triton.cdiv(C, BC))
        _fwd_kernel[grid](x, doc, weight, bias if bias is not None else weight, y, N, C, x.stride(0), y.stride(0),
                          K=K, HAS_BIAS=bias is not None, BT=BT, BC=BC, num_warps=warps)
        ctx.save_for_backward(x, weight, bias, doc)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, doc = ctx.saved_tensors
        N, C, K = x.shape[0], x.shape[1], weight.shape[1]
        dy = dy if dy.stride(1) == 1 else dy.contiguous()
        BT, BC, warps, *more = LAUNCH["bwd_g"]
        steps = more[0] if more and K == 4 else 1  # token blocks per program (_bwd_g4_kernel, K = 4 only)
        nb = triton.cdiv(N, BT * steps)
        g = torch.empty(N, C, device=x.device, dtype=torch.float32)
        dw = torch.empty(nb, C, K, device=x.device, dtype=torch.float32)
        db = torch.empty(nb, C, device=x.device, dtype=torch.float32) if bias is not None else dw
        args = (x, doc, weight, bias if bias is not None else weight, dy, g, dw, db, N, C, x.stride(0), dy.stride(0))
        if steps > 1:
            _bwd_g4_kernel[(nb, triton.cdiv(C, BC))](*args, HAS_BIAS=bias is not None, BT=BT, BC=BC, STEPS=steps,
                                                     num_warps=warps)
        else:
            _bwd_g_kernel[(nb, triton.cdiv(C, BC))](*args, K=K, HAS_BIAS=bias is not None, BT=BT, BC=BC,
                                                    num_warps=warps)
        dx = torch.empty(N, C, device=x.device, dtype=x.dtype)
        BT, BC, warps = LAUNCH["bwd_dx"]
        _bwd_dx_kernel[(triton.cdiv(N, BT), triton.cdiv(C, BC))](
            g, doc, weight, dx, N, C, dx.stride(0), K=K, BT=BT, BC=BC, num_warps=warps)
        return (dx, dw.sum(0).to(weight.dtype), db.sum(0).to(bias.dtype) if bias is not None else None, None)


def doc_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, doc: torch.Tensor) -> torch.Tensor:
    """x [N, C] (pre-conv xBC of packed documents, unit channel stride), weight [C, K], bias [C] or None,
    doc [N] (document index per token, non-decreasing) -> silu(causal depthwise conv) [N, C] in x's dtype,
    differentiable in x, weight and bias (their gradients in their own dtypes)."""
    return DocConv.apply(x, weight, bias, doc)

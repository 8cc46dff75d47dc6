"""The SSD's per-chunk output, forward and backward, as one Triton program per (chunk, head) (training,
h1r.model.ssd_packed with H1R_SSD_FUSED=1).

ssd_packed's PyTorch path builds the within-chunk matrix M = C.B * L per head as a [chunks, H, Q, Q] tensor
in HBM, multiplies it by x, adds the state entering the chunk through separate batched GEMMs, and joins the
pieces in head-major copies; its backward rebuilds M and writes dM, dML and dcs the same way. On an H200
(1.5B-deep shape, 16k tokens) those elementwise passes ran at 0.5-1 TB/s and were about half the SSD's
kernel time (bench/results/ssd_train_gpu_2026-12-04.log). Here one program holds a chunk's [Q, Q] tile
on chip, for one head:

    forward   y[l]  = sum_{s<=l, same doc} CB[l,s] exp(cs_l - cs_s) xdt[s] + e[l] * (C[l] . S_in)
              e[l]  = exp(cs_l) if token l continues the document that crossed into the chunk, else 0
    backward  dxdt  = M^T dy          (within-chunk part; the chunk-state part is added by the caller)
              dCB  += dy xdt^T * L    (summed over the group's heads by atomic adds, or per head and then
                                       summed: H1R_SSD_DCB_ATOMIC=0)
              dcs   = rowsum(E) - colsum(E) + e * <dy, C . S_in>,   E = dCB_h * CB
              dYo   = dy * e          (the caller's grouped GEMMs give dC and dS_in from it)

CB [nc, G, Q, Q] (fp32) comes from one batched GEMM per group, so the group's heads share it. Matmul
operands are in x's dtype, accumulation and everything else in fp32. Reference: the PyTorch path of
ssd_packed; tests/test_ssd_packed.py compares values and gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from h1r.utils.env import flag

# H1R_SSD_DCB_ATOMIC=0: the backward writes each head's dCB to its own [nc, H, Q, Q] fp32 buffer and sums the
# group's heads with torch, instead of ~50M fp32 atomic adds per 1.5B-deep layer at 16k tokens (24 heads onto
# one [Q, Q] tile per chunk). In the host-bound eager training step the two are within noise: 24,659 tok/s per
# head against 22,369 atomic in one process (bench/results/train_gpu_2026-12-05a.json), the other way round in
# an earlier run; the kernel alone was not timed both ways
DCB_ATOMIC = flag("H1R_SSD_DCB_ATOMIC", True)


@triton.jit
def _decays(cs_ptr, doc_ptr, c, h, H, Q: tl.constexpr):
    """L [Q, Q]: exp(cs_l - cs_s) for s <= l in one document, else 0; e [Q] (see the module docstring)."""
    l = tl.arange(0, Q)
    cs = tl.load(cs_ptr + (c * Q + l) * H + h)
    doc = tl.load(doc_ptr + c * Q + l)
    prev = tl.load(doc_ptr + c * Q - 1, mask=c > 0, other=-1)  # the document at the end of chunk c-1
    same = (doc[:, None] == doc[None, :]) & (l[:, None] >= l[None, :])
    L = tl.where(same, tl.exp(cs[:, None] - cs[None, :]), 0.0)
    e = tl.where(doc == prev, tl.exp(cs), 0.0)
    return L, e


@triton.jit
def _state_out(C_ptr, S_ptr, tok, c, g, hh, G, P, s_sc, s_sg, s_sn,
               N: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """C[l] . S_in[c, head] -> [Q, BP] fp32: what the state entering the chunk contributes, before e."""
    p = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    acc = tl.zeros([Q, BP], dtype=tl.float32)
    for n0 in range(0, N, BN):
        nm = (n0 + nn) < N
        Cb = tl.load(C_ptr + (tok[:, None] * G + g) * N + n0 + nn[None, :], mask=nm[None, :], other=0.0)
        Sb = tl.load(S_ptr + c * s_sc + g * s_sg + (n0 + nn[:, None]) * s_sn + hh * P + p[None, :],
                     mask=nm[:, None] & (p[None, :] < P), other=0.0)
        acc = tl.dot(Cb, Sb.to(Cb.dtype), acc, input_precision=PREC)
    return acc


@triton.jit
def _program_tile(H, HG, P, Q: tl.constexpr, BP: tl.constexpr):
    """This program's chunk c, head h and group g; rows l [Q] and their tokens; columns p [BP]; offsets io
    [Q, BP] into the token-major [T, H, P] tensors and the column mask pm [1, BP]."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    l = tl.arange(0, Q)
    p = tl.arange(0, BP)
    tok = c * Q + l
    return c, h, h // HG, l, p, tok, (tok[:, None] * H + h) * P + p[None, :], (p < P)[None, :]


@triton.jit
def _out_fwd_kernel(x_ptr, C_ptr, S_ptr, cb_ptr, cs_ptr, doc_ptr, y_ptr, H, G, HG, P, s_sc, s_sg, s_sn,
                    N: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    c, h, g, l, p, tok, io, pm = _program_tile(H, HG, P, Q, BP)
    L, e = _decays(cs_ptr, doc_ptr, c, h, H, Q)
    CB = tl.load(cb_ptr + ((c * G + g) * Q + l[:, None]) * Q + l[None, :])  # [Q, Q] fp32
    x = tl.load(x_ptr + io, mask=pm, other=0.0)  # [Q, BP]
    y = tl.dot((CB * L).to(x.dtype), x, input_precision=PREC)
    y += _state_out(C_ptr, S_ptr, tok, c, g, h % HG, G, P, s_sc, s_sg, s_sn, N, Q, BP, BN, PREC) * e[:, None]
    tl.store(y_ptr + io, y, mask=pm)


@triton.jit
def _out_bwd_kernel(x_ptr, C_ptr, S_ptr, cb_ptr, cs_ptr, doc_ptr, dy_ptr, dx_ptr, dcs_ptr, dcb_ptr, dyo_ptr,
                    H, G, HG, P, s_sc, s_sg, s_sn,
                    N: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
                    ATOMIC: tl.constexpr):
    c, h, g, l, p, tok, io, pm = _program_tile(H, HG, P, Q, BP)
    L, e = _decays(cs_ptr, doc_ptr, c, h, H, Q)
    cb_off = ((c * G + g) * Q + l[:, None]) * Q + l[None, :]
    CB = tl.load(cb_ptr + cb_off)
    x = tl.load(x_ptr + io, mask=pm, other=0.0)
    dy = tl.load(dy_ptr + io, mask=pm, other=0.0)  # [Q, BP] fp32
    dyc = dy.to(x.dtype)
    # within the chunk: y = M x with M = CB * L
    dx = tl.dot(tl.trans((CB * L).to(x.dtype)), dyc, input_precision=PREC)  # [Q, BP]
    dML = tl.dot(dyc, tl.trans(x), input_precision=PREC) * L  # [Q, Q]: d loss / d CB from this head
    E = dML * CB  # d loss / d (cs_l - cs_s)
    dcs = tl.sum(E, axis=1) - tl.sum(E, axis=0)
    if ATOMIC:
        tl.atomic_add(dcb_ptr + cb_off, dML, sem="relaxed")
    else:  # [nc, H, Q, Q]: this head's own tile
        tl.store(dcb_ptr + ((c * H + h) * Q + l[:, None]) * Q + l[None, :], dML)
    # the state entering the chunk: y += e * (C . S_in)
    y_in = _state_out(C_ptr, S_ptr, tok, c, g, h % HG, G, P, s_sc, s_sg, s_sn, N, Q, BP, BN, PREC)
    dcs += e * tl.sum(dy * y_in, axis=1)
    tl.store(dyo_ptr + io, (dy * e[:, None]).to(dyo_ptr.dtype.element_ty), mask=pm)
    tl.store(dx_ptr + io, dx, mask=pm)
    tl.store(dcs_ptr + tok * H + h, dcs)


@triton.jit
def _out_bwd_cols_kernel(x_ptr, C_ptr, S_ptr, cb_ptr, cs_ptr, doc_ptr, dy_ptr, dx_ptr, dcs_ptr, dcb_ptr, dyo_ptr,
                         H, G, HG, P, s_sc, s_sg, s_sn,
                         N: tl.constexpr, Q: tl.constexpr, QS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                         PREC: tl.constexpr, ATOMIC: tl.constexpr):
    """_out_bwd_kernel over the [Q, Q] tile in column blocks of QS (the source tokens s), so that only
    [Q, QS] tiles are live at once instead of several [Q, Q] fp32 ones. Each block's column sums of E go
    to dcs at its own tokens; after a barrier the program adds the row sums."""
    c, h, g, l, p, tok, io, pm = _program_tile(H, HG, P, Q, BP)
    cs = tl.load(cs_ptr + tok * H + h)  # [Q]
    doc = tl.load(doc_ptr + tok)
    prev = tl.load(doc_ptr + c * Q - 1, mask=c > 0, other=-1)
    e = tl.where(doc == prev, tl.exp(cs), 0.0)
    dy = tl.load(dy_ptr + io, mask=pm, other=0.0)  # [Q, BP] fp32
    dyc = dy.to(x_ptr.dtype.element_ty)
    rows = tl.zeros([Q], dtype=tl.float32)
    for s0 in tl.static_range(0, Q, QS):
        s = s0 + tl.arange(0, QS)
        ts = c * Q + s
        cs_s = tl.load(cs_ptr + ts * H + h)
        doc_s = tl.load(doc_ptr + ts)
        same = (doc[:, None] == doc_s[None, :]) & (l[:, None] >= s[None, :])
        L = tl.where(same, tl.exp(cs[:, None] - cs_s[None, :]), 0.0)  # [Q, QS]
        cb_off = ((c * G + g) * Q + l[:, None]) * Q + s[None, :]
        CB = tl.load(cb_ptr + cb_off)
        io_s = (ts[:, None] * H + h) * P + p[None, :]
        xs = tl.load(x_ptr + io_s, mask=pm, other=0.0)  # [QS, BP]
        dx = tl.dot(tl.trans((CB * L).to(xs.dtype)), dyc, input_precision=PREC)  # [QS, BP]
        tl.store(dx_ptr + io_s, dx, mask=pm)
        dML = tl.dot(dyc, tl.trans(xs), input_precision=PREC) * L  # [Q, QS]
        E = dML * CB
        rows += tl.sum(E, axis=1)
        tl.store(dcs_ptr + ts * H + h, -tl.sum(E, axis=0))
        if ATOMIC:
            tl.atomic_add(dcb_ptr + cb_off, dML, sem="relaxed")
        else:
            tl.store(dcb_ptr + ((c * H + h) * Q + l[:, None]) * Q + s[None, :], dML)
    y_in = _state_out(C_ptr, S_ptr, tok, c, g, h % HG, G, P, s_sc, s_sg, s_sn, N, Q, BP, BN, PREC)
    tl.store(dyo_ptr + io, (dy * e[:, None]).to(dyo_ptr.dtype.element_ty), mask=pm)
    tl.debug_barrier()  # the column sums stored above, by every thread of the program, are visible now
    dcs = tl.load(dcs_ptr + tok * H + h) + rows + e * tl.sum(dy * y_in, axis=1)
    tl.debug_barrier()  # every thread has read before any overwrites
    tl.store(dcs_ptr + tok * H + h, dcs)


# Columns of the [Q, Q] tile per pass of the backward: None (or Q) keeps _out_bwd_kernel; fewer runs
# _out_bwd_cols_kernel, which holds [Q, BWD_COLS] tiles instead of [Q, Q] ones. 64: the 1.5B-deep cuda_graph
# step at 16k tokens, half the layers checkpointed, H100: micro-step 793 -> 779 ms of GPU time (two baseline
# runs 792.7 and 793.2; bench/results/train_gpu_2026-12-05d_h100.json). Q < 64 keeps the whole tile.
BWD_COLS: int | None = 64


def supported(Q: int, P: int, dtype: torch.dtype) -> bool:
    """Chunk lengths the [Q, Q] tile takes (a power of two, 16..128) and the dtypes tl.dot takes."""
    return Q in (16, 32, 64, 128) and P <= 256 and dtype in (torch.bfloat16, torch.float16, torch.float32)


# warps per program, (Q < 128, Q >= 128), for the forward and the backward kernel. 16 warps for the backward
# at Q = 128 was slower (micro-step 798 against 793 ms, bench/results/train_gpu_2026-12-05d_h100.json).
WARPS = {"fwd": (4, 8), "bwd": (4, 8)}


def _launch_args(xdt, C, S_in, CB, cs, doc, kind: str):
    T, H, P = xdt.shape
    nc, G, Q, _ = CB.shape
    N = C.shape[-1]
    assert T == nc * Q and doc.shape == (T,) and cs.shape == (nc, Q, H), (xdt.shape, CB.shape, cs.shape)
    assert S_in.shape == (nc, G, N, (H // G) * P) and S_in.stride(-1) == 1, (S_in.shape, S_in.stride())
    for t in (xdt, C, CB, cs, doc):
        assert t.is_contiguous()
    if max(xdt.numel(), C.numel(), CB.numel(), S_in.stride(0) * nc) >= 2 ** 31:  # the kernels index in int32
        raise ValueError(f"ssd chunk kernels: {T} tokens x {H} heads x {P} pass 2^31 elements; split the packed "
                         "batch (fewer tokens per call)")
    meta = dict(N=N, Q=Q, BP=max(16, triton.next_power_of_2(P)), BN=min(64, max(16, triton.next_power_of_2(N))),
                PREC="ieee" if xdt.dtype == torch.float32 else "tf32", num_warps=WARPS[kind][Q >= 128])
    return (nc, H), (H, G, H // G, P, S_in.stride(0), S_in.stride(1), S_in.stride(2)), meta


def chunk_output(xdt, C, S_in, CB, cs, doc) -> torch.Tensor:
    """xdt [T, H, P], C [T, G, N] (T = chunks * Q, padded), S_in [nc, G, N, Hg*P] (the state entering each
    chunk), CB [nc, G, Q, Q] fp32, cs [nc, Q, H] fp32 (within-chunk cumulative log-decay), doc [T] (document
    index, padding a document of its own) -> y [T, H, P] fp32."""
    grid, dims, meta = _launch_args(xdt, C, S_in, CB, cs, doc, "fwd")
    y = torch.empty(xdt.shape, device=xdt.device, dtype=torch.float32)
    _out_fwd_kernel[grid](xdt, C, S_in, CB, cs, doc, y, *dims, **meta)
    return y


def chunk_output_backward(dy, xdt, C, S_in, CB, cs, doc):
    """dy [T, H, P] fp32 -> dxdt (within-chunk part) [T, H, P] fp32, dcs [nc, Q, H] fp32, dCB [nc, G, Q, Q]
    fp32 (summed over each group's heads), dYo = dy * e [T, H, P] in xdt's dtype."""
    grid, dims, meta = _launch_args(xdt, C, S_in, CB, cs, doc, "bwd")
    dy = dy.float().contiguous()
    dx = torch.empty_like(dy)
    dcs = torch.empty_like(cs)
    dyo = torch.empty_like(xdt)
    nc, G, Q, _ = CB.shape
    cols = BWD_COLS if BWD_COLS is not None and BWD_COLS < Q else None
    if cols is not None:
        if cols < 16 or Q % cols or cols & (cols - 1):
            raise ValueError(f"ssd_chunk.BWD_COLS={cols}: needs a power of two >= 16 that divides the chunk ({Q})")
        kernel, meta = _out_bwd_cols_kernel, dict(meta, QS=cols)
    else:
        kernel = _out_bwd_kernel
    if DCB_ATOMIC:
        dcb = torch.zeros_like(CB)
        kernel[grid](xdt, C, S_in, CB, cs, doc, dy, dx, dcs, dcb, dyo, *dims, ATOMIC=True, **meta)
        return dx, dcs, dcb, dyo
    H = xdt.shape[1]
    if nc * H * Q * Q >= 2 ** 31:
        raise ValueError(f"ssd chunk kernels: {nc} chunks x {H} heads of [{Q}, {Q}] dCB tiles pass 2^31 elements; "
                         "split the packed batch or set H1R_SSD_DCB_ATOMIC=1")
    dcb_heads = torch.empty(nc, H, Q, Q, device=CB.device, dtype=torch.float32)
    kernel[grid](xdt, C, S_in, CB, cs, doc, dy, dx, dcs, dcb_heads, dyo, *dims, ATOMIC=False, **meta)
    return dx, dcs, dcb_heads.view(nc, G, H // G, Q, Q).sum(2), dyo

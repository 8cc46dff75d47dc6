"""Decode attention over paged K/V (one query token per sequence, GQA), split along the context so a
few long sequences still fill the GPU. Reference: h1r.engine.context.paged_decode_attention.

Pass 1: program (sequence, kv head, split) runs an online softmax over its share of the context for
the query heads of that kv head -> partial output and log-sum-exp. Pass 2 merges the splits.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _attend_block(q, m_i, l_i, acc, k_ptr, v_ptr, table_ptr, s, kvh, tok0, end, scale,
                  kv_page, kv_tok, kv_h, table_s, hd, HD: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                  PREC: tl.constexpr):
    d = tl.arange(0, HD)
    dm = d < hd
    tok = tok0 + tl.arange(0, BLOCK_N)
    valid = tok < end
    page = tl.load(table_ptr + s * table_s + tok // PAGE, mask=valid, other=0).to(tl.int64)
    off = page * kv_page + (tok % PAGE) * kv_tok + kvh * kv_h
    k = tl.load(k_ptr + off[:, None] + d[None, :], mask=valid[:, None] & dm[None, :], other=0.0)
    v = tl.load(v_ptr + off[:, None] + d[None, :], mask=valid[:, None] & dm[None, :], other=0.0)
    sc = tl.dot(q, tl.trans(k), input_precision=PREC).to(tl.float32) * scale  # [GROUP_PAD, BLOCK_N]
    sc = tl.where(valid[None, :], sc, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(sc - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC).to(tl.float32)
    return m_new, l_i, acc


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, ctx_ptr, o_ptr, lse_ptr, scale,
    q_s, q_h, kv_page, kv_tok, kv_h, table_s, o_s, o_h, o_split, lse_s, lse_h, hd,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HD: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    ctx = tl.load(ctx_ptr + s)
    per = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
    start = sp * per
    end = tl.minimum(start + per, ctx)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HD)
    gm = g < GROUP
    heads = kvh * GROUP + g
    dm = d < hd
    q = tl.load(q_ptr + s * q_s + heads[:, None] * q_h + d[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HD], tl.float32)
    n_blocks = tl.cdiv(tl.maximum(end - start, 0), BLOCK_N)
    if INTERPRET:  # the interpreter cannot run a for-loop with a loaded bound; compiled code pipelines the for
        i = 0
        while i < n_blocks:
            m_i, l_i, acc = _attend_block(q, m_i, l_i, acc, k_ptr, v_ptr, table_ptr, s, kvh, start + i * BLOCK_N,
                                          end, scale, kv_page, kv_tok, kv_h, table_s, hd, HD, PAGE, BLOCK_N, PREC)
            i += 1
    else:
        for i in range(0, n_blocks):
            m_i, l_i, acc = _attend_block(q, m_i, l_i, acc, k_ptr, v_ptr, table_ptr, s, kvh, start + i * BLOCK_N,
                                          end, scale, kv_page, kv_tok, kv_h, table_s, hd, HD, PAGE, BLOCK_N, PREC)
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(o_ptr + s * o_s + heads[:, None] * o_h + sp * o_split + d[None, :], out, mask=gm[:, None] & dm[None, :])
    tl.store(lse_ptr + s * lse_s + heads * lse_h + sp, lse, mask=gm)


@triton.jit
def _merge_kernel(o_ptr, lse_ptr, out_ptr, o_s, o_h, o_split, lse_s, lse_h, out_s, out_h, hd,
                  SPLITS: tl.constexpr, SP: tl.constexpr, HD: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    s = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, SP)
    d = tl.arange(0, HD)
    lse = tl.load(lse_ptr + s * lse_s + h * lse_h + sp, mask=sp < SPLITS, other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.exp(lse - m)
    w = w / tl.sum(w, axis=0)
    o = tl.load(o_ptr + s * o_s + h * o_h + sp[:, None] * o_split + d[None, :],
                mask=(sp[:, None] < SPLITS) & (d[None, :] < hd), other=0.0)
    out = tl.sum(o * w[:, None], axis=0)
    tl.store(out_ptr + s * out_s + h * out_h + d, out.to(out_ptr.dtype.element_ty), mask=d < hd)


# launch shape, from bench/attn_gpu.py on an H200 (7B shape: 12 query / 2 kv heads of 128, 16-token pages)
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 4, 2
PROGRAMS_PER_SM = 4  # a (sequence, kv head) program streams its context serially: one per SM is latency-bound


MIN_SPLIT_TOKENS = 64  # one block: at batch 1, 1.5k context, 1/2/4/8 splits took 39/21/13/8 µs (attn_gpu.json)


def num_splits_for(batch: int, kv_heads: int, max_context: int, sms: int = 132) -> int:
    """Split the context until there are about PROGRAMS_PER_SM programs per SM; each split of the longest
    context keeps >= MIN_SPLIT_TOKENS tokens of work. Splits beyond a short context are empty and cost one
    merge term."""
    pairs = max(1, batch * kv_heads)
    want = -(-PROGRAMS_PER_SM * sms // pairs)
    return int(max(1, min(want, max(1, max_context // MIN_SPLIT_TOKENS), 64)))


def paged_decode_attention(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor,
                           context: torch.Tensor, scale: float, splits: int = 1, out: torch.Tensor | None = None,
                           block_n: int | None = None, num_warps: int | None = None,
                           num_stages: int | None = None) -> torch.Tensor:
    """q [S, Hq, hd]; k/v_pages [P, page, Hkv, hd]; page_table [S, M] (int); context [S] -> [S, Hq, hd],
    written into `out` when given (any row stride, e.g. a column slice of a wider buffer)."""
    S, Hq, hd = q.shape
    _, page, Hkv, _ = k_pages.shape
    group = Hq // Hkv
    assert k_pages.stride(-1) == 1 and q.stride(-1) == 1
    o = torch.empty(S, Hq, splits, hd, device=q.device, dtype=torch.float32)
    lse = torch.empty(S, Hq, splits, device=q.device, dtype=torch.float32)
    block_n = block_n or BLOCK_N
    block_n = block_n if page >= block_n or block_n % page == 0 else page
    _paged_decode_kernel[(S, Hkv, splits)](
        q, k_pages, v_pages, page_table, context, o, lse, scale,
        q.stride(0), q.stride(1), k_pages.stride(0), k_pages.stride(1), k_pages.stride(2), page_table.stride(0),
        o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), hd,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HD=max(16, triton.next_power_of_2(hd)), PAGE=page, BLOCK_N=block_n,
        SPLITS=splits, INTERPRET=_INTERPRET, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES, **pdl(q),
    )
    if splits == 1:
        if out is None:
            return o[:, :, 0].to(q.dtype)
        out.copy_(o[:, :, 0])
        return out
    if out is None:
        out = torch.empty(S, Hq, hd, device=q.device, dtype=q.dtype)  # weights exp(lse_i) / sum_j exp(lse_j)
    assert out.stride(-1) == 1
    _merge_kernel[(S, Hq)](o, lse, out, o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
                           out.stride(0), out.stride(1), hd, SPLITS=splits, SP=max(2, triton.next_power_of_2(splits)),
                           HD=max(16, triton.next_power_of_2(hd)), num_warps=4, **pdl(q))
    return out

"""Attention over paged K/V and Mamba mixing over state slots, for one engine step.

A step's tokens are flattened into one row [1, N]: first the decode tokens of S sequences (one each),
then the prefill chunks, each a contiguous segment. These are the PyTorch reference paths; the GPU
fast paths (h1r.model.kernels) plug in behind the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from h1r.engine.cache import EngineCache


@dataclass
class PrefillSegment:
    start: int  # offset in the flat token row
    length: int
    slot: int
    pages: torch.Tensor  # [n_pages] long, pages covering positions [0, context)
    num_cached: int  # tokens already in the cache before this chunk (0: fresh sequence)


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # [N] long
    positions: torch.Tensor  # [N] long
    kv_index: torch.Tensor  # [N] long: flat K/V position (page * page_size + offset) of each token
    # decode part: the first S tokens, one per sequence
    decode_slots: torch.Tensor  # [S] long
    decode_pages: torch.Tensor  # [S, max_pages] long (padded with 0)
    decode_context: torch.Tensor  # [S] long: tokens in cache after this step (incl. the new one)
    prefills: list[PrefillSegment]

    @property
    def num_decode(self) -> int:
        return int(self.decode_slots.shape[0])


def paged_decode_attention(q, k_pages, v_pages, page_table, context, scale):
    """q [S,Hq,hd], k/v_pages [P,page,Hkv,hd], page_table [S,M], context [S] -> [S,Hq,hd].

    GQA without copying K/V per query head: the G = Hq/Hkv query heads that share a K/V head ride
    as G query rows of that head (query head h reads K/V head h // G)."""
    S, Hq, hd = q.shape
    Hkv = k_pages.shape[2]
    flat = page_table.reshape(-1)  # index_select: ~7x faster than advanced indexing on CPU
    k = k_pages.index_select(0, flat).view(S, -1, Hkv, hd).transpose(1, 2)  # [S,Hkv,M*page,hd]
    v = v_pages.index_select(0, flat).view(S, -1, Hkv, hd).transpose(1, 2)
    mask = torch.arange(k.shape[2], device=q.device)[None, :] < context[:, None]  # [S, M*page]
    o = F.scaled_dot_product_attention(q.reshape(S, Hkv, Hq // Hkv, hd), k, v, attn_mask=mask[:, None, None],
                                       scale=scale)  # [S,Hkv,G,hd]
    return o.reshape(S, Hq, hd)


def paged_prefill_attention(q, k_pages, v_pages, pages, num_cached, scale):
    """One sequence's chunk: q [T,Hq,hd] at positions num_cached.., keys from its pages -> [T,Hq,hd]."""
    T, Hq, hd = q.shape
    Hkv = k_pages.shape[2]
    ctx = num_cached + T
    G = Hq // Hkv
    k = k_pages.index_select(0, pages).view(-1, Hkv, hd)[:ctx].transpose(0, 1)  # [Hkv,ctx,hd]
    v = v_pages.index_select(0, pages).view(-1, Hkv, hd)[:ctx].transpose(0, 1)
    qi = torch.arange(T, device=q.device)[:, None] + num_cached
    mask = torch.arange(ctx, device=q.device)[None, :] <= qi  # [T, ctx]
    # the G query heads of a K/V head as G*T query rows of it (no K/V copy per query head)
    qg = q.reshape(T, Hkv, G, hd).permute(1, 2, 0, 3).reshape(Hkv, G * T, hd)
    o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask.repeat(G, 1), scale=scale)  # [Hkv,G*T,hd]
    return o.reshape(Hkv, G, T, hd).permute(2, 0, 1, 3).reshape(T, Hq, hd)


class EngineContext:
    def __init__(self, cache: EngineCache, batch: StepBatch):
        self.cache, self.batch = cache, batch
        self.positions = batch.positions[None]  # [1, N]

    def attention(self, layer_idx, q, k, v, scale):  # q [1,N,Hq,hd], k/v [1,N,Hkv,hd]
        b, c = self.batch, self.cache
        q, k, v = q[0], k[0], v[0]
        kp, vp = c.k[layer_idx], c.v[layer_idx]  # [P,page,Hkv,hd]
        kp.view(-1, *kp.shape[2:]).index_copy_(0, b.kv_index, k.to(kp.dtype))
        vp.view(-1, *vp.shape[2:]).index_copy_(0, b.kv_index, v.to(vp.dtype))
        out = torch.empty_like(q)
        S = b.num_decode
        if S:
            out[:S] = paged_decode_attention(q[:S], kp, vp, b.decode_pages, b.decode_context, scale).to(q.dtype)
        for seg in b.prefills:
            sl = slice(seg.start, seg.start + seg.length)
            out[sl] = paged_prefill_attention(q[sl], kp, vp, seg.pages, seg.num_cached, scale).to(q.dtype)
        return out[None]

    def mamba(self, layer_idx, mixer, xBC, dt):  # xBC [1,N,conv_dim], dt [1,N,H] -> [1,N,d_ssm] fp32
        b, c = self.batch, self.cache
        xBC, dt = xBC[0], dt[0]
        conv, ssm = c.conv[layer_idx], c.ssm[layer_idx]
        y = torch.empty(xBC.shape[0], mixer.d_ssm, dtype=torch.float32, device=xBC.device)
        S = b.num_decode
        if S:
            slots = b.decode_slots
            y[:S], conv1, ssm1 = mixer.mix_step(xBC[:S], dt[:S], conv[slots], ssm[slots])
            conv[slots] = conv1.to(conv.dtype)
            ssm[slots] = ssm1.to(ssm.dtype)
        for seg in b.prefills:
            sl = slice(seg.start, seg.start + seg.length)
            c0 = conv[seg.slot][None] if seg.num_cached else None
            s0 = ssm[seg.slot][None] if seg.num_cached else None
            ys, c1, s1 = mixer.mix(xBC[sl][None], dt[sl][None], c0, s0)
            y[sl] = ys[0]
            conv[seg.slot] = c1[0].to(conv.dtype)
            ssm[seg.slot] = s1[0].to(ssm.dtype)
        return y[None]

    def finish(self):
        pass

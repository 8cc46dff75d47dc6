"""Variable-length prefill over packed segments, each continuing from its own cached state.

Segments are packed into one row of N tokens with `cu_seqlens` [S+1]. References: h1r.model.ssd
(causal_conv1d, ssd_chunked) and h1r.engine.context.paged_prefill_attention, applied per segment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from h1r.model import ssd


def segment_ids(cu_seqlens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (segment of each token [N], offset inside its segment [N])."""
    t = torch.arange(n, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens[1:], t, right=True)
    return seg, t - cu_seqlens[seg]


def varlen_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor,
                       init_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C] raw inputs; weight [C, K]; init_states [S, C, K-1] (zeros for fresh segments)
    -> (silu(conv) [N, C] fp32, final states [S, C, K-1]) — one gather per lag, no per-segment loop."""
    N, Cc = x.shape
    S, _, Km1 = init_states.shape
    K = Km1 + 1
    seg, off = segment_ids(cu_seqlens, N)
    src = torch.cat([init_states.float().transpose(1, 2).reshape(S * Km1, Cc), x.float()])  # [S*(K-1)+N, C]
    t = torch.arange(N, device=x.device)
    w = weight.float()
    y = bias.float().expand(N, Cc).clone() if bias is not None else x.new_zeros(N, Cc, dtype=torch.float32)
    for j in range(K):  # lag j: x_{t-j}, or the segment's history when t-j falls before its start
        idx = torch.where(off >= j, S * Km1 + t - j, seg * Km1 + Km1 + off - j)
        y = y + src[idx] * w[:, K - 1 - j]
    lens = cu_seqlens[1:] - cu_seqlens[:-1]  # [S]
    pos = lens[:, None] - Km1 + torch.arange(Km1, device=x.device)[None, :]  # [S, K-1] positions in segment
    sidx = torch.arange(S, device=x.device)[:, None]
    fidx = torch.where(pos >= 0, S * Km1 + cu_seqlens[:-1, None] + pos, sidx * Km1 + Km1 + pos)
    final = src[fidx].transpose(1, 2)  # [S, C, K-1]
    return F.silu(y), final


def _fla_ssd():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:
        return None
    return chunk_simple_gla


def varlen_ssd(x, dt, A, B, C, cu_seqlens, init_states, chunk_size, cu_host: list[int] | None = None,
               use_fla: bool | None = None):
    """x [N,H,P], dt [N,H] (after softplus/clamp), A [H], B/C [N,G,Ns], init_states [S,H,P,Ns]
    -> (y [N,H,P] fp32 without the D skip, final states [S,H,P,Ns] fp32).

    On CUDA in bf16/fp16 this is fla's chunked simple-GLA (SSD with a scalar decay per head): q=C, k=B, v=x*dt,
    g=dt*A, scale 1, state in [V=P, K=Ns] layout. Elsewhere: the reference scan per segment.
    """
    N, H, P = x.shape
    G = B.shape[1]
    half = x.dtype in (torch.bfloat16, torch.float16)
    fla = _fla_ssd() if (use_fla is None and x.is_cuda and half) or use_fla else None
    if fla is not None:
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
        q = C.repeat_interleave(H // G, dim=1).to(dtype)
        k = B.repeat_interleave(H // G, dim=1).to(dtype)
        v = (x.float() * dt[..., None]).to(dtype)
        g = (dt * A.float()).float()
        o, final = fla(q[None], k[None], v[None], g=g[None], scale=1.0, initial_state=init_states.float(),
                       output_final_state=True, state_v_first=True, cu_seqlens=cu_seqlens,
                       cu_seqlens_cpu=torch.tensor(cu_host) if cu_host is not None else None)
        return o[0].float(), final.float()
    cu = cu_host if cu_host is not None else cu_seqlens.tolist()
    ys, finals = [], []
    for s in range(len(cu) - 1):
        a, b = cu[s], cu[s + 1]
        y, f = ssd.ssd_chunked(x[a:b][None], dt[a:b][None], A, B[a:b][None], C[a:b][None], chunk_size,
                               init_states[s:s + 1].float())
        ys.append(y[0])
        finals.append(f[0])
    return torch.cat(ys), torch.stack(finals)


def _flash_with_lse(q, k, v, causal: bool, scale: float):
    """q [T,H,d], k/v [L,H,d] -> (out [T,H,d], lse [H,T]) through the flash kernel."""
    out = torch.ops.aten._scaled_dot_product_flash_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], 0.0, causal, False, scale=scale)
    return out[0][0].transpose(0, 1), out[1][0]


def varlen_attention(q, k, v, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int, scale: float):
    """All prefill segments in one flash call: q [Nq,Hq,d] packed by cu_q, k/v [Nk,Hkv,d] (each segment's
    whole context) packed by cu_k; causal with each query block aligned to the end of its keys (FA2's
    rule when seqlen_q != seqlen_k); GQA handled by the kernel. CUDA and bf16/fp16 only."""
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k,
                                                  0.0, True, False, scale=scale)
    return out[0]


def segment_attention(q, k, v, num_cached: int, scale: float):
    """One segment: q [T,Hq,d] at positions num_cached.., k/v [num_cached+T, Hkv, d] -> [T,Hq,d].

    Causal with the query block aligned to the end of the keys. On CUDA: flash attention, with the
    cached prefix and the new block done separately and merged by their log-sum-exps.
    """
    T, Hq, d = q.shape
    Hkv = k.shape[1]
    if Hq != Hkv:
        k, v = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        o_new, lse_new = _flash_with_lse(q, k[num_cached:], v[num_cached:], True, scale)
        if num_cached == 0:
            return o_new
        o_old, lse_old = _flash_with_lse(q, k[:num_cached], v[:num_cached], False, scale)
        m = torch.maximum(lse_new, lse_old)
        w_new, w_old = torch.exp(lse_new - m), torch.exp(lse_old - m)  # [H,T]
        tot = (w_new + w_old).transpose(0, 1)[..., None]
        return ((o_new.float() * w_new.transpose(0, 1)[..., None] + o_old.float() * w_old.transpose(0, 1)[..., None])
                / tot).to(q.dtype)
    ctx = num_cached + T
    qi = torch.arange(T, device=q.device)[:, None] + num_cached
    mask = torch.arange(ctx, device=q.device)[None, :] <= qi
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                       scale=scale)
    return o.transpose(0, 1)

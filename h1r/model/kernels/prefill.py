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


def _cpu_tensor(cu_host):
    """fla memoises its chunk index tables by argument *identity*: pass the same CPU tensor to every layer
    of a step (PrefillPlan.cu_cpu) and they are built once, not with a synchronising copy per call."""
    if cu_host is None or isinstance(cu_host, torch.Tensor):
        return cu_host
    return torch.tensor(cu_host)


def _fla_conv():
    try:
        from fla.modules.causal_conv1d import causal_conv1d
    except Exception:
        return None
    return causal_conv1d


def varlen_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor,
                       init_states: torch.Tensor, cu_host: list[int] | torch.Tensor | None = None,
                       use_fla: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C] raw inputs; weight [C, K]; init_states [S, C, K-1] (zeros for fresh segments)
    -> (silu(conv) [N, C], final states [S, C, K-1]).

    On CUDA in bf16/fp16: fla's varlen causal conv (one pass; output in x's dtype), its [S, C, K] states
    carrying one unused oldest column. Elsewhere: the reference below (fp32 output)."""
    half = x.dtype in (torch.bfloat16, torch.float16)
    fla = _fla_conv() if (use_fla is None and x.is_cuda and half) or use_fla else None
    if fla is not None:
        S, Cc, Km1 = init_states.shape
        init = x.new_zeros(S, Cc, Km1 + 1)
        init[..., 1:] = init_states
        y, final = fla(x[None], weight=weight.to(x.dtype), bias=bias.to(x.dtype) if bias is not None else None,
                       initial_state=init, output_final_state=True, activation="silu", cu_seqlens=cu_seqlens,
                       cu_seqlens_cpu=_cpu_tensor(cu_host))
        return y[0], final[..., 1:]
    return _reference_varlen_conv(x, weight, bias, cu_seqlens, init_states)


def _reference_varlen_conv(x, weight, bias, cu_seqlens, init_states):
    """One gather per lag over all segments, no per-segment loop; fp32."""
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


FUSED_INPUTS = True  # the Triton kernel for fla's q/k/v/g on CUDA (False: the PyTorch reference below)


def ssd_inputs_reference(x, dt, A, B, C, dtype):
    """SSD as simple GLA: q = C, k = B per head, v = x * dt, g = dt * A (see varlen_ssd)."""
    H, G = x.shape[1], B.shape[1]
    q = C.to(dtype).repeat_interleave(H // G, dim=1)
    k = B.to(dtype).repeat_interleave(H // G, dim=1)
    v = torch.mul(x, dt[..., None]).to(dtype)  # fp32 product (type promotion), one rounding
    g = dt.float() * A.float()
    return q, k, v, g


def varlen_ssd(x, dt, A, B, C, cu_seqlens, init_states, chunk_size, cu_host: list[int] | torch.Tensor | None = None,
               use_fla: bool | None = None):
    """x [N,H,P], dt [N,H] (after softplus/clamp), A [H], B/C [N,G,Ns], init_states [S,H,P,Ns]
    -> (y [N,H,P] without the D skip (x's dtype on the fla path, else fp32), final states [S,H,P,Ns] fp32).

    On CUDA in bf16/fp16 this is fla's chunked simple-GLA (SSD with a scalar decay per head): q=C, k=B, v=x*dt,
    g=dt*A, scale 1, state in [V=P, K=Ns] layout. Elsewhere: the reference scan per segment.
    """
    N, H, P = x.shape
    G = B.shape[1]
    half = x.dtype in (torch.bfloat16, torch.float16)
    fla = _fla_ssd() if (use_fla is None and x.is_cuda and half) or use_fla else None
    if fla is not None:
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
        if x.is_cuda and FUSED_INPUTS:
            from h1r.model.kernels.ssd_inputs import ssd_inputs

            q, k, v, g = ssd_inputs(x, dt, A, B, C, dtype)
        else:
            q, k, v, g = ssd_inputs_reference(x, dt, A, B, C, dtype)
        o, final = fla(q[None], k[None], v[None], g=g[None], scale=1.0, initial_state=init_states.float(),
                       output_final_state=True, state_v_first=True, cu_seqlens=cu_seqlens,
                       cu_seqlens_cpu=_cpu_tensor(cu_host))
        return o[0], final.float()
    cu = (cu_host.tolist() if isinstance(cu_host, torch.Tensor) else cu_host) if cu_host is not None \
        else cu_seqlens.tolist()
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

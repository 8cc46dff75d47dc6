"""Pure-PyTorch reference for the Mamba-2 branch: causal depthwise conv and the SSD scan.

Every fast path (Triton kernels) is tested against these functions. Everything inside is fp32.

Glossary (Mamba-2 paper symbols):
    b  batch rows            T  time steps             H  SSM heads        P  head dim
    G  B/C groups            N  state size (d_state)   Q  chunk length     C_ conv channels
    x  [b,T,H,P] input       dt [b,T,H] step Δ (after softplus + clamp)    A [H] (negative)
    B, C [b,T,G,N]           S  [b,H,P,N] state: S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t ⊗ B_t;  y_t = S_t C_t

`reset` [b,T] marks the first token of a new document inside a packed row: the state (and the conv
window) does not carry across it. `valid` [b,T] marks real tokens; padding (left or right) has no
effect on real tokens nor on the final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., Q] -> [..., Q, Q] with out[..., l, s] = sum_{k=s+1..l} a_k for s <= l, -inf above.

    Built from a masked cumsum (no differences of cumsums), so a = -inf (a document reset) stays exact.
    """
    Q = a.shape[-1]
    x = a[..., None].expand(*a.shape, Q)  # x[..., l, s] = a_l
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=-1)
    x = x.masked_fill(~strict, 0.0)
    out = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~keep, -torch.inf)


def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None, reset=None):
    """Chunked SSD scan (prefill / training). Returns y [b,T,H,P] (no D skip) and final S [b,H,P,N].

    x [b,T,H,P], dt [b,T,H], A [H], B/C [b,T,G,N], initial_state [b,H,P,N] or None, reset [b,T] bool or None.
    """
    b, T, H, P = x.shape
    G, N = B.shape[-2], B.shape[-1]
    Q = chunk_size
    x, dt, B, C, A = x.float(), dt.float(), B.float(), C.float(), A.float()
    pad = (-T) % Q
    if pad:  # dt = 0 on padding: decay 1 and no input, so the final state is exact
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // Q
    a = dt * A  # [b,T',H] log-decay per step (<= 0)
    if reset is not None:
        reset = F.pad(reset, (0, pad)) if pad else reset
        a = torch.where(reset[..., None], torch.full_like(a, -torch.inf), a)
    xdt = x * dt[..., None]  # [b,T',H,P]
    Bh = B.repeat_interleave(H // G, dim=2).reshape(b, c, Q, H, N)
    Ch = C.repeat_interleave(H // G, dim=2).reshape(b, c, Q, H, N)
    xdt = xdt.reshape(b, c, Q, H, P)
    a = a.reshape(b, c, Q, H).permute(0, 3, 1, 2)  # [b,H,c,Q]

    # 1. intra-chunk (diagonal blocks): y_l += sum_{s<=l} (C_l.B_s) exp(a_{s+1..l}) xdt_s
    seg = segsum(a)  # [b,H,c,Q,Q]
    L = torch.exp(seg)
    CB = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh)
    y_diag = torch.einsum("bhcls,bcshp->bclhp", CB * L, xdt)

    # 2. state contributed by each chunk, starting from zero
    decay_to_end = torch.exp(seg[..., -1, :])  # [b,H,c,Q]: exp(a_{s+1..Q-1})
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", Bh, decay_to_end, xdt)  # [b,c,H,P,N]

    # 3. inter-chunk recurrence: state entering each chunk, and the final state
    S0 = initial_state.float() if initial_state is not None else x.new_zeros(b, H, P, N)
    states = torch.cat([S0[:, None], chunk_states], dim=1)  # [b,c+1,H,P,N]
    chunk_total = a.sum(dim=-1)  # [b,H,c]
    decay_chunk = torch.exp(segsum(F.pad(chunk_total, (1, 0))))  # [b,H,c+1,c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    state_in, final_state = states[:, :-1], states[:, -1]

    # 4. output from the state entering the chunk: y_l += exp(a_{0..l}) C_l . S_in
    decay_from_start = torch.exp(torch.cumsum(a, dim=-1))  # [b,H,c,Q]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, state_in, decay_from_start)

    y = (y_diag + y_off).reshape(b, c * Q, H, P)[:, :T]
    return y, final_state


def ssd_sequential(x, dt, A, B, C, initial_state=None, reset=None):
    """The recurrence one step at a time: the ground truth the chunked scan is tested against."""
    b, T, H, P = x.shape
    G, N = B.shape[-2], B.shape[-1]
    S = initial_state.float().clone() if initial_state is not None else x.new_zeros(b, H, P, N, dtype=torch.float32)
    ys = []
    for t in range(T):
        if reset is not None:
            S = S * (~reset[:, t]).float()[:, None, None, None]
        y, S = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], S)
        ys.append(y)
    return torch.stack(ys, dim=1), S


def ssd_step(x, dt, A, B, C, state):
    """One decode step. x [b,H,P], dt [b,H], B/C [b,G,N], state [b,H,P,N] -> (y [b,H,P], new state fp32)."""
    H, G = x.shape[1], B.shape[1]
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    Bh = B.repeat_interleave(H // G, dim=1)  # [b,H,N]
    Ch = C.repeat_interleave(H // G, dim=1)
    dA = torch.exp(dt * A.float())  # [b,H]
    S = state.float() * dA[..., None, None] + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", S, Ch)
    return y, S


def doc_positions(reset: torch.Tensor) -> torch.Tensor:
    """reset [b,T] bool -> index of each token inside its document [b,T] (long)."""
    b, T = reset.shape
    t = torch.arange(T, device=reset.device).expand(b, T)
    start = torch.where(reset, t, torch.zeros_like(t))
    start = torch.cummax(start, dim=1).values
    return t - start


def causal_conv1d(x, weight, bias=None, initial_state=None, reset=None, valid=None):
    """Depthwise causal conv + SiLU. x [b,T,C] (pre-conv xBC), weight [C,K], bias [C],
    initial_state [b,C,K-1] (the last K-1 raw inputs before x). Returns (y [b,T,C], final state [b,C,K-1]).

    y_t = silu(bias + sum_j weight[:, K-1-j] * x_{t-j}); inputs before a reset or before the start of an
    unseeded sequence count as zero.
    """
    b, T, Cc = x.shape
    K = weight.shape[-1]
    xf = x.float()
    if valid is not None:
        xf = xf * valid[..., None].float()
    hist = initial_state.float().transpose(1, 2) if initial_state is not None else xf.new_zeros(b, K - 1, Cc)
    xx = torch.cat([hist, xf], dim=1)  # [b, K-1+T, C]
    w = weight.float()
    y = xf.new_zeros(b, T, Cc) if bias is None else bias.float().expand(b, T, Cc).clone()
    pos = doc_positions(reset) if reset is not None else None
    for j in range(K):  # lag j: input x_{t-j} sits at xx[:, K-1+t-j]
        term = xx[:, K - 1 - j: K - 1 - j + T] * w[:, K - 1 - j]
        if pos is not None:
            term = term * (pos >= j)[..., None].float()
        y = y + term
    y = F.silu(y)
    if valid is None:
        final = xx[:, -(K - 1):].transpose(1, 2)
    else:  # the last K-1 real inputs of each row (history counts as real)
        keep = torch.cat([torch.ones(b, K - 1, dtype=torch.bool, device=x.device), valid.bool()], dim=1)
        final = torch.stack([xx[i, keep[i].nonzero().squeeze(1)[-(K - 1):]] for i in range(b)]).transpose(1, 2)
    return y, final


def conv_step(x, conv_state, weight, bias=None):
    """One decode step of the conv. x [b,C], conv_state [b,C,K-1] -> (y [b,C], new state [b,C,K-1])."""
    window = torch.cat([conv_state.float(), x.float()[..., None]], dim=-1)  # [b,C,K]
    y = (window * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return F.silu(y), window[..., 1:]

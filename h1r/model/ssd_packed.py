"""Chunked SSD over packed documents, with B/C shared per group and a hand-written backward (training).

Why not fla's simple-GLA kernels: they see every head as its own q/k, so with G=1 group they repeat C and B
24 times (24x the C.B work and 24x the saved q/k), and their chunked backward is disabled on Hopper with
Triton < 3.7.1 (fla #640), which leaves the quadratic within-document kernel (whose dA gradient measured
8-15% off fp32 on an H200, bench/results/ssd_train_gpu.json). This is the Mamba-2 chunked algorithm as
batched GEMMs: linear in the sequence, C.B once per group and chunk, the state GEMMs batched over (chunk,
group) with all the group's heads side by side. It is plain PyTorch: the same code runs on CPU (tested
against an fp64 recurrence) and GPU, where the elementwise chains between the GEMMs are fused by
torch.compile (H1R_COMPILE=0 keeps them eager). Where the Triton kernels run, the state passing between
chunks (kernels/state_passing.py) and each chunk's output, forward and backward (kernels/ssd_chunk.py), leave
PyTorch; this path stays their reference.

Symbols as in h1r.model.ssd; one packed row of n tokens, Q = chunk length, nc = chunks, Hg = H/G heads per
group, cs = within-chunk inclusive cumsum of the log-decay a = dt*A:

    y_diag[l]  = sum_{s<=l, same doc} (C_l.B_s) exp(cs_l - cs_s) xdt_s                 (intra-chunk)
    S[c]       = sum_s exp(cs_{Q-1} - cs_s) [doc_s = doc_end(c)] xdt_s (x) B_s           (state made by chunk c)
    S_in[z]    = sum_{c<z} Gam[z,c] S[c],  Gam[z,c] = exp(tot_{c+1} + .. + tot_{z-1}) [no reset between]
    y_off[l]   = exp(cs_l) [doc_l = doc_end(z-1)] C_l . S_in[z]                            (state entering)

Matmul operands are in the inputs' dtype (bf16 under autocast) with fp32 accumulation; decays, masks and
the output are fp32 (fp64 for fp64 inputs). The backward saves the inputs and S_in and recomputes the rest.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from h1r.model.ssd import segsum
from h1r.utils.env import flag

if TYPE_CHECKING:
    from h1r.model.kernels.graphs import LayerGraphs

# fuse the elementwise chains with torch.compile on CUDA (COMPILE_ON_CPU: tests compare the two)
COMPILE = flag("H1R_COMPILE", True)
COMPILE_ON_CPU = False
# Where the Triton kernels run (CUDA, or TRITON_INTERPRET=1), two pieces leave PyTorch; 0 keeps the PyTorch
# path for debugging. H1R_SSD_SCAN: states pass between chunks by a scan (kernels/state_passing.py), not the
# dense [nc, nc] product. H1R_SSD_FUSED: each chunk's output, forward and backward, in one program per
# (chunk, head) (kernels/ssd_chunk.py), not [chunks, H, Q, Q] tensors and head-major copies. H200, 1.5B-deep
# SSD at 16k tokens, forward+backward: 7.2 ms -> 4.4 ms with both (bench/results/ssd_train_gpu_2026-12-04.json).
SCAN = flag("H1R_SSD_SCAN", True)
FUSED = flag("H1R_SSD_FUSED", True)


def _kernels_run(t: torch.Tensor) -> bool:
    """The Triton kernels run for t: on CUDA, or in the interpreter for fp32 (its bf16 arithmetic is wrong)."""
    from h1r.model import kernels

    if not kernels.available(t.device):
        return False
    return t.is_cuda or t.dtype == torch.float32


def _use_scan(t: torch.Tensor) -> bool:
    # the scan carries fp32, so fp64 (the tests' exact path) keeps the dense product
    return SCAN and t.dtype != torch.float64 and _kernels_run(t)


def _use_fused(k: "_Chunks") -> bool:
    if not FUSED or not _kernels_run(k.xdt):
        return False
    from h1r.model.kernels.ssd_chunk import supported

    return supported(k.Q, k.P, k.cd)


def _fused(fn):
    compiled = None

    @functools.wraps(fn)
    def run(*args):
        nonlocal compiled
        if COMPILE and (args[0].is_cuda or COMPILE_ON_CPU):
            if compiled is None:
                compiled = torch.compile(fn, dynamic=True)
            return compiled(*args)
        return fn(*args)

    return run


def doc_ids_from_cu(cu: torch.Tensor, n: int) -> torch.Tensor:
    """cu_seqlens [docs+1] -> document index of each of the n tokens [n] (int64, non-decreasing)."""
    starts = torch.zeros(n, dtype=torch.int64, device=cu.device)
    starts[cu[1:-1].long()] = 1
    return starts.cumsum(0)


# ---- the fused elementwise pieces (shapes: cs [nc,Q,H], xdt/dy [nc,Q,H,P], masks [nc,Q(,Q)]) ----------------

def _decay_L(cs, same):
    """[nc,H,Q,Q]: exp(cs_l - cs_s) for s <= l in one document, else 0."""
    csh = cs.transpose(1, 2)
    diff = csh[..., :, None] - csh[..., None, :]
    return torch.exp(diff.masked_fill(~same[:, None], -torch.inf))


@_fused
def _intra_matrix(cs, CB, same, out_dtype: torch.dtype):
    """CB [nc,G,Q,Q] (per group) * L (per head) -> M [nc,H,Q,Q] in out_dtype."""
    nc, Q, H = cs.shape
    G = CB.shape[1]
    L = _decay_L(cs, same).view(nc, G, H // G, Q, Q)
    return (CB[:, :, None] * L).view(nc, H, Q, Q).to(out_dtype)


@_fused
def _intra_grads(dM, cs, CB, same):
    """dM [nc,H,Q,Q] -> dCB [nc,G,Q,Q] (summed over the group's heads), dcs [nc,Q,H] (through L)."""
    nc, Q, H = cs.shape
    G = CB.shape[1]
    L = _decay_L(cs, same).view(nc, G, H // G, Q, Q)
    dML = dM.view(nc, G, H // G, Q, Q).to(CB.dtype) * L
    E = (dML * CB[:, :, None]).view(nc, H, Q, Q)  # d loss / d (cs_l - cs_s)
    return dML.sum(2), (E.sum(-1) - E.sum(-2)).transpose(1, 2)


@_fused
def _state_inputs(xdt, cs, to_end):
    """xdt * decay to the chunk's end (0 across a document start) [nc,Q,H,P], in xdt's dtype."""
    w = torch.exp(cs[:, -1:] - cs) * to_end[..., None]
    return (xdt.to(cs.dtype) * w[..., None]).to(xdt.dtype)


@_fused
def _state_input_grads(dxw, xdt, cs, to_end):
    """dxw [nc,Q,H,P] (grad of _state_inputs' output) -> dxdt part [nc,Q,H,P] fp32, dcs [nc,Q,H]."""
    w = torch.exp(cs[:, -1:] - cs) * to_end[..., None]
    dxw = dxw.to(cs.dtype)
    dw = (dxw * xdt.to(cs.dtype)).sum(-1) * w  # d loss / d (cs_end - cs_s)
    dcs = -dw
    dcs[:, -1] += dw.sum(1)
    return dxw * w[..., None], dcs


@_fused
def _combine(y_diag, y_raw, cs, from_start):
    """y_diag [nc,Q,H,P] + exp(cs) [doc continues] * y_raw -> fp32 [nc,Q,H,P]."""
    e = torch.exp(cs) * from_start[..., None]
    return y_diag.to(cs.dtype) + y_raw.to(cs.dtype) * e[..., None]


@_fused
def _off_grads(dy, y_raw, cs, from_start, out_dtype: torch.dtype):
    """-> dcs [nc,Q,H] through e, and d(y_raw) = dy * e [nc,Q,H,P] in out_dtype."""
    e = torch.exp(cs) * from_start[..., None]
    return (dy * y_raw.to(cs.dtype)).sum(-1) * e, (dy * e[..., None]).to(out_dtype)


def _chunk_decay(tot: torch.Tensor, gam_mask: torch.Tensor) -> torch.Tensor:
    """tot [nc,H] (each chunk's summed log-decay), gam_mask [nc,nc] -> Gam [H,nc,nc]: Gam[h,z,c] (c < z)
    carries the state made by chunk c to the start of chunk z, exp(tot_{c+1} + .. + tot_{z-1}); zero where a
    document starts in between (gam_mask False)."""
    nc = tot.shape[0]
    E = torch.exp(segsum(tot.t()))  # [H,nc,nc]: E[l,s] = exp(tot_{s+1} + .. + tot_l), 0 above the diagonal
    # row z of Gam is row z-1 of E (the product stops before chunk z); row 0 is zero (nothing enters chunk 0)
    return F.pad(E, (0, 0, 1, 0))[:, :nc] * gam_mask


def _chunk_decay_grad(gam: torch.Tensor, dgam: torch.Tensor) -> torch.Tensor:
    """d loss / d tot [nc,H]: tot_k is in the exponent of Gam[z,c] for every c < k < z, so
    dtot_k = sum_{z>k} sum_{c<k} dgam[z,c] gam[z,c]."""
    R = dgam * gam  # [H,nc,nc]
    before = F.pad(R.cumsum(-1)[..., :-1], (1, 0))  # [H,z,k]: sum_{c<k} R[z,c]
    after = before.flip(-2).cumsum(-2).flip(-2)  # [H,z,k]: sum_{z'>=z} of the above
    return F.pad(after.diagonal(offset=-1, dim1=-2, dim2=-1), (0, 1)).t()  # take z = k+1; the last chunk gets 0


class PackedLayout:
    """Where the documents fall in the chunks: the same for every layer of a step, so the context builds it
    once (`layout_for`) instead of each layer's forward and backward rebuilding a dozen small tensors."""

    def __init__(self, doc: torch.Tensor, Q: int):
        n = doc.shape[0]
        self.n, self.Q, self.pad = n, Q, (-n) % Q
        if self.pad:  # trailing padding: a document of its own
            doc = torch.cat([doc, doc[-1:].expand(self.pad) + 1])
        self.doc = doc.contiguous()  # [nc*Q]
        self.nc = (n + self.pad) // Q
        docc = doc.view(self.nc, Q)
        self.doc_end = docc[:, -1]  # [nc]
        doc_prev = torch.cat([docc.new_full((1,), -1), self.doc_end[:-1]])  # doc at the end of chunk z-1
        tril = torch.ones(Q, Q, dtype=torch.bool, device=doc.device).tril()
        self.same = (docc[:, :, None] == docc[:, None, :]) & tril  # [nc,Q,Q] (l, s)
        self.to_end = docc == self.doc_end[:, None]  # [nc,Q]: token s reaches its chunk's end
        self.from_start = docc == doc_prev[:, None]  # [nc,Q]: token l sees the state entering its chunk
        self.gam_mask = F.pad(self.doc_end[:, None] == self.doc_end[None, :], (0, 0, 1, 0))[:self.nc]  # [nc,nc]


_last_layout: tuple | None = None  # (doc, Q, layout): one entry, keyed by the doc tensor's identity


def layout_for(doc: torch.Tensor, Q: int) -> PackedLayout:
    global _last_layout
    if _last_layout is None or _last_layout[0] is not doc or _last_layout[1] != Q:
        _last_layout = (doc, Q, PackedLayout(doc, Q))
    return _last_layout[2]


class _Chunks:
    """The per-call views shared by forward and backward."""

    def __init__(self, xdt, a, B, C, lay: PackedLayout):
        n, H, P = xdt.shape
        G, N = B.shape[1:]
        if n != lay.n:
            raise ValueError(f"ssd_packed: {n} tokens but the document index covers {lay.n}")
        Q, pad, nc = lay.Q, lay.pad, lay.nc
        if pad:  # trailing padding: no input, no decay
            xdt, B, C = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
            a = F.pad(a, (0, 0, 0, pad))
        Hg = H // G
        self.n, self.pad, self.nc, self.Q, self.H, self.G, self.Hg, self.P, self.N = n, pad, nc, Q, H, G, Hg, P, N
        self.cd = xdt.dtype  # matmul operand dtype
        self.fd = torch.promote_types(xdt.dtype, torch.float32)  # decays, masks, outputs
        self.xdt_tok, self.C_tok = xdt, C  # token-major [nc*Q, H, P], [nc*Q, G, N]
        self.xdt = xdt.view(nc, Q, H, P)
        self.Bc = B.view(nc, Q, G, N).transpose(1, 2)  # [nc,G,Q,N]
        self.Cc = C.view(nc, Q, G, N).transpose(1, 2)
        self.cs = a.view(nc, Q, H).to(self.fd).cumsum(1)  # [nc,Q,H]
        self.lay = lay

    def CB(self) -> torch.Tensor:
        return self.Cc.to(self.fd) @ self.Bc.to(self.fd).transpose(-1, -2)  # [nc,G,Q,Q]

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """token layout [nc,Q,H,P] -> [nc,G,Q,Hg*P] (a group's heads side by side)."""
        return t.reshape(self.nc, self.Q, self.G, self.Hg * self.P).transpose(1, 2)

    def ungrouped(self, t: torch.Tensor) -> torch.Tensor:
        """[nc,G,Q,Hg*P] -> token layout [nc,Q,H,P]."""
        return t.transpose(1, 2).reshape(self.nc, self.Q, self.H, self.P)

    def per_head(self, S: torch.Tensor) -> torch.Tensor:
        """states [nc,G,N,Hg*P] -> [H,nc,N*P]."""
        nc, G, N, Hg, P = self.nc, self.G, self.N, self.Hg, self.P
        return S.view(nc, G, N, Hg, P).permute(1, 3, 0, 2, 4).reshape(self.H, nc, N * P)

    def per_chunk(self, S: torch.Tensor) -> torch.Tensor:
        """[H,nc,N*P] -> states [nc,G,N,Hg*P]."""
        nc, G, N, Hg, P = self.nc, self.G, self.N, self.Hg, self.P
        return S.view(G, Hg, nc, N, P).permute(2, 0, 3, 1, 4).reshape(nc, G, N, Hg * P)

    def state_inputs(self) -> torch.Tensor:
        """xdt weighted by its decay to the chunk's end, grouped [nc,G,Q,Hg*P] (cd)."""
        return self.grouped(_state_inputs(self.xdt, self.cs, self.lay.to_end))

    def chunk_states(self, xw: torch.Tensor) -> torch.Tensor:
        """S [nc,G,N,Hg*P] (cd): the state each chunk makes from its own tokens, at its end."""
        return self.Bc.transpose(-1, -2) @ xw

    def gam(self) -> torch.Tensor:
        return _chunk_decay(self.cs[:, -1], self.lay.gam_mask)  # [H,nc,nc]

    def states_in(self, S: torch.Tensor, gam: torch.Tensor) -> torch.Tensor:
        """S_in [nc,G,N,Hg*P] (cd): the state entering each chunk."""
        return self.per_chunk(gam.to(self.cd) @ self.per_head(S))

    def by_head(self, t: torch.Tensor) -> torch.Tensor:
        """token layout [nc,Q,H,X] -> [nc,H,Q,X] (a view)."""
        return t.transpose(1, 2)


def _forward(xdt, a, B, C, layout: PackedLayout):
    """-> y [n,H,P] fp32 (fd), S_in [nc,G,N,Hg*P] (saved for the backward)."""
    k = _Chunks(xdt, a, B, C, layout)
    fused = _use_fused(k)
    if not fused:
        M = _intra_matrix(k.cs, k.CB(), k.lay.same, k.cd)  # [nc,H,Q,Q]
        y_diag = k.by_head(M @ k.by_head(k.xdt))  # [nc,Q,H,P]
    S = k.chunk_states(k.state_inputs())
    if _use_scan(xdt):
        from h1r.model.kernels.state_passing import chunk_decay_factors, state_pass

        S_in = state_pass(S.contiguous(), chunk_decay_factors(k.cs[:, -1], k.lay.doc_end))
    else:
        S_in = k.states_in(S, k.gam())
    if fused:
        from h1r.model.kernels.ssd_chunk import chunk_output

        y = chunk_output(k.xdt_tok, k.C_tok, S_in, k.CB(), k.cs, k.lay.doc)
    else:
        y = _combine(y_diag, k.ungrouped(k.Cc @ S_in), k.cs, k.lay.from_start)
    return y.reshape(-1, k.H, k.P)[:k.n], S_in


def _backward(dy, xdt, a, B, C, S_in, layout: PackedLayout):  # dy [n,H,P]
    """-> dxdt, da, dB, dC in the inputs' dtypes."""
    k = _Chunks(xdt, a, B, C, layout)
    cd, nc, Q, H = k.cd, k.nc, k.Q, k.H
    dy = dy.to(k.fd)
    if k.pad:  # F.pad copies even when it adds nothing (100 MB a 1.5B-deep layer at 16k tokens)
        dy = F.pad(dy, (0, 0, 0, 0, 0, k.pad))
    dy = dy.reshape(nc, Q, H, k.P)
    fused = _use_fused(k)
    CB = k.CB()

    # off-diagonal: y_off = e * (C . S_in); with `fused`, the within-chunk gradients too
    if fused:
        from h1r.model.kernels.ssd_chunk import chunk_output_backward

        dxdt_in, dcs, dCB, dYo = chunk_output_backward(dy.view(-1, H, k.P), k.xdt_tok, k.C_tok, S_in, CB,
                                                       k.cs, k.lay.doc)
        dYo = k.grouped(dYo.view(nc, Q, H, k.P))
    else:
        dcs, dYo = _off_grads(dy, k.ungrouped(k.Cc @ S_in), k.cs, k.lay.from_start, cd)
        dYo = k.grouped(dYo)  # [nc,G,Q,Hg*P]
    dC = (dYo @ S_in.transpose(-1, -2)).to(k.fd)  # [nc,G,Q,N]
    dS_in = k.Cc.transpose(-1, -2) @ dYo  # [nc,G,N,Hg*P]

    # between chunks: S_in = Gam @ S (per head), or the scan S_in[z+1] = decay[z] S_in[z] + S[z]
    xw = k.state_inputs()
    if _use_scan(xdt):
        from h1r.model.kernels.state_passing import chunk_decay_factors, state_pass_backward

        decay = chunk_decay_factors(k.cs[:, -1], k.lay.doc_end)
        dS, ddecay = state_pass_backward(dS_in.contiguous(), S_in.contiguous(), decay)
        dcs[:, -1] += ddecay * decay  # decay = exp(tot) * mask
    else:
        S, gam = k.chunk_states(xw), k.gam()
        dS_in_h, S_h = k.per_head(dS_in), k.per_head(S)
        dS = k.per_chunk(gam.to(cd).transpose(-1, -2) @ dS_in_h)
        dgam = (dS_in_h @ S_h.transpose(-1, -2)).to(k.fd)  # [H,nc,nc]
        dcs[:, -1] += _chunk_decay_grad(gam, dgam)

    # chunk states: S = B^T @ xw
    dB = (xw @ dS.transpose(-1, -2)).to(k.fd)  # [nc,G,Q,N]
    dxdt, dcs_w = _state_input_grads(k.ungrouped(k.Bc @ dS), k.xdt, k.cs, k.lay.to_end)
    dcs += dcs_w

    # intra-chunk: y_diag = M @ xdt, M = CB * L
    if fused:
        dxdt += dxdt_in.view(nc, Q, H, k.P)
    else:
        dyh = k.by_head(dy).to(cd)  # [nc,H,Q,P]
        M = _intra_matrix(k.cs, CB, k.lay.same, cd)
        dxdt += k.by_head(M.transpose(-1, -2) @ dyh)
        dCB, dcs_L = _intra_grads(dyh @ k.by_head(k.xdt).transpose(-1, -2), k.cs, CB, k.lay.same)
        dcs += dcs_L
    dC += dCB @ k.Bc.to(k.fd)
    dB += dCB.transpose(-1, -2) @ k.Cc.to(k.fd)

    da = dcs.flip(1).cumsum(1).flip(1)  # cs = cumsum(a) within the chunk
    n = k.n
    return (dxdt.reshape(-1, H, k.P)[:n].to(xdt.dtype), da.reshape(-1, H)[:n].to(a.dtype),
            dB.transpose(1, 2).reshape(-1, k.G, k.N)[:n].to(B.dtype),
            dC.transpose(1, 2).reshape(-1, k.G, k.N)[:n].to(C.dtype))


# On CUDA every layer of a step runs the SSD's forward (and backward) on the same shapes and document layout:
# the first layer runs it op by op, the second is captured in a CUDA graph, the rest replay it
# (kernels/graphs.py): fewer launches from Python on a host-bound step (measured gain within noise, ~1%).
# H1R_LAYER_GRAPHS=0: op by op throughout (it also sets kernels/train.py's CONV_GRAPHS).
GRAPHS = flag("H1R_LAYER_GRAPHS", True)


def _graphed(kind: str, t: torch.Tensor) -> LayerGraphs | None:
    """The LayerGraphs for `kind` ("forward"/"backward"), or None where graphs do not apply."""
    if not (GRAPHS and t.is_cuda) or torch.cuda.is_current_stream_capturing():
        return None
    from h1r.model.kernels.graphs import layer_graphs

    return layer_graphs(f"ssd_packed.{kind}")


def _key(layout, *ts):
    """Everything a captured call depends on besides its tensors' values (both run with autocast off)."""
    return (layout, SCAN, FUSED, COMPILE) + tuple((t.shape, t.dtype) for t in ts)


class PackedSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xdt, a, B, C, layout: PackedLayout):
        # autocast off, as in the backward: the dtypes are explicit (C.B in fp32 as the backward recomputes
        # it, not rounded to bf16 by autocast), and the compiled pieces see one autocast state rather than
        # recompiling per state (a bench process ran into torch's recompile limit on that guard)
        with torch.autocast(xdt.device.type, enabled=False):
            graphs = _graphed("forward", xdt)
            if graphs is not None:
                y, S_in = graphs(_key(layout, xdt, a, B, C), lambda *t: _forward(*t, layout), xdt, a, B, C)
            else:
                y, S_in = _forward(xdt, a, B, C, layout)
        ctx.save_for_backward(xdt, a, B, C, S_in)
        ctx.layout = layout
        return y

    @staticmethod
    def backward(ctx, dy):  # dy [n,H,P]
        xdt, a, B, C, S_in = ctx.saved_tensors
        layout = ctx.layout
        with torch.autocast(xdt.device.type, enabled=False):  # as in the forward (a backward run on CPU
            graphs = _graphed("backward", xdt)               # keeps the caller's autocast)
            if graphs is not None:
                grads = graphs(_key(layout, dy, xdt, a, B, C, S_in), lambda *t: _backward(*t, layout),
                               dy, xdt, a, B, C, S_in)
            else:
                grads = _backward(dy, xdt, a, B, C, S_in, layout)
        return (*grads, None)


def ssd_packed(x, dt, A, B, C, doc: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """x [n,H,P], dt [n,H] (after softplus), A [H], B/C [n,G,N], doc [n] (document index per token, from
    doc_ids_from_cu) -> y [n,H,P] fp32 (no D skip). Differentiable in x, dt, A, B, C.

    Matmuls run in x's dtype; B and C are cast to it."""
    fd = torch.promote_types(x.dtype, torch.float32)
    xdt = (x * dt[..., None].to(x.dtype)).to(x.dtype)
    a = dt.to(fd) * A.to(fd)
    return PackedSSD.apply(xdt, a, B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous(), layout_for(doc, int(chunk_size)))

"""FastFalconH1: the inference-only form of the model that the engine runs on the GPU.

Built from a FalconH1ForCausalLM at load time:
- every µP multiplier is folded into the weight it scales (no extra elementwise passes), and so is every
  RMSNorm weight (into the columns of the projection that reads the norm's output);
- in_proj and q/k/v become one GEMM (they read the same normalised input), gate/up another, and the
  two output projections a third ([gated SSM out | attention out] @ [out_proj | o_proj]^T: both
  branches add into the residual, so one GEMM of the concatenation computes their sum);
- the decode step uses the Triton kernels (fused slot-indexed SSM/conv updates, paged attention); a
  one-row step runs each projection as one GEMV that also does the norm, activation or residual add;
  prefill uses fla's varlen conv and chunked SSD (inputs built by one Triton kernel) and flash attention.
Off CUDA (or with kernels=False) every kernel falls back to its PyTorch reference, which is how the
CPU tests check this file against the plain model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from h1r.engine.cache import EngineCache
from h1r.model import kernels as K
from h1r.model import ssd
from h1r.model.falcon_h1 import FalconH1ForCausalLM, mup_vector
from h1r.model.kernels import prefill as PF
from h1r.utils.env import flag


@dataclass
class FastLayer:
    ln1: torch.Tensor  # ones: the input norm's weight is folded into w_in's columns
    w_in: torch.Tensor  # [d_ssm + conv_dim + H + (Hq + 2 Hkv) hd, D]  (in_proj | q | k | v), multipliers folded
    b_in: torch.Tensor | None
    conv_w: torch.Tensor  # [conv_dim, K]
    conv_b: torch.Tensor | None
    dt_bias: torch.Tensor  # [H] fp32
    A: torch.Tensor  # [H] fp32, -exp(A_log)
    D: torch.Tensor  # [H] fp32
    norm_w: torch.Tensor | None  # [d_ssm] fp32 (gated RMSNorm) or None (plain SiLU gate)
    w_mo: torch.Tensor  # [D, d_ssm + Hq hd]: (mamba out_proj x ssm_out | o_proj x attention_out)
    b_mo: torch.Tensor | None
    ln2: torch.Tensor  # ones: folded into w_gu's columns
    w_gu: torch.Tensor  # [2I, D] (gate x gate_mult | up)
    b_gu: torch.Tensor | None
    w_down: torch.Tensor  # down x down_mult
    b_down: torch.Tensor | None


def _fold(w, scale, dtype):
    if w is None:
        return None
    s = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale))
    s = s.to(w.device, torch.float32)
    return (w.float() * (s[:, None] if w.dim() == 2 and s.dim() == 1 else s)).to(dtype).contiguous()


def _sum_biases(a, b, dtype):
    if a is None and b is None:
        return None
    return (a if b is None else b if a is None else a + b).to(dtype)


def warn_without_fla(device: torch.device, use_kernels: bool) -> bool:
    """Warn (-> True) where the fast path runs on CUDA without fla-core: its prefill then takes the reference
    SSD scan and conv, one sequence at a time, which a user tuning throughput should hear about."""
    if not (use_kernels and device.type == "cuda") or K.fla_available():
        return False
    warnings.warn("fla-core is not installed: prefill runs the reference SSD scan and conv one sequence at a time "
                  "instead of fla's kernels (same results, not the fast path); pip install 'h1r[gpu]'", stacklevel=3)
    return True


class FastFalconH1:
    def __init__(self, model: FalconH1ForCausalLM, use_kernels: bool | None = None):
        cfg = model.config
        self.config = cfg
        self.dtype, self.device = model.dtype, model.device
        self.use_kernels = K.available(self.device) if use_kernels is None else use_kernels
        warn_without_fla(self.device, self.use_kernels)
        dt = self.dtype
        m = model.model
        self.d_ssm, self.conv_dim, self.H = cfg.d_ssm, cfg.conv_dim, cfg.mamba_n_heads
        self.P, self.Ns, self.G = cfg.ssm_head_dim, cfg.mamba_d_state, cfg.mamba_n_groups
        self.Hq, self.Hkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.attn_head_dim
        self.scale = self.hd ** -0.5
        self.eps = cfg.rms_norm_eps
        self.dt_limit = cfg.time_step_limit
        self.chunk_size = cfg.mamba_chunk_size
        mup = mup_vector(cfg)
        ai, ki = cfg.attention_in_multiplier, cfg.key_multiplier
        g_mult, d_mult = cfg.mlp_multipliers
        self.layers: list[FastLayer] = []
        with torch.no_grad():
            for layer in m.layers:
                mx, at, ff = layer.mamba, layer.self_attn, layer.feed_forward
                f32 = torch.float32
                ln1, ln2 = layer.input_layernorm.weight.detach().float(), layer.pre_ff_layernorm.weight.detach().float()
                w_in = torch.cat([_fold(mx.in_proj.weight, mup * cfg.ssm_in_multiplier, f32),
                                  _fold(at.q_proj.weight, ai, f32), _fold(at.k_proj.weight, ai * ki, f32),
                                  _fold(at.v_proj.weight, ai, f32)])
                w_in = (w_in * ln1[None]).to(dt)  # the RMSNorm weight folded into the columns it scales
                b_in = None
                if mx.in_proj.bias is not None or at.q_proj.bias is not None:
                    z = lambda n: torch.zeros(n, device=self.device)
                    b_in = torch.cat([mx.in_proj.bias.float() * mup.to(self.device) if mx.in_proj.bias is not None
                                      else z(cfg.in_proj_size),
                                      at.q_proj.bias.float() if at.q_proj.bias is not None else z(self.Hq * self.hd),
                                      at.k_proj.bias.float() * ki if at.k_proj.bias is not None else z(self.Hkv * self.hd),
                                      at.v_proj.bias.float() if at.v_proj.bias is not None else z(self.Hkv * self.hd)
                                      ]).to(dt)
                self.layers.append(FastLayer(
                    ln1=torch.ones_like(layer.input_layernorm.weight), w_in=w_in, b_in=b_in,
                    conv_w=mx.conv1d.weight[:, 0].detach().to(dt).contiguous(),
                    conv_b=mx.conv1d.bias.detach().clone() if mx.conv1d.bias is not None else None,
                    dt_bias=mx.dt_bias.detach().float().clone(), A=-torch.exp(mx.A_log.detach().float()),
                    D=mx.D.detach().float().clone(),
                    norm_w=mx.norm.weight.detach().float().clone() if mx.norm is not None else None,
                    w_mo=torch.cat([_fold(mx.out_proj.weight, cfg.ssm_out_multiplier, dt),
                                    _fold(at.o_proj.weight, cfg.attention_out_multiplier, dt)], dim=1).contiguous(),
                    b_mo=_sum_biases(_fold(mx.out_proj.bias, cfg.ssm_out_multiplier, torch.float32),
                                     _fold(at.o_proj.bias, cfg.attention_out_multiplier, torch.float32), dt),
                    ln2=torch.ones_like(layer.pre_ff_layernorm.weight),
                    w_gu=(torch.cat([_fold(ff.gate_proj.weight, g_mult, f32), ff.up_proj.weight.detach().float()])
                          * ln2[None]).to(dt),
                    b_gu=(torch.cat([ff.gate_proj.bias.float() * g_mult, ff.up_proj.bias.float()]).to(dt)
                          if ff.gate_proj.bias is not None else None),
                    w_down=_fold(ff.down_proj.weight, d_mult, dt), b_down=_fold(ff.down_proj.bias, d_mult, dt)))
            self.embed = _fold(m.embed_tokens.weight, cfg.embedding_multiplier, dt)
            # rows padded to a multiple of 256: an odd vocabulary (130049) sends cuBLAS to a slow kernel
            V = cfg.vocab_size
            self.vocab_size = V
            head = _fold(model.lm_head.weight, cfg.lm_head_multiplier, torch.float32)
            self.lm_head = torch.zeros(-(-V // 256) * 256, head.shape[1], dtype=dt, device=head.device)
            self.lm_head[:V] = head * m.final_layernorm.weight.detach().float()[None]
            self.final_norm = torch.ones_like(m.final_layernorm.weight)
            self.inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.hd, 2, dtype=torch.float,
                                                                   device=self.device) / self.hd))
        self.norm_before_gate = cfg.mamba_norm_before_gate
        self.varlen_flash = True  # one flash call for all prefill segments (the per-segment loop is the fallback)
        # one-row decode steps with the norms inside the projections (kernels/gemv.py); H1R_FUSED_PROJ=0 keeps
        # cuBLAS and the add_rmsnorm kernels everywhere
        self.fused_projections = flag("H1R_FUSED_PROJ", True)
        # decode steps of a few rows run the projections where the split-K Triton GEMM beats cuBLAS
        # (kernels/skinny_gemm.py `preferred`: 2-16 rows); H1R_SKINNY=0 keeps cuBLAS
        self.skinny_projections = flag("H1R_SKINNY", True)
        self.gated_norm_in_gemv = False  # whether the output-projection GEMV can also do the gated norm
        if self.use_kernels and flag("H1R_GATED_GEMV", True):  # 0: gated_rmsnorm, then a GEMV
            from h1r.model.kernels.gemv import gated_gemv_fits

            self.gated_norm_in_gemv = gated_gemv_fits(self.d_ssm, self.G, self.Hq * self.hd, cfg.hidden_size)

    @torch.no_grad()
    def copy_from(self, other: "FastFalconH1") -> None:
        """Copy another instance's (freshly folded) weights into this one in place, so CUDA graphs captured
        on this instance keep pointing at the same tensors."""
        for a, b in zip(self.layers, other.layers):
            for f in FastLayer.__dataclass_fields__:
                if getattr(a, f) is not None:
                    getattr(a, f).copy_(getattr(b, f))
        for f in ("embed", "lm_head", "final_norm", "inv_freq"):
            getattr(self, f).copy_(getattr(other, f))

    # ---- small ops ------------------------------------------------------------------------------
    def _rms(self, x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, x, cos, sin):  # x [N, heads, hd], cos/sin [N, hd]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]

    def _gate(self, y, z, norm_w):  # y [N, d_ssm] fp32, z [N, d_ssm]
        if norm_w is None:
            return y * F.silu(z.float())
        if not self.norm_before_gate:
            y = y * F.silu(z.float())
        yg = y.view(y.shape[0], self.G, -1)
        yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + self.eps)
        y = (norm_w.view(self.G, -1) * yg).view_as(y)
        return y * F.silu(z.float()) if self.norm_before_gate else y

    # ---- the step ------------------------------------------------------------------------------------
    def hidden(self, ids, positions, kv_index, cache: EngineCache, decode_slots, decode_table, decode_context,
               prefill=None, splits: int = 1):
        """Final-normed hidden states [N, D] for a step: the first S tokens decode (one per sequence), the
        rest are prefill segments described by `prefill` (a PrefillPlan) or None."""
        N = ids.shape[0]
        S = decode_slots.shape[0]
        sizes = [self.d_ssm, self.conv_dim, self.H, self.Hq * self.hd, self.Hkv * self.hd, self.Hkv * self.hd]
        offs = [sum(sizes[:i]) for i in range(len(sizes))]
        h = self.embed[ids]
        if self.use_kernels:
            from h1r.model.kernels import one_row_step

            one = self.fused_projections and N == 1 and prefill is None
            with one_row_step(one):  # under H1R_PDL=auto a one-row step's kernels launch early (kernels.pdl)
                return self._hidden_kernels(h, one, offs, positions, kv_index, cache, decode_slots, decode_table,
                                            decode_context, prefill, splits)
        freqs = positions.float()[:, None] * self.inv_freq[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        for li, L in enumerate(self.layers):
            x = self._rms(h, L.ln1)
            proj = F.linear(x, L.w_in, L.b_in)
            z, xBC, dt, q, k, v = proj.split(sizes, dim=-1)
            q = self._rope(q.reshape(N, self.Hq, self.hd), cos, sin)
            k = self._rope(k.reshape(N, self.Hkv, self.hd), cos, sin)
            kc, vc = cache.k[li], cache.v[li]
            kc.view(-1, self.Hkv, self.hd).index_copy_(0, kv_index, k.to(kc.dtype))
            vc.view(-1, self.Hkv, self.hd).index_copy_(0, kv_index, v.reshape(N, self.Hkv, self.hd).to(vc.dtype))
            a = self._attention(li, q, S, decode_table, decode_context, cache, prefill, splits)
            y = self._mamba(li, L, xBC, dt, cache, S, decode_slots, prefill)
            h = h + F.linear(torch.cat([self._gate(y, z, L.norm_w).to(self.dtype), a.reshape(N, -1)], dim=-1),
                             L.w_mo, L.b_mo)
            gu = F.linear(self._rms(h, L.ln2), L.w_gu, L.b_gu)
            g, u = gu.chunk(2, dim=-1)
            h = h + F.linear(F.silu(g) * u, L.w_down, L.b_down)
        return self._rms(h, self.final_norm)

    def _hidden_kernels(self, h, one, offs, positions, kv_index, cache, decode_slots, decode_table, decode_context,
                        prefill, splits):
        """`hidden` through the Triton kernels; `one`: a one-row decode step (the fused-GEMV path)."""
        from h1r.model.kernels.fused import add_rmsnorm, gated_rmsnorm, rope_and_store, silu_mul
        from h1r.model.kernels.gemv import gated_gemv, gemv

        N, S = h.shape[0], decode_slots.shape[0]
        # a one-row decode step takes the norms into the projections (their weights are folded into the
        # columns, leaving 1/rms(h), summed from the input the GEMV reads anyway), and the activation,
        # gated norm and residual adds too. More rows: cuBLAS (or, for a few rows, the split-K GEMM: _projection)
        # and the add_rmsnorm kernels (a Triton GEMM with the norm as its epilogue was slower than cuBLAS at
        # 8-64 rows: gemv_gpu_norm_matmul_dropped.json)
        gated_in_gemv = one and self.gated_norm_in_gemv
        proj_mo, proj_gu, proj_down = (self._projection(n, N, prefill) for n in ("w_mo", "w_gu", "w_down"))
        if not one:
            h, x = add_rmsnorm(h, self.layers[0].ln1, self.eps)
        for li, L in enumerate(self.layers):
            proj = gemv(h, L.w_in, L.b_in, norm_eps=self.eps) if one else F.linear(x, L.w_in, L.b_in)
            z, xBC, dt = proj[:, :offs[1]], proj[:, offs[1]:offs[2]], proj[:, offs[2]:offs[3]]
            kc, vc = cache.k[li], cache.v[li]
            q = rope_and_store(proj, offs[3], offs[4], offs[5], positions, self.inv_freq, kv_index,
                               kc.view(-1, self.Hkv, self.hd), vc.view(-1, self.Hkv, self.hd),
                               self.Hq, self.Hkv, self.hd)
            mo = torch.empty(N, self.d_ssm + self.Hq * self.hd, device=h.device, dtype=self.dtype)
            self._attention(li, q, S, decode_table, decode_context, cache, prefill, splits,
                            out=mo[:, self.d_ssm:].view(N, self.Hq, self.hd))
            y = self._mamba(li, L, xBC, dt, cache, S, decode_slots, prefill)
            if not gated_in_gemv:
                gated_rmsnorm(y, z, L.norm_w, self.G, self.eps, self.norm_before_gate, self.dtype,
                              out=mo[:, :self.d_ssm])
            if one:  # h is this step's own tensor (embed[ids]): updated in place
                if gated_in_gemv:  # the gated norm of y happens as the output projection reads it
                    gated_gemv(y, z, L.norm_w, self.G, self.eps, self.norm_before_gate, mo[:, self.d_ssm:],
                               L.w_mo, L.b_mo, residual=h, out=h)
                else:
                    gemv(mo, L.w_mo, L.b_mo, residual=h, out=h)
                gemv(gemv(h, L.w_gu, L.b_gu, norm_eps=self.eps), L.w_down, L.b_down, silu_mul=True,
                     residual=h, out=h)
            else:
                h, x = add_rmsnorm(h, L.ln2, self.eps, proj_mo(mo, L.w_mo, L.b_mo))
                dn = proj_down(silu_mul(proj_gu(x, L.w_gu, L.b_gu)), L.w_down, L.b_down)
                nxt = self.layers[li + 1].ln1 if li + 1 < len(self.layers) else self.final_norm
                h, x = add_rmsnorm(h, nxt, self.eps, dn)
        if one:
            _, x = add_rmsnorm(h, self.final_norm, self.eps)
        return x

    def logits(self, x):
        """x: final-normed hidden states (from `hidden`) -> fp32 logits [R, vocab]."""
        return self._projection("lm_head", x.shape[0], None)(x, self.lm_head)[:, :self.vocab_size].float()

    def _projection(self, name: str, rows: int, prefill):
        """F.linear, or the split-K Triton GEMM for a decode step whose row count it runs faster."""
        if self.use_kernels and self.skinny_projections and prefill is None:
            from h1r.model.kernels import skinny_gemm

            if skinny_gemm.preferred(name, rows):
                return skinny_gemm.skinny_linear
        return F.linear

    def _attention(self, li, q, S, table, context, cache, prefill, splits, out=None):
        """q [N, Hq, hd] (rotated); the step's K/V are already in the cache. -> [N, Hq, hd] (in `out` if given)."""
        kc, vc = cache.k[li], cache.v[li]
        if prefill is None:
            return self._decode_attention(q, kc, vc, table, context, splits, out)
        out = torch.empty_like(q) if out is None else out
        if S:
            self._decode_attention(q[:S], kc, vc, table, context, splits, out[:S])
        kflat, vflat = kc.view(-1, self.Hkv, self.hd), vc.view(-1, self.Hkv, self.hd)
        kctx, vctx = kflat[prefill.ctx_index], vflat[prefill.ctx_index]  # every segment's full context
        if self.varlen_flash and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
            lens = [b - a for a, b in zip(prefill.cu_host[:-1], prefill.cu_host[1:])]
            ctxs = [b - a for a, b in zip(prefill.ctx_cu_host[:-1], prefill.ctx_cu_host[1:])]
            try:
                out[S:] = PF.varlen_attention(q[S:], kctx, vctx, prefill.cu, prefill.ctx_cu, max(lens), max(ctxs),
                                              self.scale)
                return out
            except RuntimeError as e:  # an older torch without this op: one flash call per segment instead
                import warnings

                warnings.warn(f"varlen flash attention unavailable ({e}); falling back to one call per segment")
                self.varlen_flash = False
        for i, (a, b) in enumerate(zip(prefill.cu_host[:-1], prefill.cu_host[1:])):
            c0, c1 = prefill.ctx_cu_host[i], prefill.ctx_cu_host[i + 1]
            out[S + a:S + b] = PF.segment_attention(q[S + a:S + b], kctx[c0:c1], vctx[c0:c1],
                                                    prefill.cached_host[i], self.scale)
        return out

    def _decode_attention(self, q, kc, vc, table, context, splits, out=None):
        if self.use_kernels:
            from h1r.model.kernels.paged_attention import paged_decode_attention

            return paged_decode_attention(q, kc, vc, table, context, self.scale, splits, out=out)
        from h1r.engine.context import paged_decode_attention

        a = paged_decode_attention(q, kc, vc, table, context, self.scale)
        return a.to(q.dtype) if out is None else out.copy_(a)

    def _mamba(self, li, L: FastLayer, xBC, dt, cache, S, slots, prefill):
        N = xBC.shape[0]
        conv, st = cache.conv[li], cache.ssm[li]
        gn = self.G * self.Ns
        y = torch.empty(N, self.d_ssm, device=xBC.device, dtype=torch.float32) if prefill is not None else None
        if S:
            xd, dtd = xBC[:S], dt[:S]
            if self.use_kernels:
                from h1r.model.kernels.conv_update import conv_state_update
                from h1r.model.kernels.ssm_update import ssm_state_update

                xc = conv_state_update(conv, slots, xd, L.conv_w, L.conv_b)
                x_, B, C = xc.split([self.d_ssm, gn, gn], dim=-1)
                yd = ssm_state_update(st, slots, x_, dtd, L.dt_bias, L.A, B, C, L.D, self.dt_limit)
            else:
                xc, c1 = ssd.conv_step(xd, conv[slots], L.conv_w, L.conv_b)
                conv[slots] = c1.to(conv.dtype)
                x_, B, C = xc.split([self.d_ssm, gn, gn], dim=-1)
                d = self._softplus_clamp(dtd, L.dt_bias)
                yd, s1 = ssd.ssd_step(x_.reshape(S, self.H, self.P), d, L.A, B.reshape(S, self.G, self.Ns),
                                      C.reshape(S, self.G, self.Ns), st[slots])
                st[slots] = s1.to(st.dtype)
                yd = (yd + L.D[:, None] * x_.reshape(S, self.H, self.P).float()).reshape(S, self.d_ssm)
            if prefill is None:
                return yd
            y[:S] = yd
        if prefill is not None:
            pslots = prefill.slots
            xc, cfin = PF.varlen_causal_conv(xBC[S:], L.conv_w, L.conv_b, prefill.cu, conv[pslots], prefill.cu_cpu)
            conv[pslots] = cfin.to(conv.dtype)
            x_, B, C = xc.split([self.d_ssm, gn, gn], dim=-1)
            Np = x_.shape[0]
            xh = x_.reshape(Np, self.H, self.P)
            d = self._softplus_clamp(dt[S:], L.dt_bias)
            yp, sfin = PF.varlen_ssd(xh.to(self.dtype) if xBC.is_cuda else xh, d, L.A,
                                     B.reshape(Np, self.G, self.Ns), C.reshape(Np, self.G, self.Ns), prefill.cu,
                                     st[pslots], self.chunk_size, prefill.cu_cpu)
            st[pslots] = sfin.to(st.dtype)
            torch.addcmul(yp, L.D[:, None], xh, out=y[S:].view(Np, self.H, self.P))  # + D skip, one pass
        return y

    def _softplus_clamp(self, dt, dt_bias):
        d = F.softplus(dt.float() + dt_bias)
        lo, hi = self.dt_limit
        if lo > 0.0 or hi != float("inf"):
            d = d.clamp(lo, hi)
        return d


@dataclass
class PrefillPlan:
    """Host-built description of the prefill segments of a step (they follow the decode tokens)."""

    cu: torch.Tensor  # [Sp+1] long on device: segment boundaries within the prefill tokens
    cu_host: list[int]
    slots: torch.Tensor  # [Sp] long
    cached_host: list[int]  # tokens already cached per segment
    ctx_index: torch.Tensor  # [sum of contexts] long: flat K/V positions of each segment's whole context
    ctx_cu_host: list[int]
    # built once per step, read by every layer:
    ctx_cu: torch.Tensor = field(init=False)  # ctx_cu_host on the device (varlen flash attention)
    cu_cpu: torch.Tensor = field(init=False)  # cu_host as one CPU tensor: fla caches its index tables by identity

    def __post_init__(self):
        self.ctx_cu = torch.tensor(self.ctx_cu_host, device=self.cu.device)
        self.cu_cpu = torch.tensor(self.cu_host)


"""The Falcon-H1 parallel hybrid decoder.

Per layer:  h = h + attn_out·Attn(norm(h)·attn_in) + ssm_out·Mamba2(norm(h))   (one shared input norm)
            h = h + MLP(pre_ff_norm(h))
with embeddings × embedding_multiplier and logits × lm_head_multiplier. Module and parameter names
match the Hugging Face checkpoint so state dicts load without renaming.

The modules compute projections; *where the state lives* is the job of a context object passed to
forward (`DenseContext` for plain tensors, the engine's context for pages and slots). A context
provides `positions` [B,T], `attention(layer_idx, q, k, v, scale)` and `mamba(layer_idx, mixer, xBC, dt)`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from h1r.config import ModelConfig
from h1r.model import ssd
from h1r.utils.env import flag


# training on CUDA fuses the elementwise glue below with torch.compile; H1R_COMPILE=0 (or setting this
# False) runs it eagerly, for debugging or where inductor is unavailable
COMPILE_TRAINING = flag("H1R_COMPILE", True)
# below this many tokens per call the compiled glue measured slower than eager on an H200 (the step is
# host-bound there: 1.5B-deep at 8k tokens 5.2k tok/s compiled vs 7.5k eager; at 16k 10.6k vs 9.7k;
# bench/results/train_gpu.json)
COMPILE_MIN_TOKENS = 16384


def fused_when_training(feature_dims: int):
    """Decorator: fn as written, or torch.compile'd (its elementwise ops fused into a few kernels, forward
    and backward) when it runs on CUDA with autograd on over at least COMPILE_MIN_TOKENS tokens: the glue
    of a small-hidden model is otherwise dozens of memory-bound passes per layer over [tokens, width]
    tensors. `feature_dims`: trailing dims of the first argument that are not tokens."""

    def wrap(fn):
        compiled = None

        @functools.wraps(fn)
        def run(*args):
            nonlocal compiled
            x = args[0]
            if torch.compiler.is_compiling():  # inside a compiled layer (COMPILE_LAYERS): traced with it
                return fn(*args)
            if COMPILE_TRAINING and x.is_cuda and torch.is_grad_enabled() and \
                    x.numel() // math.prod(x.shape[-feature_dims:]) >= COMPILE_MIN_TOKENS:
                if compiled is None:
                    compiled = torch.compile(fn, dynamic=True)
                return compiled(*args)
            return fn(*args)

        return run

    return wrap


# under autocast the norms hand the projections their input already in the autocast dtype: one cast inside
# the norm instead of one per Linear reading it (four after the input norm, two after the pre-FF norm),
# forward and backward; the Linears see identical values, and the gradients reaching the norm from those
# Linears then add up in the autocast dtype, as in bf16 training stacks generally. H1R_HALF_NORM=0: off.
HALF_NORM_OUTPUT = flag("H1R_HALF_NORM", True)


def autocast_out_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a norm should return under autocast (None: its natural dtype)."""
    if HALF_NORM_OUTPUT and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


@fused_when_training(feature_dims=1)
def rms_norm(x, weight, eps: float, out_dtype: torch.dtype | None = None):
    """Llama-style: normalise in fp32, cast back, then scale (then cast to `out_dtype` if given)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = weight * xf.to(x.dtype)
    return y if out_dtype is None else y.to(out_dtype)


@fused_when_training(feature_dims=1)
def gated_rms_norm(y, z, weight, n_groups: int, eps: float, norm_before_gate: bool,
                   out_dtype: torch.dtype | None = None):
    """y [..., d] (fp32), z [..., d] -> grouped RMSNorm of y with a SiLU gate from z, fp32 (or `out_dtype`)."""
    if not norm_before_gate:
        y = y * F.silu(z.float())
    shape = y.shape
    yg = y.float().reshape(*shape[:-1], n_groups, shape[-1] // n_groups)
    yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
    y = (weight.float().view(n_groups, -1) * yg).reshape(shape)
    if norm_before_gate:
        y = y * F.silu(z.float())
    return y if out_dtype is None else y.to(out_dtype)


@fused_when_training(feature_dims=1)
def silu_mul(g, u):
    return F.silu(g) * u


@fused_when_training(feature_dims=2)
def add_d_skip(y, x, D):
    """SSD output y [n,H,P] plus the D skip D[h] * x [n,H,P], in fp32."""
    return y.float() + D.float()[:, None] * x.float()


class RMSNorm(nn.Module):
    """Llama-style: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, autocast_out_dtype(x))


class GatedRMSNorm(nn.Module):
    """Grouped RMSNorm with a SiLU gate; released checkpoints gate first (norm_before_gate=False)."""

    def __init__(self, dim: int, n_groups: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.n_groups, self.eps, self.norm_before_gate = n_groups, eps, norm_before_gate

    def forward(self, y, z, out_dtype: torch.dtype | None = None):  # y [..., d] (fp32), z [..., d]
        return gated_rms_norm(y, z, self.weight, self.n_groups, self.eps, self.norm_before_gate, out_dtype)


def scaled_linear(x, lin: nn.Linear, out_scale=1.0, in_scale: float = 1.0):
    """lin(x * in_scale) * out_scale, out_scale a float or an [out] vector (the µP multipliers).

    With more rows than input features (training, prefill) the scales multiply the weight instead: the
    same function for weight-sized rather than activation-sized work, forward and backward; one-token
    decode keeps the activation-sized form, which is then the smaller."""
    vec = isinstance(out_scale, torch.Tensor)
    if not vec and out_scale == 1.0 and in_scale == 1.0:
        return lin(x)
    if x.numel() // x.shape[-1] > lin.in_features:
        w_scale = out_scale * in_scale
        w = lin.weight * (w_scale[:, None].to(lin.weight.dtype) if vec else w_scale)
        b = lin.bias * (out_scale.to(lin.bias.dtype) if vec else out_scale) if lin.bias is not None else None
        return F.linear(x, w, b)
    y = lin(x * in_scale if in_scale != 1.0 else x)
    return y * (out_scale.to(y.dtype) if vec else out_scale)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [B,T] -> cos, sin [B,T,head_dim] (neox / rotate-half layout, computed in fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B,T,hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@fused_when_training(feature_dims=2)
def apply_rope(x, cos, sin):  # x [B,T,H,hd], cos/sin [B,T,hd] -> x's dtype
    """Keeps x's dtype: with fp32 cos/sin (the fp32 residual stream under autocast) the product would be
    promoted to fp32 and cast back before attention, an extra pass each way."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x * cos[:, :, None] + rot * sin[:, :, None]).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.attn_head_dim
        D = cfg.hidden_size
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=cfg.attention_bias)
        self.key_multiplier = cfg.key_multiplier
        self.attention_in_multiplier = cfg.attention_in_multiplier
        self.attention_out_multiplier = cfg.attention_out_multiplier
        self.scale = self.head_dim ** -0.5

    def forward(self, h, cos, sin, ctx):  # h [B,T,D]
        B, T, _ = h.shape
        ai = self.attention_in_multiplier
        q = scaled_linear(h, self.q_proj, in_scale=ai).view(B, T, self.n_heads, self.head_dim)
        k = scaled_linear(h, self.k_proj, self.key_multiplier, ai).view(B, T, self.n_kv, self.head_dim)
        v = scaled_linear(h, self.v_proj, in_scale=ai).view(B, T, self.n_kv, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = ctx.attention(self.layer_idx, q, k, v, self.scale)  # [B,T,Hq,hd]
        return scaled_linear(o.reshape(B, T, -1), self.o_proj, self.attention_out_multiplier)


def mup_vector(cfg: ModelConfig) -> torch.Tensor:
    """Per-column multipliers of the in_proj output [z | x | B | C | dt] (not stored in checkpoints)."""
    d, gn, H = cfg.d_ssm, cfg.mamba_n_groups * cfg.mamba_d_state, cfg.mamba_n_heads
    m = cfg.ssm_multipliers
    return torch.cat([torch.full((d,), m[0]), torch.full((d,), m[1]), torch.full((gn,), m[2]),
                      torch.full((gn,), m[3]), torch.full((H,), m[4])])


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_ssm, self.n_heads, self.head_dim = cfg.d_ssm, cfg.mamba_n_heads, cfg.ssm_head_dim
        self.n_groups, self.d_state, self.conv_dim = cfg.mamba_n_groups, cfg.mamba_d_state, cfg.conv_dim
        self.chunk_size, self.d_conv = cfg.mamba_chunk_size, cfg.mamba_d_conv
        self.in_proj = nn.Linear(cfg.hidden_size, cfg.in_proj_size, bias=cfg.mamba_proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.mamba_d_conv, groups=self.conv_dim,
                                padding=cfg.mamba_d_conv - 1, bias=cfg.mamba_conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(self.n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = (GatedRMSNorm(self.d_ssm, self.n_groups, cfg.rms_norm_eps, cfg.mamba_norm_before_gate)
                     if cfg.mamba_rms_norm else None)
        self.out_proj = nn.Linear(self.d_ssm, cfg.hidden_size, bias=cfg.projectors_bias)
        self.register_buffer("mup_vector", mup_vector(cfg), persistent=False)
        self.ssm_in_multiplier, self.ssm_out_multiplier = cfg.ssm_in_multiplier, cfg.ssm_out_multiplier
        self.dt_min, self.dt_max = cfg.time_step_limit

    def forward(self, h, ctx):  # h [B,T,D]
        zxbcdt = scaled_linear(h, self.in_proj, self.mup_vector, self.ssm_in_multiplier)
        z, xBC, dt = zxbcdt.split([self.d_ssm, self.conv_dim, self.n_heads], dim=-1)
        y = ctx.mamba(self.layer_idx, self, xBC, dt)  # [B,T,d_ssm] fp32, D skip included
        y = self.norm(y, z, h.dtype) if self.norm is not None else (y * F.silu(z.float())).to(h.dtype)
        return scaled_linear(y, self.out_proj, self.ssm_out_multiplier)

    # ---- the mixing math, shared by every context (reference path) ----------------------------
    def discretize(self, dt_raw):
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        if self.dt_min > 0.0 or math.isfinite(self.dt_max):
            dt = dt.clamp(self.dt_min, self.dt_max)
        return dt

    def mix(self, xBC, dt_raw, conv_state=None, ssm_state=None, reset=None, valid=None):
        """Prefill/training: xBC [b,T,conv_dim] (pre-conv), dt_raw [b,T,H] ->
        (y [b,T,d_ssm] fp32, final conv state [b,conv_dim,K-1], final SSM state [b,H,P,N] fp32)."""
        b, T, _ = xBC.shape
        xBC, conv_final = ssd.causal_conv1d(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state, reset, valid)
        x, B, C = xBC.split([self.d_ssm, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        dt = self.discretize(dt_raw)
        if valid is not None:  # padding: no input and no decay
            vf = valid[..., None].float()
            x, dt = x * vf, dt * vf
        x = x.reshape(b, T, self.n_heads, self.head_dim)
        A = -torch.exp(self.A_log.float())
        y, ssm_final = ssd.ssd_chunked(x, dt, A, B.reshape(b, T, self.n_groups, self.d_state),
                                       C.reshape(b, T, self.n_groups, self.d_state), self.chunk_size,
                                       ssm_state, reset)
        y = y + self.D.float()[:, None] * x
        return y.reshape(b, T, self.d_ssm), conv_final, ssm_final

    def mix_varlen(self, xBC, dt_raw, cu, doc=None):
        """Training fast path (CUDA): xBC [b,T,conv_dim], dt_raw [b,T,H] of packed documents with
        boundaries `cu` (document index per token: `doc`) over the flattened b*T tokens -> y [b,T,d_ssm]
        fp32 (D skip included)."""
        from h1r.model.kernels.train import conv_varlen, ssd_varlen

        b, T, _ = xBC.shape
        n = b * T
        xc = conv_varlen(xBC.reshape(n, -1), self.conv1d.weight[:, 0], self.conv1d.bias, cu, doc)
        x, B, C = xc.split([self.d_ssm, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        x = x.reshape(n, self.n_heads, self.head_dim)
        A = -torch.exp(self.A_log.float())
        y = ssd_varlen(x, self.discretize(dt_raw).reshape(n, self.n_heads), A,
                       B.reshape(n, self.n_groups, self.d_state), C.reshape(n, self.n_groups, self.d_state), cu,
                       doc, self.chunk_size)
        return add_d_skip(y, x, self.D).reshape(b, T, self.d_ssm)

    def mix_step(self, xBC, dt_raw, conv_state, ssm_state):
        """Decode: xBC [b,conv_dim], dt_raw [b,H] -> (y [b,d_ssm] fp32, new conv state, new SSM state fp32)."""
        b = xBC.shape[0]
        xBC, conv_new = ssd.conv_step(xBC, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias)
        x, B, C = xBC.split([self.d_ssm, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        x = x.reshape(b, self.n_heads, self.head_dim)
        A = -torch.exp(self.A_log.float())
        y, ssm_new = ssd.ssd_step(x, self.discretize(dt_raw), A, B.reshape(b, self.n_groups, self.d_state),
                                  C.reshape(b, self.n_groups, self.d_state), ssm_state)
        y = y + self.D.float()[:, None] * x
        return y.reshape(b, self.d_ssm), conv_new, ssm_new


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, I = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(D, I, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(D, I, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(I, D, bias=cfg.mlp_bias)
        self.gate_multiplier, self.down_multiplier = cfg.mlp_multipliers

    def forward(self, x):
        g = scaled_linear(x, self.gate_proj, self.gate_multiplier)
        return scaled_linear(silu_mul(g, self.up_proj(x)), self.down_proj, self.down_multiplier)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.mamba = Mamba2Mixer(cfg, layer_idx)
        self.pre_ff_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = MLP(cfg)

    def forward(self, h, cos, sin, ctx):
        x = self.input_layernorm(h)
        h = h + (self.mamba(x, ctx) + self.self_attn(x, cos, sin, ctx))  # both branches apply their multipliers
        return h + self.feed_forward(self.pre_ff_layernorm(h))


class FalconH1Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# Training on CUDA compiles each decoder layer whole, so its eager ops (projections, residual adds, casts) and
# the glue above trace into a few graphs instead of ~200 launches per layer from Python: the step was waiting
# on the host. The SSD, conv and attention kernels stay graph breaks (kernels/train.py). One compiled code
# object serves every layer. Ints such as the longest document of a step's layout should turn dynamic after
# they first change (automatic dynamic), not recompile each step: untested on a GPU, where every bench step
# packs the same documents (past torch's recompile limit a frame runs eagerly). H200, 16k tokens, one process
# (bench/results/train_gpu_2026-12-04c.json): 1.5B-deep 20,438 -> 24,229 tok/s without checkpointing, 15,770 ->
# 17,712 with; 0.5B 41,951 -> 50,156 without, but 37,083 -> 35,409 with. H1R_COMPILE_LAYERS=0: layers run eagerly.
COMPILE_LAYERS = flag("H1R_COMPILE_LAYERS", True)


def _call_layer(layer, h, cos, sin, ctx):
    return layer(h, cos, sin, ctx)


def _compile_layers(lm, h) -> bool:
    """Training on CUDA, layers not sharded by FSDP2 (compiling through its hooks is untested here)."""
    if not (COMPILE_LAYERS and h.is_cuda and torch.is_grad_enabled()):
        return False
    from torch.distributed.fsdp import FSDPModule

    return not isinstance(lm.model.layers[0], FSDPModule)


@functools.cache
def _compiled_layer():
    # layer_idx is read (not used) on the training path: without this every layer would be a recompile
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    return torch.compile(_call_layer)


class FalconH1ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = FalconH1Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.embedding_multiplier = cfg.embedding_multiplier
        self.lm_head_multiplier = cfg.lm_head_multiplier
        self.gradient_checkpointing = False
        self.checkpoint_layers: frozenset[int] | None = None  # which layers recompute (None: all), when on

    def set_activation_checkpointing(self, value: bool | float) -> None:
        """True: recompute every decoder layer in the backward; a fraction in (0, 1]: that share of the
        layers, evenly spread (memory between none and all, less recompute than all); False: none."""
        if isinstance(value, bool) or value in (0, 1):
            self.gradient_checkpointing, self.checkpoint_layers = bool(value), None
            return
        if not 0.0 < value < 1.0:
            raise ValueError(f"activation checkpointing: expected a boolean or a fraction in (0, 1], got {value}")
        L = len(self.model.layers)
        k = max(1, round(value * L))
        self.gradient_checkpointing = True
        self.checkpoint_layers = frozenset(i * L // k for i in range(k))

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def new_state(self, batch_size: int, ssm_dtype: torch.dtype = torch.float32):
        """A fresh hybrid state (per layer K/V, conv and SSM state) for `batch_size` sequences."""
        from h1r.model.context import HybridState

        return HybridState(self.config, batch_size, self.device, self.dtype, ssm_dtype=ssm_dtype)

    def hidden_states(self, input_ids, attention_mask=None, state=None, position_ids=None, reset=None, ctx=None):
        """Final-norm hidden states [B,T,D]. `state` (HybridState) is read and updated in place."""
        if ctx is None:
            from h1r.model.context import DenseContext

            ctx = DenseContext(state, input_ids.shape, input_ids.device, attention_mask, reset, position_ids)
        h = self.model.embed_tokens(input_ids)
        if self.embedding_multiplier != 1.0:
            h = h * self.embedding_multiplier
        cfg = self.config
        cos, sin = rope_cos_sin(ctx.positions, cfg.attn_head_dim, cfg.rope_theta, h.dtype)
        run_layer = _compiled_layer() if _compile_layers(self, h) else _call_layer
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training and (self.checkpoint_layers is None
                                                                  or i in self.checkpoint_layers):
                h = torch.utils.checkpoint.checkpoint(run_layer, layer, h, cos, sin, ctx, use_reentrant=False)
            else:
                h = run_layer(layer, h, cos, sin, ctx)
        ctx.finish()
        return self.model.final_layernorm(h)

    def compute_logits(self, h):
        logits = self.lm_head(h)
        return logits * self.lm_head_multiplier if self.lm_head_multiplier != 1.0 else logits

    def forward(self, input_ids, attention_mask=None, state=None, position_ids=None, reset=None,
                logits_to_keep: int | None = None, ctx=None):
        """input_ids [B,T] -> logits [B,T,V] (or the last `logits_to_keep` positions).

        attention_mask [B,T]: 1 for tokens, 0 for padding (left or right).
        reset [B,T]: True at the first token of each packed document (state and attention do not cross it).
        state: a HybridState from `new_state`, continued and updated in place (prefill, chunks, decode).
        """
        h = self.hidden_states(input_ids, attention_mask, state, position_ids, reset, ctx)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.compute_logits(h)

"""Dense (plain tensor) state for the model: HybridState and the DenseContext that reads/writes it.

The engine keeps K/V in pages and Mamba state in slots instead (h1r.engine); this module is the
simple reference used for training, for `model(input_ids)`, and as the oracle in tests.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from h1r.config import ModelConfig
from h1r.model.ssd import doc_positions


# set False to run training on CUDA through the plain reference path (debugging)
USE_TRAIN_KERNELS = True


def _half_active(device) -> bool:
    """Training runs in bf16/fp16 under autocast (the kernels need half precision)."""
    return torch.is_autocast_enabled(device.type) if hasattr(torch, "is_autocast_enabled") else False


_warned_no_kernels = False


def use_train_kernels(device, has_state: bool = False) -> bool:
    """Packed training on CUDA in half precision takes the Triton/flash kernels (kernels/train.py). Where they
    cannot run as configured (no Triton, or an fla switch without fla-core) the plain path runs, several times
    slower and holding far more memory, and this warns once saying why."""
    global _warned_no_kernels
    if not (USE_TRAIN_KERNELS and not has_state and device.type == "cuda" and _half_active(device)):
        return False
    from h1r.model.kernels import train as K

    if K.ready():
        return True
    if not _warned_no_kernels:
        _warned_no_kernels = True
        warnings.warn("the training kernels cannot run here (they need triton, and fla-core for H1R_DOC_CONV=0 or "
                      "H1R_TRAIN_SSD=fla-parallel): training takes the PyTorch reference path, which is slow and "
                      "may run out of memory on long sequences; pip install 'h1r[gpu]'", stacklevel=3)
    return False


class HybridState:
    """Per-sequence decoding state of every layer.

    k[i], v[i]   [B, Hkv, L, hd]  attention keys/values seen so far (model dtype)
    kv_valid     [B, L]           False where a cached position was padding
    conv[i]      [B, conv_dim, K-1] last K-1 raw (pre-conv) xBC inputs
    ssm[i]       [B, H, P, N]     SSM state (fp32 by default; bf16 selectable)
    lengths      [B]              real tokens seen (the next token's position)
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype, ssm_dtype=torch.float32):
        L, B = cfg.num_hidden_layers, batch_size
        self.batch_size = B
        self.k = [torch.zeros(B, cfg.num_key_value_heads, 0, cfg.attn_head_dim, device=device, dtype=dtype)
                  for _ in range(L)]
        self.v = [t.clone() for t in self.k]
        self.kv_valid = torch.zeros(B, 0, dtype=torch.bool, device=device)
        self.conv = [torch.zeros(B, cfg.conv_dim, cfg.mamba_d_conv - 1, device=device, dtype=dtype) for _ in range(L)]
        self.ssm = [torch.zeros(B, cfg.mamba_n_heads, cfg.ssm_head_dim, cfg.mamba_d_state, device=device,
                                dtype=ssm_dtype) for _ in range(L)]
        self.lengths = torch.zeros(B, dtype=torch.long, device=device)

    @property
    def seq_len(self) -> int:
        return self.kv_valid.shape[1]


class DenseContext:
    """Attention and Mamba mixing over plain tensors, with optional padding, packing and a HybridState."""

    def __init__(self, state: HybridState | None, shape, device, attention_mask=None, reset=None, position_ids=None,
                 doc_capacity: int | None = None):
        """doc_capacity: on the training kernels' path, describe the documents in fixed shapes (at most this
        many documents; the longest taken as T) and read nothing on the host, so a CUDA graph captured with
        this context serves any layout of the same shape (kernels/train.py: cu_seqlens_static)."""
        B, T = shape
        self.state, self.T = state, T
        self.valid = attention_mask.bool() if attention_mask is not None else None
        if self.valid is not None and bool(self.valid.all()):
            self.valid = None  # all real tokens: take the cheaper paths
        self.reset = reset.bool() if reset is not None else None
        if state is not None and self.reset is not None:
            raise ValueError("packed documents (reset) cannot be combined with a decoding state")
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} sequences but input_ids has batch {B}")
        start = state.lengths if state is not None else torch.zeros(B, dtype=torch.long, device=device)
        if position_ids is not None:
            self.positions = position_ids
        elif self.reset is not None:
            self.positions = doc_positions(self.reset)
        elif self.valid is not None:
            self.positions = (start[:, None] + self.valid.long().cumsum(1) - 1).clamp(min=0)
        else:
            self.positions = start[:, None] + torch.arange(T, device=device)
        # training on CUDA in half precision: packed documents go through the Triton/flash kernels
        self.cu = None
        if use_train_kernels(device, state is not None):
            from h1r.model.kernels import train as K
            from h1r.model.ssd_packed import doc_ids_from_cu

            if doc_capacity is not None:
                self.cu, self.doc = K.cu_seqlens_static((B, T), self.reset, self.valid, doc_capacity, device)
                self.max_len = T
            else:
                self.cu = K.cu_seqlens_from((B, T), self.reset, self.valid, device)
                self.doc = doc_ids_from_cu(self.cu, B * T)
                self.max_len = int((self.cu[1:] - self.cu[:-1]).max())
            self.half_dtype = torch.get_autocast_dtype(device.type)
        new_valid = self.valid if self.valid is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        past = state.kv_valid if state is not None else torch.zeros(B, 0, dtype=torch.bool, device=device)
        self.kv_valid = torch.cat([past, new_valid], dim=1)  # [B, L+T]
        self._new_valid = new_valid
        self._mask = None

    def _attn_mask(self, L: int, device) -> torch.Tensor:
        """[B,1,T,L+T] bool: causal, not padding, same document; every query may see itself (no empty rows)."""
        if self._mask is None:
            T = self.T
            q_idx = torch.arange(T, device=device)[:, None] + L
            k_idx = torch.arange(L + T, device=device)[None, :]
            m = (k_idx <= q_idx)[None] & self.kv_valid[:, None, :]
            if self.reset is not None:
                doc = self.reset.long().cumsum(1)  # [B,T]
                m = m & (doc[:, :, None] == doc[:, None, :])
            m = m | (k_idx == q_idx)[None]
            self._mask = m[:, None]
        return self._mask

    def attention(self, layer_idx, q, k, v, scale):
        """q [B,T,Hq,hd], k/v [B,T,Hkv,hd] -> [B,T,Hq,hd]."""
        if self.cu is not None:  # activations may be fp32 here (fp32 multipliers under autocast): cast down
            from h1r.model.kernels.train import varlen_causal_attention

            B, T = q.shape[:2]
            ad = self.half_dtype
            o = varlen_causal_attention(q.reshape(B * T, *q.shape[2:]).to(ad), k.reshape(B * T, *k.shape[2:]).to(ad),
                                        v.reshape(B * T, *v.shape[2:]).to(ad), self.cu, self.max_len, scale)
            return o.reshape(q.shape)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B,Hkv,T,hd]
        L = 0
        if self.state is not None:
            L = self.state.k[layer_idx].shape[2]
            k = torch.cat([self.state.k[layer_idx], k.to(self.state.k[layer_idx].dtype)], dim=2)
            v = torch.cat([self.state.v[layer_idx], v.to(self.state.v[layer_idx].dtype)], dim=2)
            self.state.k[layer_idx], self.state.v[layer_idx] = k, v
        q = q.transpose(1, 2)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.state is None and self.valid is None and self.reset is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attn_mask(L, q.device), scale=scale)
        return o.transpose(1, 2)

    def mamba(self, layer_idx, mixer, xBC, dt_raw):
        if self.cu is not None:
            return mixer.mix_varlen(xBC.to(self.half_dtype), dt_raw, self.cu, self.doc)
        st = self.state
        conv0 = st.conv[layer_idx] if st is not None else None
        ssm0 = st.ssm[layer_idx] if st is not None else None
        if st is not None and self.T == 1 and self.valid is None:
            y, conv1, ssm1 = mixer.mix_step(xBC[:, 0], dt_raw[:, 0], conv0, ssm0)
            y = y[:, None]
        else:
            y, conv1, ssm1 = mixer.mix(xBC, dt_raw, conv0, ssm0, self.reset, self.valid)
        if st is not None:
            st.conv[layer_idx] = conv1.to(st.conv[layer_idx].dtype)
            st.ssm[layer_idx] = ssm1.to(st.ssm[layer_idx].dtype)
        return y

    def finish(self):
        if self.state is not None:
            self.state.kv_valid = self.kv_valid
            self.state.lengths = self.state.lengths + self._new_valid.sum(1)

"""The physical caches: K/V pages for every attention layer and state slots for every Mamba layer,
sized from a memory budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from h1r.config import ModelConfig
from h1r.errors import ConfigError


@dataclass
class CacheSpec:
    num_pages: int
    page_size: int  # tokens per page
    num_slots: int
    dtype: torch.dtype  # K/V and conv state
    ssm_dtype: torch.dtype

    @staticmethod
    def bytes_per_page(cfg: ModelConfig, page_size: int, dtype: torch.dtype) -> int:
        el = torch.empty((), dtype=dtype).element_size()
        return cfg.num_hidden_layers * 2 * page_size * cfg.num_key_value_heads * cfg.attn_head_dim * el

    @staticmethod
    def bytes_per_slot(cfg: ModelConfig, dtype: torch.dtype, ssm_dtype: torch.dtype) -> int:
        el = torch.empty((), dtype=dtype).element_size()
        sel = torch.empty((), dtype=ssm_dtype).element_size()
        L = cfg.num_hidden_layers
        conv = L * cfg.conv_dim * (cfg.mamba_d_conv - 1) * el
        ssm = L * cfg.mamba_n_heads * cfg.ssm_head_dim * cfg.mamba_d_state * sel
        return conv + ssm

    @classmethod
    def from_budget(cls, cfg: ModelConfig, budget_bytes: int, page_size: int, num_slots: int,
                    dtype: torch.dtype, ssm_dtype: torch.dtype, min_pages: int) -> "CacheSpec":
        slot_bytes = num_slots * cls.bytes_per_slot(cfg, dtype, ssm_dtype)
        page_bytes = cls.bytes_per_page(cfg, page_size, dtype)
        num_pages = (budget_bytes - slot_bytes) // page_bytes
        if num_pages < min_pages:
            need = slot_bytes + min_pages * page_bytes
            raise ConfigError(f"cache budget of {budget_bytes / 1e6:.1f} MB is too small: {num_slots} state slots "
                              f"({slot_bytes / 1e6:.1f} MB) plus pages for one sequence at max_model_len need "
                              f"{need / 1e6:.1f} MB; raise the memory budget or lower max_num_seqs/max_model_len")
        return cls(int(num_pages), page_size, num_slots, dtype, ssm_dtype)


class EngineCache:
    """k, v   [L, num_pages, page_size, Hkv, hd]
    conv   [L, num_slots, conv_dim, K-1]   last K-1 raw xBC inputs
    ssm    [L, num_slots, H, P, N]         SSM state (fp32 or bf16)"""

    def __init__(self, cfg: ModelConfig, spec: CacheSpec, device):
        L, hd, Hkv = cfg.num_hidden_layers, cfg.attn_head_dim, cfg.num_key_value_heads
        self.spec = spec
        self.k = torch.zeros(L, spec.num_pages, spec.page_size, Hkv, hd, dtype=spec.dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.conv = torch.zeros(L, spec.num_slots, cfg.conv_dim, cfg.mamba_d_conv - 1, dtype=spec.dtype, device=device)
        self.ssm = torch.zeros(L, spec.num_slots, cfg.mamba_n_heads, cfg.ssm_head_dim, cfg.mamba_d_state,
                               dtype=spec.ssm_dtype, device=device)

    def zero_slot(self, slot: int) -> None:
        self.conv[:, slot].zero_()
        self.ssm[:, slot].zero_()

    def copy_slot(self, src: int, dst: int) -> None:
        self.conv[:, dst].copy_(self.conv[:, src])
        self.ssm[:, dst].copy_(self.ssm[:, src])

    def copy_page(self, src: int, dst: int) -> None:
        self.k[:, dst].copy_(self.k[:, src])
        self.v[:, dst].copy_(self.v[:, src])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.conv, self.ssm))

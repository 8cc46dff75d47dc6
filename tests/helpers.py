"""Shared test fixtures: random transformers Falcon-H1 checkpoints and a tiny tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
            mamba_d_state=8, mamba_chunk_size=32, rope_theta=1e4, embedding_multiplier=2.0,
            lm_head_multiplier=0.3, key_multiplier=0.7, attention_in_multiplier=0.9, attention_out_multiplier=0.6,
            ssm_in_multiplier=0.8, ssm_out_multiplier=0.4, ssm_multipliers=[0.3, 0.25, 0.2, 0.5, 0.35],
            mlp_multipliers=[0.7, 0.4])

# parity configs: groups, gated norm on/off, norm before/after gate, tied/untied
PARITY_CONFIGS = {
    "groups2-gatednorm-untied": dict(mamba_n_groups=2, mamba_rms_norm=True, mamba_norm_before_gate=False),
    "nonorm-tied": dict(mamba_rms_norm=False, tie_word_embeddings=True),
    "norm-before-gate-groups4": dict(mamba_n_groups=4, mamba_rms_norm=True, mamba_norm_before_gate=True,
                                     num_attention_heads=6, num_key_value_heads=3, head_dim=16),
    "gqa1-bias": dict(num_key_value_heads=1, mamba_rms_norm=True, mamba_norm_before_gate=False,
                      mamba_proj_bias=True, attention_bias=True, mlp_bias=True, mamba_chunk_size=16),
}


def hf_model(seed: int = 0, **overrides):
    """A transformers FalconH1ForCausalLM with random (non-default) weights, fp32, eval mode."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.FalconH1Config(**{**BASE, **overrides})
    model = transformers.FalconH1ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name:
                p.uniform_(-1.0, 1.5)
            elif "dt_bias" in name:
                p.uniform_(-2.0, 1.0)
            elif name.endswith("norm.weight") or "layernorm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    return model


def save_hf(model, path: Path, **kw) -> Path:
    model.save_pretrained(str(path), **kw)
    return path


def tiny_tokenizer_dir(path: Path, words: int = 200) -> Path:
    """A word-level tokenizer with H1R's special tokens and chat template, saved in `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from h1r.tokenizer import DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in ["<unk>", "user", "assistant", "system", "\n", "\\boxed{", "}"] + [str(i) for i in range(100)] + \
             [f"w{i}" for i in range(words)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    tok.add_special_tokens(SPECIAL_TOKENS)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>",
           "chat_template": DEFAULT_CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


def kernel_device() -> str:
    """Where a Triton kernel test module runs: "cuda" on a GPU, "cpu" under TRITON_INTERPRET=1 (fp32 only);
    elsewhere the calling module is skipped."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.importorskip("triton")
        return "cpu"
    pytest.skip("kernel tests need CUDA or TRITON_INTERPRET=1", allow_module_level=True)


def rel(a, b) -> float:
    """Relative error ||a - b|| / ||b|| in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def adamw_noting_order(params, monkeypatch, trainer_module):
    """AdamW and a constant schedule whose step, and `trainer_module`'s read of the gradient norm
    (local_grad_norm_to_float, a wait for the GPU), append to the returned list in the order they happen."""
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    order: list[str] = []
    opt.register_step_pre_hook(lambda *a: order.append("optimizer.step"))
    read = trainer_module.local_grad_norm_to_float
    monkeypatch.setattr(trainer_module, "local_grad_norm_to_float", lambda n: order.append("read the norm") or read(n))
    return opt, sched, order

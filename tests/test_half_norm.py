"""Under autocast the norms return the autocast dtype (one cast instead of one per Linear) and RoPE keeps its
input's dtype; the model's values must not change, and the gradients only by bf16 rounding."""

import pytest
import torch

from h1r.checkpoint import init_model
from h1r.config import preset
from h1r.model import falcon_h1 as FH
from h1r.train.loss import TokenNLL


@pytest.fixture()
def model():
    # gated norm on, µP multipliers away from 1 so the scaled-weight paths run
    cfg = preset("tiny", mamba_rms_norm=True, ssm_in_multiplier=0.8, attention_in_multiplier=0.9)
    return init_model(cfg, seed=3)


def _loss_and_grads(model, ids, mask, reset, half_norm: bool, monkeypatch):
    monkeypatch.setattr(FH, "HALF_NORM_OUTPUT", half_norm)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = TokenNLL(model, fused=False)(ids, mask, reset=reset)
    nll.mean().backward()
    return nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_norm_returns_autocast_dtype_with_the_same_values(monkeypatch):
    torch.manual_seed(0)
    norm = FH.RMSNorm(32, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(5, 7, 32)
    monkeypatch.setattr(FH, "HALF_NORM_OUTPUT", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, norm(x).to(torch.bfloat16))  # the cast a Linear would have made
    assert norm(x).dtype == torch.float32  # no autocast: unchanged
    monkeypatch.setattr(FH, "HALF_NORM_OUTPUT", False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.float32


def test_rope_keeps_the_input_dtype():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8).to(torch.bfloat16)
    cos, sin = FH.rope_cos_sin(torch.arange(5).expand(2, 5), 8, 1e4, torch.float32)
    y = FH.apply_rope(x, cos, sin)
    assert y.dtype == torch.bfloat16
    x1, x2 = x.float().chunk(2, dim=-1)
    ref = x.float() * cos[:, :, None] + torch.cat([-x2, x1], -1) * sin[:, :, None]
    assert torch.equal(y, ref.to(torch.bfloat16))


def test_model_loss_identical_and_grads_close_under_autocast(model, monkeypatch):
    torch.manual_seed(1)
    B, T = 2, 160  # B*T above hidden_size: the projections take the scaled-weight path, as training does
    ids = torch.randint(5, model.config.vocab_size, (B, T))
    mask = torch.rand(B, T) < 0.7
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 61] = True
    on, g_on = _loss_and_grads(model, ids, mask, reset, True, monkeypatch)
    off, g_off = _loss_and_grads(model, ids, mask, reset, False, monkeypatch)
    assert torch.equal(on, off)  # the Linears saw the same bf16 inputs
    assert g_on.keys() == g_off.keys() and len(g_on) > 10
    for name in g_on:
        a, b = g_on[name], g_off[name]
        assert a.dtype == torch.float32
        err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert err < 2e-2, (name, err)


def test_token_nll_order_matches_boolean_selection(model):
    """The supervised positions found before the forward give the NLLs in row-major mask order."""
    torch.manual_seed(2)
    B, T = 3, 24
    ids = torch.randint(5, model.config.vocab_size, (B, T))
    mask = torch.rand(B, T) < 0.5
    mask[:, 0] = False
    with torch.no_grad():
        nll = TokenNLL(model, fused=False)(ids, mask)
        logits = model(ids).float()
    sel = mask[:, 1:]
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][sel], ids[:, 1:][sel], reduction="none")
    assert nll.shape == ref.shape
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


def test_token_nll_takes_prebuilt_positions_and_context(model):
    """A step captured in a CUDA graph builds the scored positions and the model's context first."""
    from h1r.model.context import DenseContext
    from h1r.train.loss import scored_positions

    torch.manual_seed(4)
    B, T = 2, 40
    ids = torch.randint(5, model.config.vocab_size, (B, T))
    mask = torch.rand(B, T) < 0.6
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = True
    reset[1, 17] = True
    with torch.no_grad():
        plain = TokenNLL(model, fused=False)(ids, mask, reset=reset)
        ctx = DenseContext(None, ids.shape, ids.device, None, reset, None)
        pre = TokenNLL(model, fused=False)(ids, mask, reset=reset, positions=scored_positions(mask), ctx=ctx)
        wrong = TokenNLL(model, fused=False)(ids, mask, reset=reset, ctx=DenseContext(None, ids.shape, ids.device))
    assert torch.equal(plain, pre)
    assert not torch.allclose(plain, wrong)  # the context is really used: without the resets it differs


def test_layers_compile_only_for_cuda_training(model, monkeypatch):
    from types import SimpleNamespace

    cuda_h = SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(FH, "COMPILE_LAYERS", True)
    assert FH._compile_layers(model, cuda_h)
    assert not FH._compile_layers(model, torch.zeros(1))  # CPU
    with torch.no_grad():
        assert not FH._compile_layers(model, cuda_h)  # forward-only calls stay eager
    monkeypatch.setattr(FH, "COMPILE_LAYERS", False)
    assert not FH._compile_layers(model, cuda_h)

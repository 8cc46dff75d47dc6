"""Activation checkpointing of a share of the layers: the chosen layers recompute, evenly spread, and the
gradients equal those without checkpointing; configs take true/false or a fraction and refuse the rest."""

import pytest
import torch
import torch.utils.checkpoint

from h1r.checkpoint import init_model
from h1r.config import preset
from h1r.errors import ConfigError
from h1r.train.loss import TokenNLL


@pytest.fixture()
def model():
    return init_model(preset("tiny", num_hidden_layers=6), seed=0).train()


def _grads(model, ids, reset):
    model.zero_grad(set_to_none=True)
    TokenNLL(model, fused=False)(ids, torch.ones_like(ids, dtype=torch.bool), reset=reset).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("value,layers", [(0.5, {0, 2, 4}), (0.34, {0, 3}), (0.01, {0}), (1.0, None), (True, None)])
def test_the_chosen_layers_recompute_and_gradients_do_not_change(model, value, layers, monkeypatch):
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 48))
    reset = torch.zeros(2, 48, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 20] = True
    model.set_activation_checkpointing(False)
    plain = _grads(model, ids, reset)
    model.set_activation_checkpointing(value)
    assert model.checkpoint_layers == (frozenset(layers) if layers is not None else None)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append(1) or real(fn, *a, **k))
    ckpt = _grads(model, ids, reset)
    assert len(calls) == (len(layers) if layers is not None else 6)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-5, atol=1e-6)


def test_bad_fractions_are_refused(model):
    for bad in (1.5, -0.2):
        with pytest.raises(ValueError, match="fraction"):
            model.set_activation_checkpointing(bad)


def test_configs_take_booleans_and_fractions(tmp_path):
    from h1r.train.config import SFTConfig
    from h1r.utils.config import from_dict

    base = {"model": str(tmp_path), "data": ["x.jsonl"], "output_dir": str(tmp_path / "out")}
    assert from_dict(SFTConfig, {**base, "activation_checkpointing": "0.5"}).activation_checkpointing == 0.5
    assert from_dict(SFTConfig, {**base, "activation_checkpointing": "true"}).activation_checkpointing is True
    cfg = from_dict(SFTConfig, {**base, "activation_checkpointing": 1.5})
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        cfg.validate()


def test_grpo_config_refuses_a_bad_fraction(tmp_path):
    from h1r.train.grpo_config import GRPOConfig

    cfg = GRPOConfig(model=str(tmp_path), data=["x.jsonl"], output_dir=str(tmp_path / "o"), activation_checkpointing=0)
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        cfg.validate()

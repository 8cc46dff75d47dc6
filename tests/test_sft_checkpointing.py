"""CheckpointManager on a toy model: exact state round trip, RNG, pruning, torn saves are ignored."""

import random

import numpy as np
import pytest
import torch

from h1r.errors import CheckpointError
from h1r.train.checkpointing import CheckpointManager
from h1r.train.distributed import DistInfo
from h1r.train.optim import build_adamw, build_scheduler


def toy(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = build_adamw(model, lr=1e-2)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=2, kind="cosine", min_ratio=0.1)
    return model, opt, sched


def train_steps(model, opt, sched, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model(torch.randn(3, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def test_round_trip_is_exact_and_continues_identically(tmp_path):
    model, opt, sched = toy()
    train_steps(model, opt, sched, 3)
    mgr = CheckpointManager(tmp_path / "ck", DistInfo(), keep_last=2)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = mgr.save(3, model, opt, sched, {"note": "x"})
    lr_at_save = sched.get_last_lr()
    expect_rng = (random.random(), np.random.rand(), torch.rand(1).item())
    train_steps(model, opt, sched, 2, seed=2)
    ref = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = toy(seed=9)  # different init: everything must come from the checkpoint
    state = CheckpointManager(tmp_path / "ck", DistInfo()).load(mgr.latest(), model2, opt2, sched2)
    assert state["step"] == 3 and state["note"] == "x" and mgr.latest() == path
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect_rng
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == lr_at_save
    train_steps(model2, opt2, sched2, 2, seed=2)
    for a, b in zip(ref, model2.parameters()):
        assert torch.equal(a, b.detach())


def test_keep_last_latest_pointer_and_torn_saves(tmp_path):
    model, opt, sched = toy()
    mgr = CheckpointManager(tmp_path, DistInfo(), keep_last=2)
    for step in (1, 2, 3):
        train_steps(model, opt, sched, 1)
        mgr.save(step, model, opt, sched)
    assert [p.name for p in mgr.complete_checkpoints()] == ["step_00000002", "step_00000003"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000003"
    # a torn save (no trainer_state.json) and a half-renamed directory are never picked
    (tmp_path / ".tmp_step_00000004" / "dcp").mkdir(parents=True)
    (tmp_path / "step_00000009" / "dcp").mkdir(parents=True)
    assert mgr.latest().name == "step_00000003"
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        mgr.load(tmp_path / "step_00000009", model, opt, sched)
    train_steps(model, opt, sched, 1)
    mgr.save(4, model, opt, sched)  # a later save cleans the torn one up
    assert not (tmp_path / ".tmp_step_00000004").exists() and mgr.latest().name == "step_00000004"


def test_loading_into_another_model_is_a_clear_error(tmp_path):
    model, opt, sched = toy()
    mgr = CheckpointManager(tmp_path, DistInfo())
    mgr.save(1, model, opt, sched)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="cannot load model/optimizer state"):
        mgr.load(mgr.latest(), other, build_adamw(other, 1e-2), None)

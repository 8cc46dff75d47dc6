"""The GRPO objective against hand-computed values: advantages, clipping on both sides, each
aggregation mode, truncated importance weights, the NLL term, masked truncated completions, k3 KL."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from h1r.train.grpo_batch import build_sequences
from h1r.train.grpo_loss import (aggregation_weights, group_advantages, grpo_loss, k3_kl, per_token_loss,
                                 truncated_is_weight, zero_advantage)
from h1r.train.grpo_rollout import Group, Rollout

T = torch.tensor


def test_group_advantages_by_hand():
    r = T([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    std0 = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    std2 = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)
    a = group_advantages(r, "group")
    a0 = 0.5 / (std0 + 1e-4)
    assert a[0].tolist() == pytest.approx([a0, -a0, -a0, a0])
    assert a[1].tolist() == [0.0] * 4  # zero-std group: no signal, no NaN
    assert a[2].tolist() == pytest.approx([0.75 / (std2 + 1e-4)] + [-0.25 / (std2 + 1e-4)] * 3)
    assert group_advantages(r, "none")[2].tolist() == [0.75, -0.25, -0.25, -0.25]
    assert group_advantages(r, "none")[1].tolist() == [0.0] * 4
    batch_std = r.flatten().std().item()
    assert group_advantages(r, "batch")[0, 0].item() == pytest.approx(0.5 / (batch_std + 1e-4))
    assert zero_advantage(r).tolist() == [False, True, False]


def test_clipping_on_both_sides_by_hand():
    eps_lo, eps_hi = 0.2, 0.28
    ratio = T([1.5, 1.5, 0.5, 0.5, 1.1, 1.1])
    adv = T([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    logp = torch.log(ratio).requires_grad_(True)
    tl = per_token_loss(logp, torch.zeros(6), adv, eps_lo, eps_hi)
    # A>0 above 1+eps_high: clipped at 1.28; A<0 above: unclipped 1.5; A>0 below 1-eps: unclipped 0.5;
    # A<0 below: clipped at 0.8; inside the trust region: r*A
    assert tl.loss.tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8, -2.2, 2.2])
    assert tl.clipped_high.tolist() == [True, False, False, False, False, False]
    assert tl.clipped_low.tolist() == [False, False, False, True, False, False]
    tl.loss.sum().backward()
    # d(-r*A)/dlogp = -r*A where the unclipped term is active, 0 where the clip is
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0, -2.2, 2.2])


def test_epsilon_high_defaults_to_symmetric_clip():
    tl = per_token_loss(torch.log(T([1.25])), torch.zeros(1), T([1.0]), 0.2, 0.2)
    assert tl.loss.item() == pytest.approx(-1.2) and tl.clipped_high.item()


# two completions: lengths 2 and 4 (of a padded T=5), ratio 1, advantages +1 and -0.25
MASK = T([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
ADV = T([1.0, -0.25])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-1.0 + 0.25) / 2),  # mean over each sequence's tokens, then over sequences
    ("dapo", (-2.0 + 1.0) / 6),  # token mean over the batch
    ("bnpo", (-2.0 + 1.0) / 6),
    ("dr_grpo", (-2.0 + 1.0) / (2 * 8)),  # token sum / (sequences * max_completion_length)
])
def test_aggregation_modes_by_hand(loss_type, expected):
    z = torch.zeros(2, 5)
    loss = grpo_loss(z, z, ADV, MASK, loss_type, 0.2, 0.28, max_completion_length=8)
    assert loss.item() == pytest.approx(expected)
    assert sum(w * n for w, n in zip(aggregation_weights([2, 4], loss_type, 8), [-2.0, 1.0])) == pytest.approx(expected)


def test_truncated_importance_weights_by_hand():
    trainer = T([0.1, 1.0, -0.5, 0.0])
    w = truncated_is_weight(trainer, torch.zeros(4), cap=2.0)
    assert w.tolist() == pytest.approx([math.exp(0.1), 2.0, math.exp(-0.5), 1.0])  # capped only above
    # in the loss: each token's surrogate is multiplied by its weight (ratio 1 here: old = new)
    old = T([[0.1, 1.0, 0, 0, 0], [-0.5, 0.0, 0.0, 0.0, 0]])
    rollout = torch.zeros(2, 5)
    loss = grpo_loss(old.clone(), old, ADV, MASK, "dapo", 0.2, 0.28, 8, rollout_logp=rollout, is_cap=2.0)
    expected = (-(math.exp(0.1) + 2.0) + 0.25 * (math.exp(-0.5) + 3 * 1.0)) / 6
    assert loss.item() == pytest.approx(expected)
    assert not truncated_is_weight(trainer.requires_grad_(True), torch.zeros(4), 2.0).requires_grad


def test_nll_on_correct_completions_by_hand():
    z = torch.zeros(2, 5)
    nll = T([[0.5, 1.5, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0, 9.0]])  # padding (9) never counts
    base = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8)
    with_nll = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8, nll=nll, correct=T([True, False]), nll_coef=0.1)
    assert (with_nll - base).item() == pytest.approx(0.1 * (0.5 + 1.5) / 2)  # token mean over correct ones


def test_k3_kl_term_when_beta_positive():
    logp, ref = math.log(0.5), math.log(0.25)
    d = ref - logp
    assert k3_kl(T([logp]), T([ref])).item() == pytest.approx(math.exp(d) - d - 1)  # = 0.5 + ln 2 - 1
    assert k3_kl(T([0.3]), T([0.3])).item() == 0.0
    z = torch.zeros(2, 5)
    ref_logp = torch.full((2, 5), d)  # ref - logp = d everywhere
    base = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8)
    kl = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8, ref_logp=ref_logp, beta=0.04)
    assert (kl - base).item() == pytest.approx(0.04 * (math.exp(d) - d - 1))  # token mean of a constant KL
    with pytest.raises(ValueError, match="ref_logp"):
        per_token_loss(torch.zeros(1), torch.zeros(1), T([1.0]), 0.2, 0.2, beta=0.1)


def _group(rewards, lengths, finish, correct=None, index=0):
    rs = [Rollout(list(range(n)), np.zeros(n, np.float32), f, float(r), bool(c))
          for r, n, f, c in zip(rewards, lengths, finish, correct or [False] * len(rewards))]
    return Group(position=index, prompt_index=index, rollouts=rs, version=0)


def _cfg(**kw):
    base = dict(scale_rewards="none", loss_type="dapo", max_completion_length=4, nll_coef=0.0,
                mask_truncated_completions=False)
    return SimpleNamespace(**{**base, **kw})


def test_masking_truncated_completions():
    prompts = [SimpleNamespace(ids=[7, 8, 9])]
    g = _group([1.0, 0.0, 0.0], [2, 4, 3], ["stop", "length", "stop"], correct=[True, False, False])
    seqs, st = build_sequences([g], prompts, _cfg())
    assert len(seqs) == 3 and st["masked_truncated"] == 0
    assert [s.weight for s in seqs] == pytest.approx([1 / 9] * 3)
    seqs, st = build_sequences([g], prompts, _cfg(mask_truncated_completions=True))
    # the truncated one carries no loss and no longer counts in the token mean; advantages still use
    # the whole group's rewards (mean 1/3)
    assert st["masked_truncated"] == 1 and len(seqs) == 2
    assert [s.advantage for s in seqs] == pytest.approx([2 / 3, -1 / 3])
    assert [s.weight for s in seqs] == pytest.approx([1 / 5, 1 / 5])
    assert seqs[0].ids.tolist() == [7, 8, 9, 0, 1] and seqs[0].start == 3
    seqs, _ = build_sequences([g], prompts, _cfg(nll_coef=0.5))
    assert [s.nll_weight for s in seqs] == pytest.approx([0.5 / 2, 0.0, 0.0])  # correct tokens: 2


def test_entropy_bonus_off_by_default_and_aggregated_like_the_loss():
    z = torch.zeros(2, 5)
    ent = T([[1.0, 2.0, 9.0, 9.0, 9.0], [3.0, 3.0, 3.0, 3.0, 9.0]])
    base = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8)
    assert grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8, entropy=ent).item() == base.item()  # coef 0
    bonus = grpo_loss(z, z, ADV, MASK, "dapo", 0.2, 0.28, 8, entropy=ent, entropy_coef=0.01) - base
    assert bonus.item() == pytest.approx(-0.01 * (1 + 2 + 4 * 3) / 6)

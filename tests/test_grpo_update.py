"""policy_update's bookkeeping: the metrics it reports are the step's, read from the GPU once, after the
optimizer step has been queued."""

import math

import numpy as np
import pytest
import torch

from h1r.train import grpo_update
from h1r.train.distributed import DistInfo
from h1r.train.grpo_batch import TrainSeq, rank_batches
from h1r.train.grpo_config import GRPOConfig
from h1r.train.grpo_update import PolicyLogprobs, Sums, policy_update
from tests.helpers import adamw_noting_order


def test_sums_mix_floats_and_device_scalars_and_keep_the_ratio_range():
    s = Sums()
    s.add(tokens=3, loss=torch.tensor(1.5))
    s.add(tokens=2, loss=torch.tensor(0.25), kl=torch.tensor([0.5, 0.25]).sum())
    sums, lo, hi = s.read()
    assert dict(zip(Sums.KEYS, sums)) == {**dict.fromkeys(Sums.KEYS, 0.0), "tokens": 5.0, "loss": 1.75, "kl": 0.75}
    assert (lo, hi) == (math.inf, -math.inf)  # no ratio seen
    s.add_ratio_range(torch.tensor([1.25, 0.5, 2.0]))
    s.add_ratio_range(torch.tensor([0.75, 3.0]))
    assert s.read()[1:] == (0.5, 3.0)


def test_policy_update_reads_the_metrics_after_queueing_the_optimizer(monkeypatch):
    from h1r.checkpoint import init_model
    from h1r.config import preset

    torch.manual_seed(0)
    lm = init_model(preset("tiny", vocab_size=96, num_hidden_layers=2), seed=1).train()
    rng = np.random.default_rng(0)
    seqs = [TrainSeq(rng.integers(5, 96, size=p + c).astype(np.int64), p,
                     rng.uniform(-7, -3, size=c).astype(np.float32), adv, 1.0 / 40, 0.0, 0.0, False)
            for p, c, adv in [(5, 11, 1.0), (9, 3, -0.5), (3, 20, 0.5), (12, 7, -1.0)]]
    cfg = GRPOConfig(per_device_train_batch_size=2, max_prompt_length=16, max_completion_length=24)
    batches = rank_batches(seqs, cfg, DistInfo(), pad_id=0)
    module = PolicyLogprobs(lm, temperature=1.0)
    with torch.no_grad():  # the importance ratios policy_update will see: pi_train / pi_rollout before the step
        ratios = torch.cat([torch.exp(module(b.mb.input_ids, b.mb.target_mask, b.mb.attention_mask, b.mb.reset)[0]
                                      - b.rollout_logp) for b in batches])
    opt, sched, order = adamw_noting_order(lm.parameters(), monkeypatch, grpo_update)
    m = policy_update(module, None, batches, opt, sched, cfg, DistInfo(), torch.autocast("cpu", enabled=False))
    assert order == ["optimizer.step", "read the norm"]
    assert m["train_tokens"] == ratios.numel() == sum(len(s.ids) - s.start for s in seqs)
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert m["is_ratio_min"] == pytest.approx(ratios.min().item(), rel=1e-5)
    assert m["is_ratio_max"] == pytest.approx(ratios.max().item(), rel=1e-5)
    assert m["is_capped_share"] == pytest.approx((ratios > cfg.importance_sampling_cap).float().mean().item())
    assert 0 < m["is_capped_share"] < 1  # the case has ratios on both sides of the cap

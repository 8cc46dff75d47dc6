"""From a step's groups to the micro-batches one rank trains on.

Each completion becomes a training sequence (prompt + completion; the completion's tokens carry the
loss) with its advantage, aggregation weight, rollout logprobs and NLL weight. Every rank builds the
same plan for the whole batch (h1r.train.batching: rows, padded or packed, dealt round-robin), so the
loss does not depend on how the batch is split. Per-token extras are laid out in the row-major order
of `target_mask[:, 1:]`, the order in which the policy module returns its logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from h1r.train.batching import MicroBatch, collate, plan_rows, rank_micro_batches
from h1r.train.grpo_loss import aggregation_weights, group_advantages


@dataclass
class TrainSeq:
    ids: np.ndarray  # int64 [L]: prompt + completion
    start: int  # first completion position (= prompt length)
    rollout_logp: np.ndarray  # float32 [L - start]
    advantage: float
    weight: float  # aggregation weight of each of its tokens
    nll_weight: float  # weight of each token's NLL (nll_coef / correct tokens of the batch, or 0)
    reward: float
    correct: bool


def build_sequences(groups, prompts, cfg) -> tuple[list[TrainSeq], dict]:
    """Advantages per group, then the training sequences (truncated ones dropped when masked)."""
    if not groups:
        return [], {"masked_truncated": 0}
    rewards = torch.tensor(np.stack([g.rewards for g in groups]), dtype=torch.float64)  # [N,G]
    adv = group_advantages(rewards, cfg.scale_rewards).tolist()
    items = []
    masked = 0
    for g, a_row in zip(groups, adv):
        for r, a in zip(g.rollouts, a_row):
            if cfg.mask_truncated_completions and r.truncated:
                masked += 1
                continue
            items.append((prompts[g.prompt_index].ids, r, a))
    lengths = [len(r.token_ids) for _, r, _ in items]
    weights = aggregation_weights(lengths, cfg.loss_type, cfg.max_completion_length)
    correct_tokens = sum(len(r.token_ids) for _, r, _ in items if r.correct)
    nll_w = cfg.nll_coef / correct_tokens if cfg.nll_coef > 0 and correct_tokens else 0.0
    seqs = [TrainSeq(np.asarray(list(p) + list(r.token_ids), dtype=np.int64), len(p),
                     np.asarray(r.logprobs, dtype=np.float32), float(a), w, nll_w if r.correct else 0.0,
                     r.reward, r.correct)
            for (p, r, a), w in zip(items, weights)]
    return seqs, {"masked_truncated": masked}


@dataclass
class RLMicroBatch:
    mb: MicroBatch  # input_ids, target_mask, attention_mask, reset
    rollout_logp: torch.Tensor  # [n] float32, n = supervised tokens in row-major order
    advantages: torch.Tensor  # [n]
    weight: torch.Tensor  # [n] aggregation weight
    nll_weight: torch.Tensor  # [n]
    n_seqs: int

    def to(self, device) -> "RLMicroBatch":
        return RLMicroBatch(self.mb.to(device), self.rollout_logp.to(device), self.advantages.to(device),
                            self.weight.to(device), self.nll_weight.to(device), self.n_seqs)


def collate_rl(rows: list[list[TrainSeq]], pad_id: int, packed: bool) -> RLMicroBatch:
    mb = collate([[(s.ids, s.start, len(s.ids), 1.0) for s in row] for row in rows], pad_id, packed)
    seqs = [s for row in rows for s in row]
    rep = lambda v: np.concatenate([np.full(len(s.ids) - s.start, getattr(s, v), np.float32) for s in seqs])  # noqa
    if not seqs:
        z = torch.zeros(0)
        return RLMicroBatch(mb, z, z, z, z, 0)
    return RLMicroBatch(mb, torch.from_numpy(np.concatenate([s.rollout_logp for s in seqs])),
                        torch.from_numpy(rep("advantage")), torch.from_numpy(rep("weight")),
                        torch.from_numpy(rep("nll_weight")), len(seqs))


def rank_batches(seqs: list[TrainSeq], cfg, info, pad_id: int) -> list[RLMicroBatch]:
    """This rank's micro-batches of the global batch (the same number on every rank)."""
    capacity = cfg.max_prompt_length + cfg.max_completion_length
    rows = plan_rows([len(s.ids) for s in seqs], cfg.pack, capacity)
    micro = rank_micro_batches(rows, info.rank, info.world_size, cfg.per_device_train_batch_size)
    return [collate_rl([[seqs[j] for j in row] for row in mb], pad_id, cfg.pack) for mb in micro]

"""The GRPO objective, as plain functions on flat token tensors (recipe part A.3.3).

Per completion token t of rollout i, with ratio r = pi_theta / pi_old and advantage A_i:

    l_t = -min(r * A_i, clip(r, 1 - eps_low, 1 + eps_high) * A_i) * w_is   (+ beta * k3 KL)

- A_i = (R_i - mean_group) / (std + 1e-4) ("group"), the group mean over the batch std ("batch"), or no
  std scaling ("none", Dr.GRPO); a group whose rewards are all equal has A = 0 for every rollout.
- w_is = min(pi_train / pi_rollout, cap) per token, detached: the truncated importance weight between
  the trainer's and the rollout engine's probabilities of the sampled token (both at the sampling
  temperature). It also corrects rollouts taken from the cache, which an older policy generated.
- k3 KL = exp(ref - logp) - (ref - logp) - 1, only when beta > 0 (the IS weight does not touch it, as
  in TRL).
- Aggregation (`loss_type`) is a per-token weight, computed once for the whole global batch:
  grpo 1 / (|o_i| * N), dapo/bnpo 1 / sum_i |o_i|, dr_grpo 1 / (N * max_completion_length), where N is
  the number of completions and |o_i| counts the tokens that carry loss (truncated ones may be masked).
  The loss is then sum_t weight_t * l_t, wherever the token lands (micro-batch, rank).
- Optional auxiliary NLL on correct completions: nll_coef * token mean of -log p (temperature 1).
- Optional entropy bonus: - entropy_coef * H_t per token, aggregated like the surrogate (off in the
  recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADV_EPS = 1e-4  # TRL's epsilon in (R - mean) / (std + eps)


def group_advantages(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """rewards [N, G] -> advantages [N, G] (std unbiased, as torch.std and TRL)."""
    mean = rewards.mean(dim=1, keepdim=True)
    centred = rewards - mean
    if scale == "none":
        return centred
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True)
    elif scale == "batch":
        std = rewards.std()
    else:
        raise ValueError(f"unknown scale_rewards {scale!r}")
    return centred / (std + ADV_EPS)


def zero_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [N, G] -> [N] bool: every rollout of the group got the same reward (no learning signal)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def aggregation_weights(lengths: list[int], loss_type: str, max_completion_length: int) -> list[float]:
    """Per-token loss weight of each completion (same for all of its tokens) so that the sum over the
    batch of weight * token loss is the chosen aggregate. `lengths`: loss-carrying tokens per completion."""
    n = len(lengths)
    if n == 0:
        return []
    if loss_type == "grpo":
        return [1.0 / (max(L, 1) * n) for L in lengths]
    if loss_type in ("dapo", "bnpo"):
        total = max(sum(lengths), 1)
        return [1.0 / total] * n
    if loss_type == "dr_grpo":
        return [1.0 / (n * max_completion_length)] * n
    raise ValueError(f"unknown loss_type {loss_type!r}")


def truncated_is_weight(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_train / pi_rollout, cap) per token, detached. [n], [n] -> [n]."""
    return torch.exp(trainer_logp.detach() - rollout_logp).clamp(max=cap)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass
class TokenLoss:
    loss: torch.Tensor  # [n] per-token loss (surrogate * IS weight + beta * KL)
    clipped_low: torch.Tensor  # [n] bool: the lower clip is active (ratio < 1 - eps, A < 0)
    clipped_high: torch.Tensor  # [n] bool: the upper clip is active (ratio > 1 + eps_high, A > 0)
    ratio: torch.Tensor  # [n] detached
    kl: torch.Tensor | None  # [n] detached, when beta > 0


def per_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                   eps_high: float, is_weight: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                   beta: float = 0.0) -> TokenLoss:
    """All [n] (one entry per completion token; `advantages` repeated over each completion's tokens)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    if is_weight is not None:
        loss = loss * is_weight
    kl = None
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl_t = k3_kl(logp, ref_logp)
        loss = loss + beta * kl_t
        kl = kl_t.detach()
    r = ratio.detach()
    return TokenLoss(loss, (r < 1.0 - eps_low) & (advantages < 0), (r > 1.0 + eps_high) & (advantages > 0), r, kl)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              loss_type: str, eps_low: float, eps_high: float, max_completion_length: int,
              rollout_logp: torch.Tensor | None = None, is_cap: float = 2.0, ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, nll: torch.Tensor | None = None, correct: torch.Tensor | None = None,
              nll_coef: float = 0.0, entropy: torch.Tensor | None = None, entropy_coef: float = 0.0) -> torch.Tensor:
    """The whole-batch loss on padded [N, T] tensors (mask [N, T] bool; advantages [N]; correct [N] bool;
    nll [N, T] = -log p at temperature 1; entropy [N, T]). The trainer computes the same sum micro-batch
    by micro-batch."""
    lengths = mask.sum(dim=1).tolist()
    w = torch.tensor(aggregation_weights(lengths, loss_type, max_completion_length), dtype=logp.dtype)
    tok_w = (w[:, None] * mask)[mask]  # [n]
    adv = advantages[:, None].expand_as(mask)[mask]
    isw = truncated_is_weight(old_logp[mask], rollout_logp[mask], is_cap) if rollout_logp is not None else None
    tl = per_token_loss(logp[mask], old_logp[mask], adv, eps_low, eps_high, isw,
                        ref_logp[mask] if ref_logp is not None else None, beta)
    tok = tl.loss - entropy_coef * entropy[mask] if entropy_coef > 0 and entropy is not None else tl.loss
    total = (tok * tok_w).sum()
    if nll_coef > 0 and nll is not None and correct is not None:
        sel = mask & correct[:, None]
        total = total + nll_coef * nll[sel].sum() / max(int(sel.sum()), 1)
    return total

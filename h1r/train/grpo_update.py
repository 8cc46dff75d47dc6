"""The trainer's side of a GRPO step: logprobs of the sampled tokens, the loss, the optimiser step.

`PolicyLogprobs` is the module FSDP2 shards (its forward is the root forward, as TokenNLL's in SFT):
one forward returns, for the completion tokens only, log p at the sampling temperature (what the
engine's "processed" logprobs are), the entropy of that distribution, and log p at temperature 1 (for
the auxiliary NLL). The LM head runs on those positions alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from h1r.train.distributed import DistInfo, all_reduce_sum, local_grad_norm_to_float
from h1r.train.grpo_loss import per_token_loss, truncated_is_weight
from h1r.train.loss import scored_positions


class PolicyLogprobs(nn.Module):
    def __init__(self, lm: nn.Module, temperature: float = 1.0, entropy_grad: bool = False, fused: bool | None = None):
        """fused: token log-probs through h1r.train.fused_ce (no [n, V] logits); default on CUDA unless the
        entropy needs a gradient (an entropy bonus), which needs the full distribution."""
        super().__init__()
        self.lm, self.temperature, self.entropy_grad = lm, temperature, entropy_grad
        self.fused = fused

    def forward(self, input_ids, target_mask, attention_mask=None, reset=None):
        """input_ids [B,T], target_mask [B,T] bool (token t scored, predicted at t-1) -> (logp [n],
        entropy [n] (detached unless entropy_grad), logp at temperature 1 [n]), n in row-major order of
        target_mask[:, 1:]."""
        B, T = input_ids.shape
        flat = scored_positions(target_mask)  # before the forward (it waits for the GPU)
        h = self.lm.hidden_states(input_ids, attention_mask=attention_mask, reset=reset)  # [B,T,D]
        hs, tg = h.reshape(B * T, -1).index_select(0, flat), input_ids.reshape(-1)[flat + 1]  # [n,D], [n]
        fused = self.fused if self.fused is not None else (h.is_cuda and not self.entropy_grad)
        if fused:
            from h1r.train.fused_ce import token_entropy, token_logprobs

            w, m = self.lm.lm_head.weight, self.lm.lm_head_multiplier
            logp = token_logprobs(hs, w, tg, m / self.temperature)
            raw = logp if self.temperature == 1.0 else token_logprobs(hs, w, tg, m)
            return logp, token_entropy(hs.detach(), w.detach(), m / self.temperature), raw
        logits = self.lm.compute_logits(hs).float()  # [n,V]
        targets = tg[:, None]  # [n,1]
        lp_t = F.log_softmax(logits / self.temperature, dim=-1)  # [n,V]
        logp = lp_t.gather(1, targets).flatten().clone()  # not a view: FSDP2 hooks the outputs
        with torch.set_grad_enabled(self.entropy_grad and torch.is_grad_enabled()):
            entropy = -(lp_t.exp() * lp_t).sum(-1)
        raw = logp if self.temperature == 1.0 else F.log_softmax(logits, dim=-1).gather(1, targets).flatten().clone()
        return logp, entropy, raw


@torch.no_grad()
def forward_logprobs(module, batches, info: DistInfo, autocast) -> list[torch.Tensor]:
    out = []
    for b in batches:
        mb = b.mb.to(info.device)
        with autocast:
            out.append(module(mb.input_ids, mb.target_mask, mb.attention_mask, mb.reset)[0].float())
    return out


class Sums:
    """Scalar sums over tokens and sequences, reduced over ranks at the end of the step. Tensors stay on the
    device until `read`, so a micro-batch does not wait for the GPU before the host issues the next one."""

    KEYS = ("tokens", "loss", "entropy", "clip_low", "clip_high", "is_sum", "is_capped", "kl", "nll",
            "nll_tokens")

    def __init__(self):
        self.v: dict = dict.fromkeys(self.KEYS, 0.0)
        self.is_min, self.is_max = math.inf, -math.inf  # floats, or device scalars once a ratio was seen

    def add(self, **kw):
        for k, x in kw.items():
            self.v[k] = self.v[k] + (x.detach().double() if isinstance(x, torch.Tensor) else float(x))

    def add_ratio_range(self, ratio: torch.Tensor):
        lo, hi = ratio.detach().min().double(), ratio.detach().max().double()
        self.is_min = lo if not isinstance(self.is_min, torch.Tensor) else torch.minimum(self.is_min, lo)
        self.is_max = hi if not isinstance(self.is_max, torch.Tensor) else torch.maximum(self.is_max, hi)

    def read(self) -> tuple[list[float], float, float]:
        """-> (the sums in KEYS order, is_min, is_max) as floats, with one wait for the GPU."""
        items = [self.v[k] for k in self.KEYS] + [self.is_min, self.is_max]
        on_device = [i for i, x in enumerate(items) if isinstance(x, torch.Tensor)]
        out = [float(x) if not isinstance(x, torch.Tensor) else 0.0 for x in items]
        if on_device:
            for i, x in zip(on_device, torch.stack([items[i].reshape(()) for i in on_device]).tolist()):
                out[i] = x
        return out[:-2], out[-2], out[-1]


def policy_update(module, ref_module, batches, optimizer, scheduler, cfg, info: DistInfo, autocast) -> dict:
    """num_iterations optimiser steps on this rank's micro-batches of one batch of rollouts."""
    olds = forward_logprobs(module, batches, info, autocast) if cfg.num_iterations > 1 else None
    refs = forward_logprobs(ref_module, batches, info, autocast) if cfg.beta > 0 else None
    clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
    s = Sums()
    grad_norm = lr = 0.0
    for it in range(cfg.num_iterations):
        for j, b in enumerate(batches):
            b = b.to(info.device)
            mb = b.mb
            with autocast:
                logp, entropy, raw = module(mb.input_ids, mb.target_mask, mb.attention_mask, mb.reset)
            logp, raw = logp.float(), raw.float()
            old = logp.detach() if olds is None else olds[j]
            isw = (truncated_is_weight(old, b.rollout_logp, cfg.importance_sampling_cap)
                   if cfg.importance_sampling_correction else None)
            tl = per_token_loss(logp, old, b.advantages, cfg.epsilon, cfg.clip_high, isw,
                                refs[j] if refs is not None else None, cfg.beta)
            tok = tl.loss - cfg.entropy_coef * entropy if cfg.entropy_coef > 0 else tl.loss
            loss = (tok * b.weight).sum() + (-raw * b.nll_weight).sum()
            (loss * info.world_size).backward()  # FSDP averages gradients over ranks
            if it == 0:
                n = int(logp.numel())
                s.add(tokens=n, loss=loss.detach(), entropy=entropy.detach().sum(), clip_low=tl.clipped_low.sum(),
                      clip_high=tl.clipped_high.sum(), nll=(-raw.detach() * (b.nll_weight > 0)).sum(),
                      nll_tokens=(b.nll_weight > 0).sum())
                if tl.kl is not None:
                    s.add(kl=tl.kl.sum())
                if isw is not None and n:
                    raw_ratio = torch.exp(old - b.rollout_logp)
                    s.add(is_sum=isw.sum(), is_capped=(raw_ratio > cfg.importance_sampling_cap).sum())
                    s.add_ratio_range(raw_ratio)
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)  # a device scalar: no wait yet
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # read after queueing the optimizer (as sft.optimizer_step): the GPU runs AdamW while the host goes on
        grad_norm = local_grad_norm_to_float(grad_norm)
    sums, is_min, is_max = s.read()
    tot = dict(zip(Sums.KEYS, all_reduce_sum(sums, info)))
    if info.distributed:
        t = torch.tensor([-is_min, is_max], dtype=torch.float64, device=info.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        is_min, is_max = -float(t[0]), float(t[1])
    n = max(tot["tokens"], 1.0)
    out = dict(loss=tot["loss"], grad_norm=grad_norm, lr=lr, train_tokens=tot["tokens"],
               entropy=tot["entropy"] / n, clip_ratio_low=tot["clip_low"] / n, clip_ratio_high=tot["clip_high"] / n,
               clip_ratio=(tot["clip_low"] + tot["clip_high"]) / n)
    if cfg.importance_sampling_correction:
        out.update(is_weight_mean=tot["is_sum"] / n, is_capped_share=tot["is_capped"] / n,
                   is_ratio_min=is_min if math.isfinite(is_min) else float("nan"),
                   is_ratio_max=is_max if math.isfinite(is_max) else float("nan"))
    if cfg.beta > 0:
        out["kl"] = tot["kl"] / n
    if cfg.nll_coef > 0:
        out["nll_correct"] = tot["nll"] / max(tot["nll_tokens"], 1.0)
    return out

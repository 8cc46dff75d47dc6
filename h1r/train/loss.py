"""Token losses for training, and the global token-mean normalisation (recipe part A.2.5).

`TokenNLL` wraps the causal LM so that one forward returns the NLL of the supervised tokens only: the
LM head runs on those positions alone (no [B,T,V] logits for prompts or padding). It is the module that
FSDP2 shards (its forward is the root forward), and GRPO reuses it: logprob = -nll.

Balanced data-parallel token normalisation: with R ranks and gradient accumulation, each micro-batch's
loss is  sum_i w_i * nll_i / N_global * R,  where N_global counts the supervised tokens of the whole
global batch (every micro-batch, every rank; all-reduced before the first backward). DDP/FSDP average
gradients over the R ranks, so the net gradient is that of  sum w_i nll_i / N_global  over the global
batch: every supervised token counts the same wherever it lands.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def scored_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """target_mask [B,T] (token t scored, predicted at t-1) -> [n] indices into the flattened [B*T] positions
    that predict a scored token, row-major (the order of target_mask[:, 1:][mask]).

    Finding them waits for the GPU: call it before the forward, when nothing of this step is queued yet,
    not after it, where the wait would hold back the backward's launches."""
    T = target_mask.shape[1]
    pos = target_mask[:, 1:].nonzero()  # [n, 2] (row, t): token t+1 is scored
    return pos[:, 0] * T + pos[:, 1]


class TokenNLL(nn.Module):
    def __init__(self, lm: nn.Module, fused: bool | None = None):
        """fused: compute the NLL through h1r.train.fused_ce (no [n, V] logits); default on CUDA."""
        super().__init__()
        self.lm = lm
        self.fused = fused

    def forward(self, input_ids, target_mask, attention_mask=None, reset=None, positions=None,
                ctx=None) -> torch.Tensor:
        """input_ids [B,T], target_mask [B,T] bool (token t supervised, predicted at t-1) ->
        nll [n] fp32 in row-major order of target_mask[:, 1:].

        positions (scored_positions(target_mask)) and ctx (the model's context for these inputs) may be
        built beforehand: a step captured in a CUDA graph cannot wait for the GPU inside."""
        B, T = input_ids.shape
        flat = scored_positions(target_mask) if positions is None else positions  # before the forward
        h = self.lm.hidden_states(input_ids, attention_mask=attention_mask, reset=reset, ctx=ctx)  # [B,T,D]
        h_sel = h.reshape(B * T, -1).index_select(0, flat)  # [n,D]
        targets = input_ids.reshape(-1)[flat + 1]  # [n]
        if self.fused if self.fused is not None else h.is_cuda:
            from h1r.train.fused_ce import token_logprobs

            return -token_logprobs(h_sel, self.lm.lm_head.weight, targets, self.lm.lm_head_multiplier)
        logits = self.lm.compute_logits(h_sel).float()  # [n,V]
        return F.cross_entropy(logits, targets, reduction="none")


def global_token_mean(token_losses: torch.Tensor, token_weights: torch.Tensor | None, global_tokens: float,
                      world_size: int = 1) -> torch.Tensor:
    """This micro-batch's share of the global token-mean loss (see the module docstring).

    token_losses [n], token_weights [n] or None (all 1), global_tokens: supervised tokens of the global
    batch, all ranks (>= 1). Summing the result over micro-batches and averaging over ranks gives the mean.
    """
    s = (token_losses * token_weights).sum() if token_weights is not None else token_losses.sum()
    return s * (world_size / max(float(global_tokens), 1.0))

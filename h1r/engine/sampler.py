"""Sampling on device tensors for a batch of rows with per-row parameters.

Randomness is counter-based: the noise for (seed, output position, vocab id) is a hash, not a draw
from a shared generator, so a sample depends only on its own seed and position — never on what
else is in the batch, on preemption and recompute, or on whether it ran on CPU or GPU. A row is
sampled with the exponential race argmax_v p_v / E_v (E ~ Exp(1)), which draws exactly from p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def uniform_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """seeds [R] int64, positions [R] int64 -> u [R, vocab] float32 in (0, 1)."""
    row = _mix64(seeds * _GOLDEN + _mix64(positions + 0x632BE59BD9B4E019))  # [R]
    v = torch.arange(1, vocab + 1, device=seeds.device, dtype=torch.int64)
    h = _mix64(row[:, None] + v[None, :] * _GOLDEN)  # [R, V]
    bits = _shr(h, 40)  # top 24 bits
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


@dataclass
class SamplingBatch:
    """Per-row sampling parameters as tensors on the logits' device."""

    temperature: torch.Tensor  # [R] float (0 = greedy)
    top_p: torch.Tensor  # [R] float
    top_k: torch.Tensor  # [R] long (0 = off)
    min_p: torch.Tensor  # [R] float
    seeds: torch.Tensor  # [R] int64
    positions: torch.Tensor  # [R] int64: index of the token being sampled in its completion
    repetition_penalty: torch.Tensor | None = None  # [R] float, with `seen_mask`
    presence_penalty: torch.Tensor | None = None  # [R]
    frequency_penalty: torch.Tensor | None = None  # [R]
    seen_mask: torch.Tensor | None = None  # [R, V] bool: token in prompt or output (repetition penalty)
    output_counts: torch.Tensor | None = None  # [R, V] float: occurrences in the output so far
    banned: torch.Tensor | None = None  # [R, V] bool: tokens that may not be sampled (e.g. EOS before min_tokens)
    all_greedy: bool = False
    needs_top_p: bool = True
    needs_top_k: bool = True
    needs_min_p: bool = True


def apply_penalties(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    if sb.repetition_penalty is not None and sb.seen_mask is not None:
        rp = sb.repetition_penalty[:, None]
        pen = torch.where(logits > 0, logits / rp, logits * rp)
        logits = torch.where(sb.seen_mask, pen, logits)
    if sb.output_counts is not None:
        if sb.frequency_penalty is not None:
            logits = logits - sb.frequency_penalty[:, None] * sb.output_counts
        if sb.presence_penalty is not None:
            logits = logits - sb.presence_penalty[:, None] * (sb.output_counts > 0).float()
    if sb.banned is not None:
        logits = logits.masked_fill(sb.banned, -torch.inf)
    return logits


def processed_logits(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """Penalties then temperature (greedy rows keep temperature 1): what 'processed' logprobs use."""
    logits = apply_penalties(logits.float(), sb)
    t = torch.where(sb.temperature > 0, sb.temperature, torch.ones_like(sb.temperature))
    return logits / t[:, None]


def truncate(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """top-k, then top-p (nucleus), then min-p; masked entries become -inf. Keeps at least one token."""
    if sb.needs_top_k:
        k = sb.top_k.clamp(min=0)
        kk = torch.where(k > 0, k, torch.full_like(k, logits.shape[-1]))
        sorted_desc = logits.sort(dim=-1, descending=True).values
        kth = sorted_desc.gather(1, (kk - 1).clamp(max=logits.shape[-1] - 1)[:, None])
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if sb.needs_top_p:
        probs_sorted, idx = logits.softmax(-1).sort(dim=-1, descending=True)
        cum = probs_sorted.cumsum(-1)
        drop_sorted = (cum - probs_sorted) >= sb.top_p[:, None]  # mass before this token already >= p
        drop = torch.zeros_like(drop_sorted).scatter(1, idx, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    if sb.needs_min_p:
        probs = logits.softmax(-1)
        thresh = probs.max(-1, keepdim=True).values * sb.min_p[:, None]
        logits = logits.masked_fill(probs < thresh, -torch.inf)
    return logits


def _plain(sb: SamplingBatch) -> bool:
    return (sb.repetition_penalty is None and sb.output_counts is None and sb.banned is None)


def sample(logits: torch.Tensor, sb: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] (raw, fp32) -> (token ids [R], processed logits [R, V]; for an all-greedy batch
    without penalties the raw logits are returned as they are)."""
    if sb.all_greedy and _plain(sb):
        return logits.argmax(-1), logits
    proc = processed_logits(logits, sb)
    greedy_ids = proc.argmax(-1)
    if sb.all_greedy:
        return greedy_ids, proc
    probs = truncate(proc, sb).softmax(-1)
    u = uniform_noise(sb.seeds, sb.positions, logits.shape[-1])
    race = probs / (-torch.log(u))
    sampled = race.argmax(-1)
    return torch.where(sb.temperature > 0, sampled, greedy_ids), proc


def topk_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int):
    """log_softmax(logits) -> (chosen [R], top values [R, k], top ids [R, k])."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, token_ids[:, None])[:, 0]
    if k > 0:
        top, ids = lp.topk(k, dim=-1)
    else:
        top = lp.new_zeros(lp.shape[0], 0)
        ids = token_ids.new_zeros(lp.shape[0], 0)
    return chosen, top, ids

"""Token log-probabilities through the LM head without materialising [tokens, vocab] logits.

    logp[i] = log_softmax(scale * h[i] @ W.T)[target[i]]

Forward and backward run over chunks of tokens; the backward recomputes each chunk's logits and
accumulates dW in fp32, so peak memory is one [chunk, vocab] block instead of two [tokens, vocab]
tensors (8.5 GB at 32k tokens x 65k vocab in fp32). SFT's NLL is -logp (times its per-token weights);
GRPO's ratios use logp at scale = lm_head_multiplier / temperature. Reference: log_softmax of the
full logits (tests/test_fused_ce.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_rows(vocab: int, budget_bytes: int = 1 << 30) -> int:
    return max(16, budget_bytes // (4 * vocab))


class ChunkedTokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, scale: float, chunk: int, vocab: int):
        # h [n, D], weight [Vp, D] (rows past `vocab` are padding), targets [n] -> logp [n] fp32
        n = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 logits for bf16/fp32 inputs
        out = torch.empty(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        for a in range(0, n, chunk):
            logits = (h[a:a + chunk] @ weight.t()).to(acc) * scale  # [c, Vp]
            logits[:, vocab:] = -torch.inf
            lse[a:a + chunk] = torch.logsumexp(logits, dim=-1)
            out[a:a + chunk] = logits.gather(1, targets[a:a + chunk, None])[:, 0] - lse[a:a + chunk]
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.scale, ctx.chunk, ctx.vocab = scale, chunk, vocab
        return out.float() if acc == torch.float32 else out

    @staticmethod
    def backward(ctx, grad):  # grad [n]: d loss / d logp
        h, weight, targets, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        dh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        acc = lse.dtype
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[1] else None
        for a in range(0, h.shape[0], chunk):
            hc, g = h[a:a + chunk], grad[a:a + chunk].to(acc)
            logits = (hc @ weight.t()).to(acc) * scale
            logits[:, ctx.vocab:] = -torch.inf
            p = torch.exp(logits - lse[a:a + chunk, None])  # softmax
            dlogits = -p * g[:, None]  # d logp / d logits = onehot - p
            dlogits.scatter_add_(1, targets[a:a + chunk, None], g[:, None])
            dlogits = (dlogits * scale).to(h.dtype)
            if dh is not None:
                dh[a:a + chunk] = dlogits @ weight
            if dw is not None:
                dw += (dlogits.t() @ hc).to(acc)
        return dh, (dw.to(weight.dtype) if dw is not None else None), None, None, None, None


def token_logprobs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float = 1.0,
                   chunk: int | None = None) -> torch.Tensor:
    """h [n, D], weight [V, D] (the LM head), targets [n] -> log p(target) [n] fp32.

    Under autocast the matmuls run in the autocast dtype, as nn.Linear's would (an fp32 residual stream
    would otherwise send the LM head, the largest matmul of a small model, through fp32 at a tenth of the
    speed); both casts happen outside the function, so dW and dh flow back in the callers' dtypes."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        h = h.to(torch.get_autocast_dtype(dev))
    V = weight.shape[0]
    w = weight.to(h.dtype)
    if V % 64:  # an odd vocabulary (65537) misaligns every [tokens, V] row and sends cuBLAS to slow
        w = F.pad(w, (0, 0, 0, -V % 64))  # kernels; zero rows, masked to -inf in the function, fix that
    return ChunkedTokenLogprob.apply(h, w, targets, float(scale), chunk or _chunk_rows(w.shape[0]), V)


@torch.no_grad()
def token_entropy(h: torch.Tensor, weight: torch.Tensor, scale: float = 1.0, chunk: int | None = None):
    """Entropy of softmax(scale * h @ W.T) per token [n] fp32, chunk by chunk (a metric: no gradient)."""
    chunk = chunk or _chunk_rows(weight.shape[0])
    w = weight.to(h.dtype)
    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for a in range(0, h.shape[0], chunk):
        lp = torch.log_softmax((h[a:a + chunk] @ w.t()).float() * scale, dim=-1)
        out[a:a + chunk] = -(lp.exp() * lp).sum(-1)
    return out

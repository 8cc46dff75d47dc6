import pytest
import torch

from h1r.train.fused_ce import token_logprobs


@pytest.mark.parametrize("dtype,chunk", [(torch.float64, 7), (torch.float32, 1000), (torch.float32, 3)])
def test_matches_full_log_softmax_values_and_gradients(dtype, chunk):
    g = torch.Generator().manual_seed(0)
    n, D, V = 23, 16, 50
    h = torch.randn(n, D, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, V, (n,), generator=g)
    gout = torch.randn(n, generator=g, dtype=torch.float32)
    lp = token_logprobs(h, w, t, scale=0.37, chunk=chunk)
    (lp * gout).sum().backward()
    dh, dw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.log_softmax((h @ w.t()) * 0.37, -1).gather(1, t[:, None])[:, 0]
    (ref * gout.to(dtype)).sum().backward()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(lp, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(dh, h.grad, atol=tol, rtol=1e-4)
    torch.testing.assert_close(dw, w.grad, atol=tol, rtol=1e-4)


def test_token_nll_fused_equals_unfused():
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from h1r.train.loss import TokenNLL

    m = init_model(preset("tiny", vocab_size=300), seed=2)
    ids = torch.randint(0, 300, (2, 19))
    mask = torch.rand(2, 19) > 0.3
    a = TokenNLL(m, fused=True)(ids, mask)
    ga = torch.autograd.grad(a.sum(), [m.lm_head.weight, m.model.layers[0].mamba.in_proj.weight])
    b = TokenNLL(m, fused=False)(ids, mask)
    gb = torch.autograd.grad(b.sum(), [m.lm_head.weight, m.model.layers[0].mamba.in_proj.weight])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_grpo_policy_logprobs_fused_equals_unfused():
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from h1r.train.grpo_update import PolicyLogprobs

    m = init_model(preset("tiny", vocab_size=300), seed=3)
    ids = torch.randint(0, 300, (2, 17))
    mask = torch.rand(2, 17) > 0.4
    outs = []
    for fused in (True, False):
        lp, ent, raw = PolicyLogprobs(m, temperature=0.85, fused=fused)(ids, mask)
        g = torch.autograd.grad((lp.sum() + raw.sum()), m.lm_head.weight)[0]
        outs.append((lp, ent, raw, g))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

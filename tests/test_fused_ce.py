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


def test_autocast_runs_the_head_in_the_autocast_dtype_with_fp32_grads(monkeypatch):
    """An fp32 residual stream under autocast must not send the LM head through fp32 matmuls (10x slower
    on GPUs); gradients still reach the fp32 master tensors, close to the fp32 result."""
    from h1r.train import fused_ce

    seen = []
    orig = fused_ce.ChunkedTokenLogprob.apply
    monkeypatch.setattr(fused_ce.ChunkedTokenLogprob, "apply",
                        lambda h, w, *a: seen.append((h.dtype, w.dtype)) or orig(h, w, *a))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 32, generator=g, requires_grad=True)
    w = torch.randn(70, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 70, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = token_logprobs(h, w, t, scale=0.2)
    lp.sum().backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert lp.dtype == torch.float32 and h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref = torch.log_softmax((h @ w.t()) * 0.2, -1).gather(1, t[:, None])[:, 0]
    dh, dw = torch.autograd.grad(ref.sum(), [h, w])
    torch.testing.assert_close(lp, ref, atol=5e-2, rtol=2e-2)
    assert ((h.grad - dh).norm() / dh.norm()) < 2e-2 and ((w.grad - dw).norm() / dw.norm()) < 2e-2


def test_padded_vocabulary_rows_change_nothing(monkeypatch):
    """The weight is padded to a multiple of 64 rows (cuBLAS alignment); the padding must never win
    probability mass nor receive gradient: values and gradients equal the unpadded log-softmax."""
    from h1r.train import fused_ce

    seen = []
    orig = fused_ce.ChunkedTokenLogprob.apply
    monkeypatch.setattr(fused_ce.ChunkedTokenLogprob, "apply", lambda h, w, *a: seen.append(w.shape) or orig(h, w, *a))
    g = torch.Generator().manual_seed(2)
    h = torch.randn(30, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(65, 8, generator=g, dtype=torch.float64, requires_grad=True)  # 65 rows: padded to 128
    t = torch.randint(0, 65, (30,), generator=g)
    t[0] = 64  # the last real token
    lp = token_logprobs(h, w, t, scale=-3.0, chunk=7)  # negative scale: zero rows would otherwise dominate
    dh, dw = torch.autograd.grad(lp.sum(), [h, w])
    assert seen == [(128, 8)] and dw.shape == w.shape
    ref = torch.log_softmax((h @ w.t()) * -3.0, -1).gather(1, t[:, None])[:, 0]
    rh, rw = torch.autograd.grad(ref.sum(), [h, w])
    torch.testing.assert_close(lp, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(dh, rh, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(dw, rw, atol=1e-10, rtol=1e-8)

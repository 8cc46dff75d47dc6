"""Hybrid state semantics: padding, packing, chunked prefill and decode all agree with single runs."""

import pytest
import torch

from h1r.checkpoint import init_model
from h1r.config import preset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return init_model(preset("tiny", mamba_chunk_size=16, mamba_n_groups=2), seed=3).eval()


def _alone(model, seq):
    with torch.no_grad():
        return model(seq[None])[0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_alone(model, side):
    g = torch.Generator().manual_seed(0)
    lens = [5, 37, 16, 23]
    seqs = [torch.randint(10, 500, (n,), generator=g) for n in lens]
    T = max(lens)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    with torch.no_grad():
        state = model.new_state(len(seqs))
        out = model(ids, attention_mask=mask, state=state)
        nxt = torch.randint(10, 500, (len(seqs), 1), generator=g)
        step = model(nxt, state=state)[:, 0]  # decode continues correctly after padded prefill
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        torch.testing.assert_close(out[i, sl], _alone(model, s), rtol=1e-4, atol=1e-4)
        full = torch.cat([s, nxt[i]])
        torch.testing.assert_close(step[i], _alone(model, full)[-1], rtol=1e-4, atol=1e-4)


def test_packed_documents_do_not_leak(model):
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(10, 500, (n,), generator=g) for n in (9, 30, 1, 17)]  # crosses chunk boundaries
    ids = torch.cat(docs)[None]
    reset = torch.zeros_like(ids, dtype=torch.bool)
    start = 0
    for d in docs:
        reset[0, start] = True
        start += len(d)
    with torch.no_grad():
        packed = model(ids, reset=reset)[0]
    start = 0
    for d in docs:
        torch.testing.assert_close(packed[start:start + len(d)], _alone(model, d), rtol=1e-4, atol=1e-4)
        start += len(d)


def test_chunked_prefill_and_decode_agree_with_one_shot(model):
    ids = torch.randint(10, 500, (1, 70), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids)
        for pieces in ([70], [16, 16, 38], [1, 15, 17, 37], [3] * 20 + [10]):
            state = model.new_state(1)
            outs, s = [], 0
            for n in pieces:
                outs.append(model(ids[:, s:s + n], state=state))
                s += n
            torch.testing.assert_close(torch.cat(outs, 1), ref, rtol=1e-4, atol=1e-4)
            assert int(state.lengths[0]) == 70


def test_bf16_ssm_state_stays_close(model):
    ids = torch.randint(10, 500, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids)[0, -1]
        state = model.new_state(1, ssm_dtype=torch.bfloat16)
        model(ids[:, :30], state=state)
        for t in range(30, 40):
            out = model(ids[:, t:t + 1], state=state)[0, -1]
    assert state.ssm[0].dtype == torch.bfloat16
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_state_batch_mismatch_is_a_clear_error(model):
    state = model.new_state(2)
    with pytest.raises(ValueError, match="state holds 2 sequences"):
        model(torch.zeros(3, 4, dtype=torch.long), state=state)


def test_logits_shape_and_keep(model):
    ids = torch.randint(0, 512, (3, 11))
    with torch.no_grad():
        assert model(ids).shape == (3, 11, 512)
        assert model(ids, logits_to_keep=1).shape == (3, 1, 512)


def test_gradients_flow_through_packed_batch(model):
    m = init_model(preset("tiny", mamba_chunk_size=8), seed=1)
    ids = torch.randint(10, 500, (2, 20))
    reset = torch.zeros_like(ids, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 7] = True
    loss = m(ids, reset=reset).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("rows", [3, 50])  # fewer / more rows than input features: both routes
@pytest.mark.parametrize("vector", [False, True])
def test_scaled_linear_equals_scaling_input_and_output(rows, vector):
    """µP multipliers move onto the weight for long inputs: values and every gradient stay the same."""
    from h1r.model.falcon_h1 import scaled_linear

    g = torch.Generator().manual_seed(rows)
    lin = torch.nn.Linear(16, 12)
    x = torch.randn(2, rows, 16, generator=g, requires_grad=True)
    out = torch.rand(12, generator=g) + 0.5 if vector else 0.37
    got = scaled_linear(x, lin, out, in_scale=1.7)
    grads = torch.autograd.grad(got.square().sum(), [x, lin.weight, lin.bias])
    want = lin(x * 1.7) * out
    ref = torch.autograd.grad(want.square().sum(), [x, lin.weight, lin.bias])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_glue_is_compiled_only_for_long_cuda_training_inputs(monkeypatch):
    """torch.compile only pays when training on CUDA over many tokens (measured slower below
    COMPILE_MIN_TOKENS); everywhere else the plain function runs."""
    import math

    import h1r.model.falcon_h1 as fh

    class FakeCuda:  # what the decorator looks at: device, shape, size
        is_cuda = True

        def __init__(self, *shape):
            self.shape = shape

        def numel(self):
            return math.prod(self.shape)

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a: compiled.append(a[0].shape) or "compiled"))
    monkeypatch.setattr(fh, "COMPILE_MIN_TOKENS", 100)

    @fh.fused_when_training(feature_dims=2)
    def f(x):
        return "eager"

    assert f(FakeCuda(1, 99, 6, 8)) == "eager"  # 99 tokens of [6, 8] features
    assert f(FakeCuda(2, 50, 6, 8)) == "compiled"  # 100 tokens
    assert f(torch.zeros(1, 200, 6, 8)) == "eager"  # a CPU tensor
    with torch.no_grad():
        assert f(FakeCuda(1, 500, 6, 8)) == "eager"  # inference
    monkeypatch.setattr(fh, "COMPILE_TRAINING", False)
    assert f(FakeCuda(1, 500, 6, 8)) == "eager"  # switched off
    assert compiled == [(2, 50, 6, 8)]

"""FastFalconH1 (folded weights, fused GEMMs, kernel dispatch) against the reference path.

On the CPU the kernels fall back to their references; with TRITON_INTERPRET=1 (and triton installed)
the Triton kernels themselves run in the interpreter; on CUDA the real kernels run.
"""

import pytest
import torch

from h1r import LLM, SamplingParams
from h1r.checkpoint import load_model
from tests.engine_fixtures import make_model_dir

KW = dict(dtype="float32", max_model_len=256, cache_memory=64 << 20, page_size=8, max_num_batched_tokens=40)


@pytest.fixture(scope="module", params=["groups2-norm", "nonorm-biases"])
def model_dir(request, tmp_path_factory):
    over = {} if request.param == "groups2-norm" else dict(mamba_rms_norm=False, mamba_n_groups=1,
                                                           attention_bias=True, mlp_bias=True, mamba_proj_bias=True)
    return make_model_dir(tmp_path_factory.mktemp(request.param), **over)


def _prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 300, (n,), generator=g).tolist() for n in (5, 40, 17, 90, 3, 33)]


def test_fast_engine_matches_reference_engine(model_dir):
    ref = LLM(str(model_dir), fast=False, **KW)
    fast = LLM(str(model_dir), fast=True, **KW)
    assert fast.fast_model is not None
    sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    a = ref.generate(_prompts(), sp)
    b = fast.generate(_prompts(), sp)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        torch.testing.assert_close(torch.from_numpy(y.outputs[0].logprobs.chosen),
                                   torch.from_numpy(x.outputs[0].logprobs.chosen), atol=2e-5, rtol=0)
    # n samples from a shared prefill, sampled: identical streams for a seed
    sp = SamplingParams(n=5, temperature=1.0, max_tokens=12, seed=5, ignore_eos=True)
    assert [o.token_ids for o in ref.generate(_prompts(1)[:2], sp)[1].outputs] == \
           [o.token_ids for o in fast.generate(_prompts(1)[:2], sp)[1].outputs]


def test_fast_update_weights_refolds(model_dir):
    dropped = LLM(str(model_dir), fast=True, **KW)  # loaded from a path: the unfused weights are freed
    assert all(p.is_meta for p in dropped.model.parameters())
    with pytest.raises(RuntimeError, match="keep_reference_model"):
        dropped.update_weights({})
    fast = LLM(str(model_dir), fast=True, keep_reference_model=True, **KW)
    other = load_model(model_dir, dtype="float32")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.3)
    fast.update_weights(other.state_dict())
    ref = LLM(other, fast.tokenizer, fast=False, **{k: v for k, v in KW.items() if k != "dtype"})
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in fast.generate(_prompts(2), sp)] == \
           [o.outputs[0].token_ids for o in ref.generate(_prompts(2), sp)]


def test_fast_single_stream_matches_reference(model_dir):
    """One sequence: the decode steps are one row each, which on the GPU (or under TRITON_INTERPRET=1)
    take the fused-GEMV path (norm, activation and residual inside the projections)."""
    ref = LLM(str(model_dir), fast=False, **KW)
    fast = LLM(str(model_dir), fast=True, **KW)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    for prompt in _prompts(3)[:2]:
        a, b = ref.generate([prompt], sp)[0].outputs[0], fast.generate([prompt], sp)[0].outputs[0]
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.from_numpy(b.logprobs.chosen), torch.from_numpy(a.logprobs.chosen),
                                   atol=2e-5, rtol=0)


def test_fast_single_stream_with_gated_norm_apart(model_dir, monkeypatch):
    """Where the output-projection GEMV cannot read the gated norm's layout, the one-row path runs
    gated_rmsnorm and then a plain GEMV; same tokens and logprobs as the reference."""
    pytest.importorskip("triton")
    from h1r.model.kernels import gemv as G

    monkeypatch.setattr(G, "gated_gemv_fits", lambda *a: False)
    ref = LLM(str(model_dir), fast=False, **KW)
    fast = LLM(str(model_dir), fast=True, **KW)
    assert not fast.fast_model.gated_norm_in_gemv
    monkeypatch.undo()
    fits = LLM(str(model_dir), fast=True, **KW).fast_model.gated_norm_in_gemv
    monkeypatch.setenv("H1R_GATED_GEMV", "0")  # the switch that asks for the same path
    assert not LLM(str(model_dir), fast=True, **KW).fast_model.gated_norm_in_gemv
    assert fits or not fast.fast_model.use_kernels  # (so the switch is what turned it off)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    prompt = _prompts(4)[0]
    a, b = ref.generate([prompt], sp)[0].outputs[0], fast.generate([prompt], sp)[0].outputs[0]
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.from_numpy(b.logprobs.chosen), torch.from_numpy(a.logprobs.chosen),
                               atol=2e-5, rtol=0)


def test_fast_multi_row_decode_through_skinny_gemm(model_dir, monkeypatch):
    """Decode steps of a few rows run w_mo, w_gu, w_down and the LM head through the split-K Triton GEMM;
    same tokens and logprobs as the reference, and the same as with H1R_SKINNY=0 (cuBLAS)."""
    pytest.importorskip("triton")
    from h1r.model.kernels import available, skinny_gemm

    if not available("cuda"):  # (true under TRITON_INTERPRET=1 too)
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    calls = []
    real = skinny_gemm.skinny_linear
    monkeypatch.setattr(skinny_gemm, "skinny_linear", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref = LLM(str(model_dir), fast=False, device=dev, **KW)
    fast = LLM(str(model_dir), fast=True, device=dev, **KW)
    assert fast.fast_model.use_kernels
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    a, b = ref.generate(_prompts(5)[:3], sp), fast.generate(_prompts(5)[:3], sp)
    assert calls and min(calls) > 1  # (on CUDA also at graph capture, for every bucket up to 16 rows)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        torch.testing.assert_close(torch.from_numpy(y.outputs[0].logprobs.chosen),
                                   torch.from_numpy(x.outputs[0].logprobs.chosen),
                                   atol=2e-5 if dev == "cpu" else 1e-4, rtol=0)
    monkeypatch.setenv("H1R_SKINNY", "0")
    calls.clear()
    off = LLM(str(model_dir), fast=True, device=dev, **KW)
    assert not off.fast_model.skinny_projections
    assert [o.outputs[0].token_ids for o in off.generate(_prompts(5)[:3], sp)] == [o.outputs[0].token_ids for o in b]
    assert not calls


def test_pdl_launch_options(monkeypatch):
    """Programmatic dependent launch is asked for only on CUDA (Hopper+); off here; a bad H1R_PDL is named."""
    from h1r.model import kernels as K

    t = torch.empty(1)
    try:
        for env in ("early", "wait", "auto", "0"):
            monkeypatch.setenv("H1R_PDL", env)
            K._pdl_mode.cache_clear()
            assert K.pdl(t) == {"PDL": 0}
        # auto: early inside a one-row step, wait elsewhere (as a Hopper device would be told)
        monkeypatch.setenv("H1R_PDL", "auto")
        monkeypatch.setattr(K, "_pdl_mode", lambda dev: 3)
        assert K.pdl(t) == {"PDL": 1, "launch_pdl": True}
        with K.one_row_step():
            assert K.pdl(t) == {"PDL": 2, "launch_pdl": True}
            with K.one_row_step(False):
                assert K.pdl(t)["PDL"] == 1
        assert K.pdl(t)["PDL"] == 1
        monkeypatch.undo()
        monkeypatch.setenv("H1R_PDL", "sometimes")
        K._pdl_mode.cache_clear()
        with pytest.raises(ValueError, match="H1R_PDL='sometimes'"):
            K.pdl(t)
    finally:
        K._pdl_mode.cache_clear()


def test_mixed_steps_pad_their_decode_rows_to_the_graph_bucket(model_dir, monkeypatch):
    """A step that prefills beside decode rows runs them padded to their graph bucket (scratch slot and page,
    the graphs' table width) so no new Triton variant compiles mid-run; the tokens and logprobs must not change.
    Buckets are faked on the CPU (pure-decode steps, which would replay a graph, run eagerly here)."""
    from h1r.engine import runner as R

    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    plain = LLM(str(model_dir), fast=True, **KW).generate(_prompts(3), sp)
    buckets = {n: next(b for b in (1, 2, 4, 8, 16) if b >= n) for n in range(1, 17)}
    monkeypatch.setattr(R.FastRunner, "_bucket_of", property(lambda self: buckets))
    padded_steps = []
    real_pad = R.FastRunner._pad_decode

    def pad(self, batch, rows):
        out = real_pad(self, batch, rows)
        padded_steps.append((batch.num_decode, out[0].num_decode, out[0].decode_pages.shape[1]))
        return out

    monkeypatch.setattr(R.FastRunner, "_pad_decode", pad)
    monkeypatch.setattr(R.FastRunner, "_replay", lambda self, batch: self.fast.logits(self.fast.hidden(
        batch.input_ids, batch.positions, batch.kv_index, self.cache, batch.decode_slots, batch.decode_pages,
        batch.decode_context, None, 1)))
    fast = LLM(str(model_dir), fast=True, **KW)
    padded = fast.generate(_prompts(3), sp)
    assert any(s < b for s, b, _ in padded_steps)  # some mixed step really was padded
    assert all(w == fast.engine.runner.max_pages for *_, w in padded_steps)
    for x, y in zip(plain, padded):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        torch.testing.assert_close(torch.from_numpy(y.outputs[0].logprobs.chosen),
                                   torch.from_numpy(x.outputs[0].logprobs.chosen), atol=2e-5, rtol=0)
    u = fast.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]

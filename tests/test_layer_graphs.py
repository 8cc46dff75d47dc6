"""LayerGraphs' bookkeeping (the capture itself needs CUDA: tests/test_ssd_packed.py, tests/test_kernels.py)."""

import pytest
import torch

from h1r.model.kernels.graphs import LayerGraphs, _same_key, layer_graphs, release_all


def test_keys_compare_tensors_by_identity_and_the_rest_by_value():
    a, b = torch.zeros(3), torch.zeros(3)
    assert _same_key((a, (torch.Size([2]), torch.float32)), (a, (torch.Size([2]), torch.float32)))
    assert not _same_key((a, 1), (b, 1))  # equal values, another tensor: another layout
    assert not _same_key((a, torch.Size([2])), (a, torch.Size([3])))
    assert not _same_key((a,), (a, 1))
    assert not _same_key((a,), None)


def test_first_call_of_a_key_runs_eagerly_and_a_new_key_starts_over():
    g = LayerGraphs("t")
    cu = torch.tensor([0, 3])
    seen = []
    out = g((cu,), lambda x: (seen.append(1) or x * 2,), torch.ones(2))
    assert torch.equal(out[0], torch.full((2,), 2.0)) and g.stats == {"eager": 1, "captures": 0, "replays": 0}
    g((torch.tensor([0, 3]),), lambda x: (x,), torch.ones(2))  # equal values, new tensor: a new key
    assert g.stats["eager"] == 2 and g._calls == 1


def test_release_all_resets_every_registered_instance():
    a, b = layer_graphs("test.a"), layer_graphs("test.b")
    assert layer_graphs("test.a") is a
    x = torch.ones(1)
    for g in (a, b):
        g((x,), lambda t: (t,), x)
    assert a._calls == b._calls == 1
    release_all()
    assert a._key is None and b._key is None and a._calls == b._calls == 0


def test_static_document_boundaries_equal_the_dynamic_ones_padded():
    """cu_seqlens_static: the boundaries cu_seqlens_from finds, padded with empty documents to a fixed count,
    and the document index doc_ids_from_cu gives, with no host read (nonzero_static)."""
    from h1r.model.kernels.train import cu_seqlens_from, cu_seqlens_static
    from h1r.model.ssd_packed import doc_ids_from_cu

    g = torch.Generator().manual_seed(0)
    B, T = 3, 50
    reset = torch.rand(B, T, generator=g) < 0.1
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 40:] = False  # right padding: a document of its own
    for v in (None, valid):
        cu = cu_seqlens_from((B, T), reset, v, "cpu")
        k = cu.numel() - 1
        cu_s, doc_s = cu_seqlens_static((B, T), reset, v, k + 5, "cpu")
        assert cu_s.shape == (k + 6,)
        assert torch.equal(cu_s[:k + 1], cu) and torch.equal(cu_s[k + 1:], torch.full((5,), B * T))
        assert torch.equal(doc_s, doc_ids_from_cu(cu, B * T))
        cu_exact, _ = cu_seqlens_static((B, T), reset, v, k, "cpu")
        assert torch.equal(cu_exact, cu)
    with pytest.raises(RuntimeError, match="more than 2 documents"):
        cu_seqlens_static((B, T), reset, None, 2, "cpu")

"""The SFT micro-step laid out for a CUDA graph (h1r.train.graphed_step): fixed [rows, max_seq_len] shapes,
the loss at every position with weights, padding as a document of its own. On CPU it runs eagerly and must
give the plain path's loss and gradients; on CUDA the replayed graph must match the eager step."""

import pytest
import torch

from h1r.train.batching import MicroBatch, collate, plan_rows, rank_micro_batches
from h1r.train.graphed_step import GraphedMicroStep, layout
from h1r.train.loss import TokenNLL
from tests.helpers import adamw_noting_order
from tests.test_sft_loss import docs, loss_and_grads, one_thread, setup  # noqa: F401  (fixtures)


def micro_batches(examples, pack, mbs, capacity=128, weights=None):
    d = docs(examples, weights)
    rows = plan_rows([len(x[0]) for x in d], pack=pack, capacity=capacity)
    return [collate([[d[i] for i in row] for row in mb], pad_id=0, packed=pack)
            for mb in rank_micro_batches(rows, 0, 1, micro_batch_size=mbs)]


def fixed_shape_loss_and_grads(lm, batches, rows, T, weighted=True, docs_per_row=128):
    lm.zero_grad(set_to_none=True)
    step = GraphedMicroStep(TokenNLL(lm), rows, T, torch.device("cpu"), 0, weighted, None, docs_per_row)
    n_sup = sum(b.n_supervised for b in batches)
    total = sum(float(step(b, 1.0 / n_sup)[0]) for b in batches)
    return total, {n: p.grad.clone() for n, p in lm.named_parameters()}, step


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_fixed_shape_step_matches_the_plain_step(setup, pack, weighted):
    """Short rows, a missing row in the last micro-batch, per-example weights: same loss, same gradients."""
    _, examples, lm = setup
    batches = micro_batches(examples, pack, mbs=3 if pack else 5,
                            weights=[0.5 + 0.25 * (i % 4) for i in range(len(examples))])
    assert any(b.input_ids.shape[0] < (3 if pack else 5) for b in batches)  # a short micro-batch
    assert any(b.attention_mask is not None for b in batches)  # padded rows
    l_ref, g_ref = loss_and_grads(lm, batches, weighted)
    l_fix, g_fix, step = fixed_shape_loss_and_grads(lm, batches, 3 if pack else 5, 160, weighted)
    assert step.stats["eager"] == len(batches) and step.stats["captures"] == 0  # no graph on CPU
    assert l_fix == pytest.approx(l_ref, rel=1e-5)
    for n in g_ref:
        torch.testing.assert_close(g_fix[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_padding_is_a_document_and_weights_follow_the_predicted_token():
    b = collate([[(torch.tensor([5, 6, 7]), 1, 3, 2.0), (torch.tensor([8, 9]), 0, 2, 0.5)], [(torch.tensor([4]), 0, 1, 1.0)]],
                pad_id=0, packed=True)
    ids, reset, w, sup, n_docs = layout(b, rows=3, T=7, pad_id=0, use_weights=True)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 0, 0], [4, 0, 0, 0, 0, 0, 0], [0] * 7]
    assert reset.int().tolist() == [[1, 0, 0, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert n_docs == 6
    # position t predicts token t+1: row 0 supervises tokens 1,2 (weight 2) and 3,4 (weight 0.5)
    assert w.view(3, 6)[0].tolist() == [2.0, 2.0, 0.5, 0.5, 0.0, 0.0] and w.view(3, 6)[1:].abs().sum() == 0
    assert sup.view(3, 6)[0].tolist() == [1, 1, 1, 1, 0, 0]
    _, _, w_plain, _, _ = layout(b, rows=3, T=7, pad_id=0, use_weights=False)
    assert torch.equal(w_plain, sup)


def test_a_failed_capture_leaves_the_run_eager_with_a_warning(setup, monkeypatch):
    """Out of memory (say) while capturing: the micro-batch and the rest run eagerly, with the same gradients."""
    _, examples, lm = setup
    batches = micro_batches(examples, True, mbs=1)
    l_ref, g_ref = loss_and_grads(lm, batches, True)

    def fail(self):
        raise torch.OutOfMemoryError("no room for the graph")

    monkeypatch.setattr(GraphedMicroStep, "_capture", fail)
    lm.zero_grad(set_to_none=True)
    step = GraphedMicroStep(TokenNLL(lm), 1, 160, torch.device("cpu"), 0, True, None, warmup=1)
    step.use_graph = True  # as on CUDA
    n_sup = sum(b.n_supervised for b in batches)
    with pytest.warns(UserWarning, match="capturing the micro-step failed .*no room for the graph"):
        total = sum(float(step(b, 1.0 / n_sup)[0]) for b in batches)
    assert len(batches) >= 3 and step.stats == {"eager": len(batches), "captures": 0, "replays": 0, "over_capacity": 0}
    assert not step.use_graph and total == pytest.approx(l_ref, rel=1e-5)
    for n, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_a_micro_batch_larger_than_the_layout_is_refused():
    b = collate([[(torch.arange(9), 0, 9, 1.0)]], pad_id=0, packed=True)
    with pytest.raises(ValueError, match="does not fit the fixed 1 x 8 layout"):
        layout(b, rows=1, T=8, pad_id=0, use_weights=True)
    b2 = MicroBatch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4),
                    None, None, 8, 8)
    with pytest.raises(ValueError, match="2 rows"):
        layout(b2, rows=1, T=8, pad_id=0, use_weights=True)


def test_cuda_graph_settings_are_checked(tmp_path):
    from h1r.errors import ConfigError
    from h1r.train.config import SFTConfig

    cfg = SFTConfig(model=str(tmp_path), data=["x.jsonl"], output_dir=str(tmp_path / "o"), cuda_graph=True, device="cpu")
    with pytest.raises(ConfigError, match="cuda_graph needs a CUDA device"):
        cfg.validate()
    cfg = SFTConfig(model=str(tmp_path), data=["x.jsonl"], output_dir=str(tmp_path / "o"), graph_docs_per_row=0)
    with pytest.raises(ConfigError, match="graph_docs_per_row must be >= 1"):
        cfg.validate()


def test_where_a_graphed_step_cannot_run_is_a_config_error(monkeypatch):
    from h1r.errors import ConfigError
    from h1r.train.graphed_step import check_supported

    with pytest.raises(ConfigError, match="needs a CUDA device; this run is on cpu"):
        check_supported(torch.device("cpu"))
    with pytest.raises(ConfigError, match="runs in one process"):
        check_supported(torch.device("cuda"), distributed=True)
    import h1r.model.kernels.train as TK

    monkeypatch.setattr(TK, "DOC_CONV", False)
    with pytest.raises(ConfigError, match="needs the document-indexed conv"):
        check_supported(torch.device("cuda"))
    from h1r.model import kernels

    monkeypatch.setattr(TK, "DOC_CONV", True)
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(ConfigError, match="needs the training kernels: install triton"):
        check_supported(torch.device("cuda"))
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    check_supported(torch.device("cuda"))  # nothing missing: no error (no CUDA needed to decide)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("ac", [False, True])
def test_replayed_graph_matches_the_eager_step_on_the_gpu(ac):
    """bf16 autocast on the training kernels: after two eager warm-up micro-batches and a capture, replays
    over new document layouts (and one over capacity, run eagerly) accumulate the eager step's gradients."""
    from h1r.checkpoint import init_model
    from h1r.config import ModelConfig

    cfg = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, mamba_d_ssm=128, mamba_n_heads=4,
                      mamba_d_head=32, mamba_d_state=16, mamba_chunk_size=32)
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)

    def batch(lens):
        row = [(torch.randint(3, 500, (n,), generator=g), 1, n, 0.5 + i % 3) for i, n in enumerate(lens)]
        return collate([row], pad_id=0, packed=True)

    batches = [batch(l) for l in ([40, 60, 20], [100, 50], [7, 9, 11, 30, 5], [150], [30] * 5, [64, 64, 22])]

    def grads(graphed: bool):
        lm = init_model(cfg, seed=1, device=dev, dtype=torch.float32).train()
        lm.set_activation_checkpointing(ac)
        step = GraphedMicroStep(TokenNLL(lm, fused=True), 1, 160, dev, 0, True, torch.bfloat16, docs_per_row=5)
        step.use_graph = graphed
        losses = [float(step(b, 1e-2)[0]) for b in batches]
        return losses, [p.grad.clone() for p in lm.parameters()], step.stats

    eager_losses, eager_grads, _ = grads(False)
    graph_losses, graph_grads, stats = grads(True)
    assert stats["captures"] == 1 and stats["replays"] == 2 and stats["over_capacity"] == 2  # 6 and 6 docs > 5
    assert graph_losses == pytest.approx(eager_losses, rel=1e-3)
    for a, b in zip(graph_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-5)


def test_the_host_reads_the_metrics_only_after_queueing_the_optimizer(setup, monkeypatch):
    """optimizer_step reads the gradient norm (a wait for the GPU) after optimizer.step is issued, not before,
    so the GPU is not idle while the host issues AdamW; the metrics are still the step's."""
    import copy

    from h1r.train import sft
    from h1r.train.distributed import DistInfo

    _, examples, lm = setup
    batches = micro_batches(examples, True, mbs=3)
    l_ref, g_ref = loss_and_grads(copy.deepcopy(lm), batches, weighted=True)
    lm = copy.deepcopy(lm)
    opt, sched, order = adamw_noting_order(lm.parameters(), monkeypatch, sft)
    m = sft.optimizer_step(TokenNLL(lm), batches, opt, sched, DistInfo(), torch.autocast("cpu", enabled=False),
                           True, clip=1e-3)
    assert order == ["optimizer.step", "read the norm"]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in g_ref.values())).item()
    assert m["grad_norm"] == pytest.approx(norm, rel=1e-4) and norm > 1e-3  # the norm before clipping
    assert m["loss"] == pytest.approx(l_ref, rel=1e-5)

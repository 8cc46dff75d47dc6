"""SFT loss: supervised span, packed == padded, global token mean over micro-batches, loss weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from h1r.train.batching import collate, plan_rows, rank_micro_batches
from h1r.train.data import load_sft_examples
from h1r.train.loss import TokenNLL, global_token_mean
from tests.test_sft_helpers import make_model_dir, make_rows, sft_config, write_jsonl


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from h1r.checkpoint import load_model
    from h1r.tokenizer import load_tokenizer

    tmp = tmp_path_factory.mktemp("sftloss")
    model_dir = make_model_dir(tmp / "model")
    data = write_jsonl(tmp / "d.jsonl", make_rows(12, seed=1))
    tok = load_tokenizer(model_dir)
    cfg = sft_config(tmp, model_dir, data, weighting="loss", max_seq_len=128)
    examples, _ = load_sft_examples(cfg.data, tok, cfg)
    lm = load_model(model_dir, dtype=torch.float32).train()
    return tok, examples, lm


def docs(examples, weights=None):
    return [(e.input_ids, e.sup_start, e.sup_end, 1.0 if weights is None else weights[i])
            for i, e in enumerate(examples)]


def loss_and_grads(lm, batches, weighted=True):
    """The trainer's accumulation: sum over micro-batches of the global-token-mean share."""
    module = TokenNLL(lm)
    lm.zero_grad(set_to_none=True)
    n_sup = sum(b.n_supervised for b in batches)
    total = 0.0
    for b in batches:
        nll = module(b.input_ids, b.target_mask, b.attention_mask, b.reset)
        w = b.token_weight[:, 1:][b.target_mask[:, 1:]] if weighted else None
        loss = global_token_mean(nll, w, n_sup)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.clone() for n, p in lm.named_parameters()}


def test_only_the_final_assistant_turn_is_supervised(setup):
    tok, examples, _ = setup
    multi = next(e for e in examples if e.source.endswith(":1"))  # row 0: multi-turn messages
    row = make_rows(12, seed=1)[0]
    final_turn = row["messages"][-1]["content"]
    im_end = tok.token_to_id("<|im_end|>")
    assert multi.input_ids[multi.sup_start:multi.sup_end].tolist() == tok.encode(final_turn) + [im_end]
    assert multi.input_ids[-1] == im_end  # nothing after the end-of-turn token
    prompt = tok.decode(multi.input_ids[:multi.sup_start].tolist())
    assert prompt.endswith("<|im_start|> assistant \n") or prompt.endswith("<|im_start|>assistant\n")
    assert "<think>" not in prompt  # the earlier turn's reasoning is stripped by the template
    assert row["messages"][1]["content"].split("</think>")[-1].split()[0] in prompt


def test_packed_equals_padded_loss_and_gradients(setup):
    _, examples, lm = setup
    d = docs(examples, weights=[0.5 + 0.25 * (i % 4) for i in range(len(examples))])
    lengths = [len(x[0]) for x in d]
    packed_rows = plan_rows(lengths, pack=True, capacity=128)
    assert len(packed_rows) < len(d) and any(len(r) > 1 for r in packed_rows)  # really packs
    packed = [collate([[d[i] for i in row] for row in packed_rows], pad_id=0, packed=True)]
    padded = [collate([[x] for x in d], pad_id=0, packed=False)]
    assert packed[0].reset is not None and padded[0].attention_mask is not None
    assert packed[0].n_supervised == padded[0].n_supervised
    l_packed, g_packed = loss_and_grads(lm, packed)
    l_padded, g_padded = loss_and_grads(lm, padded)
    assert l_packed == pytest.approx(l_padded, rel=1e-5)
    for n in g_packed:
        torch.testing.assert_close(g_packed[n], g_padded[n], rtol=1e-4, atol=1e-6, msg=n)


def test_packing_without_reset_would_leak(setup):
    """The reset mask matters: the same packed rows without it give a different loss."""
    _, examples, lm = setup
    d = docs(examples)
    rows = plan_rows([len(x[0]) for x in d], pack=True, capacity=128)
    b = collate([[d[i] for i in row] for row in rows], pad_id=0, packed=True)
    module = TokenNLL(lm)
    with torch.no_grad():
        with_reset = module(b.input_ids, b.target_mask, b.attention_mask, b.reset).mean()
        without = module(b.input_ids, b.target_mask, b.attention_mask, None).mean()
    assert abs(with_reset.item() - without.item()) > 1e-4


def test_global_token_mean_is_independent_of_micro_batching(setup):
    _, examples, lm = setup
    d = docs(examples)
    rows = plan_rows([len(x[0]) for x in d], pack=False, capacity=128)
    one = [collate([[d[i] for i in row] for row in rows], pad_id=0, packed=False)]
    many = [collate([[d[i] for i in row] for row in mb], pad_id=0, packed=False)
            for mb in rank_micro_batches(rows, 0, 1, micro_batch_size=3)]
    assert len(many) == 4
    l1, g1 = loss_and_grads(lm, one)
    l2, g2 = loss_and_grads(lm, many)
    assert l1 == pytest.approx(l2, rel=1e-6)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-7, msg=n)


def test_weight_one_is_plain_token_mean_nll_and_weights_scale_each_example(setup):
    _, examples, lm = setup
    # independent reference: full logits from model(), shifted cross-entropy on the supervised span
    per_example = []
    with torch.no_grad():
        for e in examples:
            ids = torch.as_tensor(e.input_ids, dtype=torch.long)[None]
            logits = lm(ids)[0, :-1]
            nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")[e.sup_start - 1:e.sup_end - 1]
            per_example.append(nll.double())
    n_total = sum(len(x) for x in per_example)
    plain = sum(x.sum() for x in per_example).item() / n_total
    rows = [[i] for i in range(len(examples))]
    with torch.no_grad():
        b = collate([[docs(examples)[i] for i in r] for r in rows], pad_id=0, packed=False)
        ones = global_token_mean(TokenNLL(lm)(b.input_ids, b.target_mask, b.attention_mask), None, n_total)
    assert ones.item() == pytest.approx(plain, rel=1e-5)

    # loss mode: hard/medium/easy examples get exactly their weight, still divided by the token count
    weights = [{"hard": 1.5, "medium": 1.0, "easy": 0.5}[e.difficulty] for e in examples]
    expected = sum(w * x.sum() for w, x in zip(weights, per_example)).item() / n_total
    with torch.no_grad():
        b = collate([[docs(examples, weights)[i] for i in r] for r in rows], pad_id=0, packed=True)
        got = global_token_mean(TokenNLL(lm)(b.input_ids, b.target_mask, b.attention_mask, b.reset),
                                b.token_weight[:, 1:][b.target_mask[:, 1:]], n_total)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert {e.difficulty for e in examples} >= {"hard", "medium"}


def test_world_size_scaling_restores_the_mean():
    nll = torch.tensor([1.0, 2.0, 3.0])
    # two ranks, 3 + 5 tokens: each rank's loss * R, averaged over R, equals the global token mean
    other = torch.tensor([4.0, 4.0, 4.0, 4.0, 4.0])
    r0, r1 = global_token_mean(nll, None, 8, 2), global_token_mean(other, None, 8, 2)
    assert ((r0 + r1) / 2).item() == pytest.approx((6 + 20) / 8)


def test_rank_micro_batches_same_count_on_every_rank():
    rows = [[i] for i in range(7)]
    plans = [rank_micro_batches(rows, r, 3, 2) for r in range(3)]
    assert [len(p) for p in plans] == [2, 2, 2]
    assert sorted(i for p in plans for mb in p for row in mb for i in row) == list(range(7))
    b = collate([], pad_id=0, packed=True)  # an empty micro-batch supervises nothing
    assert b.n_supervised == 0 and not b.target_mask.any()
    assert np.array_equal(plans[0][0], [[0], [3]])

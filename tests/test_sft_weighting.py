"""Difficulty-aware weighting: classification, interpolation, and counts in the sampled stream."""

from types import SimpleNamespace

import numpy as np
import pytest

from h1r.errors import DataError
from h1r.train.batching import DataStream
from h1r.train.weighting import epoch_counts, epoch_order, example_weight, token_weight

CFG = SimpleNamespace(hard_weight=1.5, hard_weight_min=1.25, hard_weight_max=1.75, medium_weight=1.0,
                      easy_weight=0.5, pass_rate_hard=0.2, pass_rate_easy=0.8, length_hard=100, length_easy=10)


@pytest.mark.parametrize("row, n_tokens, expected", [
    ({"difficulty": "hard"}, 50, ("hard", 1.5)),
    ({"difficulty": "medium"}, 500, ("medium", 1.0)),  # a label beats length
    ({"difficulty": "easy", "pass_rate": 0.0}, 50, ("easy", 0.5)),  # a label beats the pass rate
    ({"pass_rate": 0.0}, 50, ("hard", 1.75)),  # never solved: the top of the hard range
    ({"pass_rate": 0.1}, 50, ("hard", 1.5)),  # halfway to pass_rate_hard: halfway down the range
    ({"pass_rate": 0.2}, 50, ("hard", 1.25)),
    ({"pass_rate": 0.5}, 500, ("medium", 1.0)),  # a pass rate beats length
    ({"pass_rate": 0.8}, 50, ("easy", 0.5)),
    ({}, 100, ("hard", 1.5)),  # by trace length
    ({}, 10, ("easy", 0.5)),
    ({}, 50, ("medium", 1.0)),
    ({"difficulty": "easy", "weight": 3.0}, 50, ("easy", 3.0)),  # an explicit weight overrides
    ({"pass_rate": None, "difficulty": None}, 50, ("medium", 1.0)),
])
def test_example_weight(row, n_tokens, expected):
    d, w = example_weight(row, n_tokens, CFG, "f.jsonl:3")
    assert d == expected[0] and w == pytest.approx(expected[1])


@pytest.mark.parametrize("row, msg", [
    ({"difficulty": "trivial"}, "f.jsonl:3: 'difficulty' must be one of"),
    ({"pass_rate": 1.5}, "f.jsonl:3: 'pass_rate' must be in [0, 1]"),
    ({"pass_rate": "high"}, "f.jsonl:3: 'pass_rate' must be a finite number"),
    ({"weight": -1}, "f.jsonl:3: 'weight' must be >= 0"),
])
def test_bad_weighting_fields(row, msg):
    with pytest.raises(DataError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        example_weight(row, 5, CFG, "f.jsonl:3")


def test_sample_counts_are_floor_plus_bernoulli_and_deterministic():
    w = np.array([0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0])
    epochs = np.stack([epoch_counts(w, seed=7, epoch=e) for e in range(4000)])  # [E, n]
    assert (epochs >= np.floor(w)).all() and (epochs <= np.floor(w) + 1).all()
    assert (epochs[:, 0] == 0).all() and (epochs[:, 2] == 1).all() and (epochs[:, 6] == 2).all()
    np.testing.assert_allclose(epochs.mean(0), w, atol=0.03)
    assert np.array_equal(epoch_counts(w, 7, 3), epochs[3])  # a pure function of (seed, epoch)
    assert not all(np.array_equal(epoch_counts(w, 8, e), epochs[e]) for e in range(10))


def test_stream_counts_by_difficulty_in_each_mode():
    # 3 examples per class: hard 1.5, medium 1, easy 0.5 (and an easy one dropped with weight 0)
    w = np.array([1.5] * 3 + [1.0] * 3 + [0.5] * 3 + [0.0])
    epochs = 600
    s = DataStream(w, "sample", seed=0, batch_size=1, epochs=epochs)
    counts = np.bincount(s.order, minlength=len(w)) / epochs
    np.testing.assert_allclose(counts[:3], 1.5, atol=0.08)
    np.testing.assert_allclose(counts[3:6], 1.0, atol=0)
    np.testing.assert_allclose(counts[6:9], 0.5, atol=0.08)
    assert counts[9] == 0
    loss_mode = np.bincount(DataStream(w, "loss", 0, 1, 5).order, minlength=len(w))
    assert loss_mode.tolist() == [5] * 9 + [0]  # once per epoch; the weight goes into the loss
    assert [token_weight(x, "loss") for x in (1.5, 1.0, 0.5)] == [1.5, 1.0, 0.5]
    assert [token_weight(x, "sample") for x in (1.5, 0.5)] == [1.0, 1.0]
    none = np.bincount(DataStream(w, "none", 0, 1, 5).order, minlength=len(w))
    assert none.tolist() == [5] * 10


def test_stream_is_deterministic_and_shuffled():
    w = np.ones(50)
    a, b = DataStream(w, "sample", 3, 4, 2), DataStream(w, "sample", 3, 4, 2)
    assert np.array_equal(a.order, b.order) and a.digest() == b.digest()
    assert not np.array_equal(a.order[:50], np.arange(50))
    assert sorted(a.order[:50]) == list(range(50))
    assert a.total_steps == 100 // 4
    assert np.array_equal(epoch_order(w, "none", 0, 0, shuffle=False), np.arange(50))
    m = DataStream(w, "sample", 3, 16, epochs=1, max_steps=10)  # max_steps runs as many epochs as needed
    assert m.total_steps == 10 and len(m.order) >= 160 and m.epoch_at(10) == pytest.approx(3.2)


def test_everything_dropped_is_an_error():
    with pytest.raises(DataError, match="no examples left after weighting"):
        DataStream(np.zeros(4), "sample", 0, 2, 1)
    with pytest.raises(DataError, match="fewer than batch_size"):
        DataStream(np.ones(4), "sample", 0, 8, 1)


def test_from_jsonl_rows_to_sampling_counts(tmp_path):
    """End to end: labels and pass rates in the data become the configured multiplicities."""
    from h1r.tokenizer import load_tokenizer
    from h1r.train.data import load_sft_examples
    from tests.test_sft_helpers import make_tokenizer_dir, sft_config, write_jsonl

    tok_dir = make_tokenizer_dir(tmp_path / "tok")
    rows = [{"prompt": "w1 w2", "response": "w3", "difficulty": "hard"},
            {"prompt": "w1", "response": "w4 w5", "difficulty": "medium"},
            {"prompt": "w2", "response": "w6", "difficulty": "easy"},
            {"prompt": "w3", "response": "w7", "pass_rate": 0.0},
            {"prompt": "w4", "response": "w8", "pass_rate": 0.9},
            {"prompt": "w5", "response": "w9", "pass_rate": 0.5, "weight": 2.0}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    tok = load_tokenizer(tok_dir)
    cfg = sft_config(tmp_path, tok_dir, data, hard_weight=1.5, easy_weight=0.0)
    examples, stats = load_sft_examples(cfg.data, tok, cfg)
    assert [e.difficulty for e in examples] == ["hard", "medium", "easy", "hard", "easy", "medium"]
    assert [e.weight for e in examples] == [1.5, 1.0, 0.0, 1.75, 0.0, 2.0]
    assert stats["hard"] == 2 and stats["easy"] == 2
    epochs = 400
    counts = np.bincount(DataStream([e.weight for e in examples], "sample", 0, 1, epochs).order, minlength=6)
    np.testing.assert_allclose(counts / epochs, [1.5, 1.0, 0.0, 1.75, 0.0, 2.0], atol=0.06)

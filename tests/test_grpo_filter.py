"""The curriculum's difficulty filter on hand-made 8-sample outcomes, its deterministic random share,
the prompt stream's orders, and the filter run end to end on a tiny model."""

from h1r.train.grpo_data import Prompt, PromptStream
from h1r.train.grpo_filter import classify, uniform

W = [False] * 8


def test_all_correct_is_dropped_partial_is_kept():
    d = classify([True] * 8, ["5"] * 8, W, u=0.0)
    assert (d.keep, d.reason, d.pass_rate) == (False, "solved", 1.0)
    d = classify([True, True] + [False] * 6, ["5", "5", "7", "6", "6", "6", "6", "6"], W, 0.99)
    assert (d.keep, d.reason, d.pass_rate) == (True, "partial", 0.25)  # a dominant wrong answer does not matter
    assert classify([True] + [False] * 7, [None] * 8, W, 0.99).keep


def test_unsolved_with_consistent_wrong_majority_is_dropped():
    answers = ["12", "12", "7", "12", "3", "12.", "9", None]  # "12." normalises to "12": 4 of 8
    d = classify(W, answers, W, u=0.0)
    assert (d.keep, d.reason, d.pass_rate) == (False, "consistent_wrong", 0.0)
    d = classify(W, ["12", "12", "7", "12", "3", "4", "9", None], W, u=0.0)  # only 3 of 8
    assert (d.keep, d.reason) == (True, "unsolved")
    assert classify(W, answers, W, u=0.0, consistent_wrong=5).reason == "unsolved"


def test_unsolved_kept_only_as_a_small_random_share():
    scattered = ["1", "2", "3", "4", None, None, "5", "6"]
    assert classify(W, scattered, W, u=0.05, keep_unsolved=0.1).keep
    assert not classify(W, scattered, W, u=0.15, keep_unsolved=0.1).keep
    assert not classify(W, [None] * 8, W, u=0.0, keep_unsolved=0.0).keep
    # over many problems, the kept share is close to the configured one, and each draw is stable
    draws = [uniform(0, i) for i in range(4000)]
    kept = sum(classify(W, scattered, W, u, keep_unsolved=0.1).keep for u in draws)
    assert 0.08 < kept / 4000 < 0.12
    assert draws[17] == uniform(0, 17) != uniform(1, 17)


def test_all_truncated_unsolved_uses_its_own_share_even_with_a_majority():
    truncated = [True] * 8
    same = ["8"] * 8  # would be a consistent wrong answer, but every sample hit the length limit
    assert classify(W, same, truncated, u=0.05, keep_truncated=0.1).reason == "all_truncated"
    assert classify(W, same, truncated, u=0.05, keep_truncated=0.1).keep
    assert not classify(W, same, truncated, u=0.5, keep_truncated=0.1).keep
    assert classify(W, same, [True] * 7 + [False], u=0.05).reason == "consistent_wrong"


def _prompts(rates):
    return [Prompt([i], {"pass_rate": r, "answer": "1"}, "") for i, r in enumerate(rates)]


def test_prompt_stream_orders():
    ps = _prompts([0.5, 0.875, 0.125, 0.5, 0.25])
    easy = PromptStream(ps, "easy_to_hard", seed=0)
    order = easy.take(0, 5)
    assert order[0] == 1 and order[-1] == 2 and set(order[1:3]) == {0, 3} and order[3] == 4
    assert easy.take(5, 5) == order  # every epoch in the same order
    assert PromptStream(ps, "hard_to_easy", 0).take(0, 5)[0] == 2
    assert PromptStream(ps, "file", 0).take(3, 4) == [3, 4, 0, 1]
    shuf = PromptStream(ps, "shuffle", seed=1)
    e0, e1 = shuf.take(0, 5), shuf.take(5, 5)
    assert sorted(e0) == sorted(e1) == list(range(5))
    assert PromptStream(ps, "shuffle", seed=1).take(3, 4) == (e0 + e1)[3:7]  # a pure function of the position


def test_filter_run_on_tiny_model(tmp_path):
    """8 samples per problem from a random model under the test-only parity reward: every problem gets
    a decision, kept rows carry pass_rate, and the curriculum file is what train() then reads."""
    import json

    from h1r.train.grpo_config import GRPOConfig
    from h1r.train.grpo_filter import difficulty_filter
    from tests.test_grpo_helpers import grpo_dict, make_model_dir, make_prompt_rows, write_jsonl

    model = make_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "p.jsonl", make_prompt_rows(12, seed=1))
    cfg = GRPOConfig(**grpo_dict(model, data, tmp_path / "run", filter_keep_unsolved=1.0))
    path = difficulty_filter(cfg)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    counts = json.loads(path.with_suffix(".json").read_text())["counts"]
    assert counts["problems"] == 12 and counts["kept"] == len(rows) > 0
    assert all(0 < r["pass_rate"] < 1 for r in rows if r["filter"] == "partial")
    assert sum(v for k, v in counts.items() if k.endswith(("_kept", "_dropped"))) == 12
    assert difficulty_filter(cfg).read_text() == path.read_text()  # deterministic

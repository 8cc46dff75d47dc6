"""Metrics on hand-computed cases, and the Markdown + PNG report."""

import json
import math

import pytest

from h1r.eval.metrics import accuracy_by, majority_correct, pass1_and_stderr, pass_at_k, summarize
from h1r.eval.report import markdown_table, method_points, plot_training_curves, write_report


def test_pass_at_k_unbiased():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # 1 - C(3,1)/C(5,1)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(16, 1, 4) == pytest.approx(0.25)  # 1 - C(15,4)/C(16,4) = 4/16
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass1_and_standard_error():
    mean, se = pass1_and_stderr([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(math.sqrt(0.25 / 3) / 2)  # sqrt(sum p(1-p)/(k-1)) / P
    mean, se = pass1_and_stderr([[1], [0], [1], [1]])  # one sample each: binomial over problems
    assert (mean, se) == (pytest.approx(0.75), pytest.approx(math.sqrt(0.75 * 0.25 / 4)))
    with pytest.raises(ValueError):
        pass1_and_stderr([[1], []])


def test_majority_groups_equivalent_answers():
    answers = ["3", "3", "4", r"\frac{8}{2}", "4.0"]
    correct = [True, True, False, False, False]
    assert not majority_correct(answers, correct)  # 4 = 8/2 = 4.0 outvotes 3
    assert majority_correct(answers, correct, weights=[5, 5, 1, 1, 1])  # confidence-weighted
    assert majority_correct(["3", "4"], [True, False]) and not majority_correct(["4", "3"], [False, True])  # ties: first
    assert majority_correct([r"\frac12", "0.5", None, None, "7"], [True, True, False, False, False])  # None does not vote
    assert not majority_correct([None, None], [False, False])


def _records():
    rows = []
    spec = {"p1": ([True, True, False, False], ["2", "2", "3", "3"], 1),  # tie: the correct group came first
            "p2": ([False, False, False, True], ["5", "5", "6", "7"], 2),
            "p3": ([True, True, True, False], ["1", "1", "1", None], 2)}
    for pid, (ok, ans, level) in spec.items():
        for i, (c, a) in enumerate(zip(ok, ans)):
            rows.append({"problem_id": pid, "benchmark": "toy", "sample_index": i, "correct": c, "answer": a,
                         "tokens": 100 * (i + 1), "level": level})
    return rows


def test_summarize_hand_computed():
    deepconf = {"toy": {"deepconf-low": {"p1": {"correct": True, "tokens": 300}, "p2": {"correct": False, "tokens": 500}}}}
    s = summarize(_records(), ks=(2, 4, 8), deepconf=deepconf)["toy"]
    assert s["problems"] == 3 and s["samples_per_problem"] == 4
    assert s["pass@1"] == pytest.approx((0.5 + 0.25 + 0.75) / 3)
    assert s["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2) + pass_at_k(4, 3, 2)) / 3)
    assert s["pass@4"] == pytest.approx(1.0) and "pass@8" not in s
    assert s["maj@4"] == pytest.approx(2 / 3)  # p1 (tie, correct first) and p3 right, p2 wrong
    assert s["maj@2"] == pytest.approx(2 / 3)  # first two samples: p1 and p3 right
    assert s["tokens_per_sample"] == pytest.approx(250) and s["tokens_per_problem"] == pytest.approx(1000)
    assert s["deepconf-low"] == 0.5 and s["deepconf-low_tokens_per_problem"] == 400
    assert accuracy_by(_records(), "level") == {"1": {"pass@1": 0.5, "problems": 1},
                                                "2": {"pass@1": pytest.approx(0.5), "problems": 2}}


def test_samples_order_by_sample_index():
    rows = list(reversed(_records()))
    assert summarize(rows, ks=(2,))["toy"]["maj@2"] == pytest.approx(2 / 3)


def test_report_writes_markdown_and_plots(tmp_path):
    summary = summarize(_records(), ks=(2,), deepconf={"toy": {"deepconf-low": {"p1": {"correct": True, "tokens": 300}}}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": 0, "reward": s / 10, "loss": 1 / (s + 1)}) + "\n"
                                               for s in range(5)) + '{"step": 5, "rew')  # torn last line
    report = write_report(tmp_path / "out", summary, by_level=accuracy_by(_records()), run_dir=run)
    text = report.read_text()
    assert "| toy | 3 | 4 | 50.0 ± " in text and "maj@4" in text and "deepconf-low" in text
    for png in ("accuracy_vs_tokens.png", "accuracy_by_level.png", "training_curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG" and png in text
    assert [(m, t) for m, t, _ in method_points(summary)["toy"]] == [("pass@1", 250), ("maj@2", 500), ("maj@4", 1000), ("deepconf-low", 300)]
    assert markdown_table(summary).count("\n") == 3


def test_report_without_training_run(tmp_path):
    report = write_report(tmp_path, summarize(_records()), run_dir=tmp_path / "absent")
    assert "Training" not in report.read_text() and not (tmp_path / "training_curves.png").exists()
    empty = tmp_path / "m.jsonl"
    empty.write_text("")
    assert plot_training_curves(empty, tmp_path / "c.png") is None

import pytest

from h1r.deepconf.confidence import TraceConfidence
from h1r.deepconf.voting import (
    VOTE_METHODS,
    answer_of,
    group_answers,
    offline_deepconf,
    top_percent_cutoff,
    vote,
    vote_all,
    weighted_vote,
)
from h1r.errors import ConfigError


def conf(v=1.0, **over) -> TraceConfidence:
    d = dict(mean=v, lowest=v, bottom=v, tail=v)
    d.update(over)
    return TraceConfidence(**d)


def test_answer_extraction_uses_last_boxed_after_think():
    assert answer_of(r"<think>maybe \boxed{3}</think> so \boxed{4}") == "4"
    assert answer_of(r"<think>\boxed{3}</think> no box after") == "3"
    assert answer_of("no answer") is None
    assert answer_of(r"\boxed{}") is None  # an empty box does not vote


def test_equivalent_answers_are_grouped():
    answers = ["1/2", r"\frac{1}{2}", "0.5", r"\dfrac{1}{2}", r"\frac{1}{2}", "3", r"\sqrt{2}", "2^{1/2}"]
    g = group_answers(answers)
    assert g.labels[:5] == [0] * 5
    assert g.names[0] == r"\frac{1}{2}"  # the most frequent spelling represents the group
    assert g.labels[5] != 0 and g.labels[6] == g.labels[7] != g.labels[5]
    r = vote(answers)
    assert r.answer == r"\frac{1}{2}" and r.counts[r"\frac{1}{2}"] == 5 and r.share == pytest.approx(5 / 8)


def test_no_answer_traces_do_not_vote():
    r = vote([None, None, None, "5", "", "  "])
    assert r.answer == "5" and r.share == 1.0 and r.voters == 1
    empty = vote([None, ""])
    assert empty.answer is None and empty.share == 0.0 and empty.tallies == {}


@pytest.mark.parametrize("method", [m for m, metric in VOTE_METHODS.items() if metric])
def test_each_weighted_method_reads_its_own_metric(method):
    # 3 traces say A, 2 say B; only B's `metric` is high, so only `method` flips the winner to B
    metric = VOTE_METHODS[method]
    answers = ["A", "A", "A", "B", "B"]
    confs = [conf(1.0)] * 3 + [conf(1.0, **{metric: 5.0})] * 2
    votes = vote_all(answers, confs)
    assert votes["majority"].answer == "A" and votes["majority"].share == pytest.approx(0.6)
    for m, r in votes.items():
        assert r.answer == ("B" if m == method else "A"), m
    assert votes[method].share == pytest.approx(10 / 13)
    assert votes[method].tallies == {"B": 10.0, "A": 3.0}
    assert votes[method].counts == {"B": 2, "A": 3}


def test_ties_break_by_votes_then_first_group():
    g = group_answers(["x", "y", "y"])
    r = weighted_vote(g, [2.0, 1.0, 1.0])
    assert r.answer == "y"  # equal weight 2 vs 2: more votes wins
    assert weighted_vote(group_answers(["x", "y"]), [1.0, 1.0]).answer == "x"


def test_non_finite_weights_skip_and_bad_inputs_fail_clearly():
    g = group_answers(["a", "b"])
    assert weighted_vote(g, [float("nan"), 1.0]).answer == "b"
    with pytest.raises(ConfigError, match="negative"):
        weighted_vote(g, [-1.0, 1.0])
    with pytest.raises(ConfigError, match="3 weights for 2"):
        weighted_vote(g, [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="unknown vote method"):
        vote(["a"], [conf()], method="median_weighted")
    with pytest.raises(ConfigError, match="needs per-trace confidences"):
        vote(["a"], None, method="tail_confidence_weighted")
    with pytest.raises(ConfigError, match="2 confidences for 1"):
        vote(["a"], [conf(), conf()], method="majority")


def test_offline_deepconf_keeps_the_top_percent_then_votes():
    # 10 answering traces: the 7 least confident say "7", the 3 most confident say "3"
    answers = ["7"] * 7 + ["3"] * 3 + [None, None]
    lows = [1, 2, 3, 4, 5, 6, 7, 18, 19, 20, 100, 100]  # the unanswered ones never count
    confs = [conf(float(v)) for v in lows]
    votes, kept, cutoff = offline_deepconf(answers, confs, keep_top_percent=10)
    assert cutoff == pytest.approx(19.1)  # 90th percentile of the 10 answering traces
    assert kept == [False] * 9 + [True] + [False, False]
    assert votes["majority"].answer == "3" and votes["majority"].voters == 1
    votes90, kept90, cutoff90 = offline_deepconf(answers, confs, keep_top_percent=90)
    assert cutoff90 == pytest.approx(1.9) and kept90 == [False] + [True] * 9 + [False, False]
    assert votes90["majority"].answer == "7"  # 6 votes vs 3
    assert votes90["min_window_weighted"].answer == "3"  # weight 57 vs 2+...+7 = 27
    assert votes90["min_window_weighted"].tallies == {"3": 57.0, "7": 27.0}


def test_offline_deepconf_filter_metric_and_errors():
    answers = ["a", "b"]
    confs = [conf(1.0, tail=9.0), conf(5.0, tail=1.0)]
    assert offline_deepconf(answers, confs, 50, filter_by="tail")[0]["majority"].answer == "a"
    assert offline_deepconf(answers, confs, 50, filter_by="lowest")[0]["majority"].answer == "b"
    votes, kept, cutoff = offline_deepconf([None, None], [conf(), conf()])
    assert cutoff is None and kept == [False, False] and votes["majority"].answer is None
    with pytest.raises(ConfigError, match="keep_top_percent"):
        offline_deepconf(answers, confs, keep_top_percent=0)
    with pytest.raises(ConfigError, match="keep_top_percent"):
        top_percent_cutoff([1.0], 150)
    with pytest.raises(ConfigError, match="unknown confidence metric"):
        offline_deepconf(answers, confs, filter_by="head")


# ---------- equivalence classes ----------

def test_grouping_merges_equivalent_forms_and_keeps_different_ones_apart():
    same = [
        ["x^2+1", "1+x^2"],
        ["(x+1)^2", "x^2+2x+1"],
        [r"\{1,2\}", r"\{2,1\}"],
        ["(0,1]", r"\left(0,1\right]"],
        [r"[0,\infty)", r"[0, \infty)"],
        [r"\sqrt{2}", "2^{1/2}", "1.41421356"],
        [r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"],
        ["x=3", "3", "k = 3"],
        [r"\pi", "3.14159265"],
    ]
    different = ["x^{60}+4", "x^{60}+5", "y^2+1", "A", "B", r"\{1,2,3\}", "[0,1]", "hello"]
    answers = [a for group in same for a in group] + different
    labels = group_answers(answers).labels
    pos = 0
    seen = set()
    for group in same:
        ids = set(labels[pos : pos + len(group)])
        assert len(ids) == 1, group
        seen |= ids
        pos += len(group)
    assert len(set(labels[pos:])) == len(different) and not (set(labels[pos:]) & seen)


def test_grouping_cost_is_bounded(monkeypatch):
    import math_verify

    from h1r.deepconf import equivalence

    calls = []
    real = math_verify.verify
    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    equivalence.signature.cache_clear()
    equivalence.equivalent.cache_clear()
    # numbers, expressions and sets compare by fingerprint: no sympy verify at all
    numeric = [rf"\sqrt{{{i}}}" for i in range(2, 42)] + ["2"] + [f"x^{{{i}}}+{i % 3}" for i in range(2, 42)]
    g = group_answers(numeric)
    assert len(g.names) == 80 and g.labels[40] == g.labels[2] and not calls  # "2" joins \sqrt{4}
    # kinds without a fingerprint (here: matrices) are verified against at most max_compare classes
    matrices = [rf"\begin{{pmatrix}}{i}\\{i + 1}\end{{pmatrix}}" for i in range(20)]
    group_answers(matrices, max_compare=3)
    assert 0 < len(calls) <= 3 * len(matrices)


def test_close_but_different_integers_stay_apart():
    labels = group_answers(["1000000", "1000001", "10^6", "999999", "0.3333333", r"\frac{1}{3}"]).labels
    assert labels[0] == labels[2] and len({labels[0], labels[1], labels[3]}) == 3
    assert labels[4] == labels[5]  # non-integers: 1e-6 relative tolerance, like fast_equal

import math

import numpy as np
import pytest

from h1r.deepconf.confidence import group_confidences, token_confidences, trace_confidence
from h1r.deepconf.online import (
    ConfidenceStop,
    confidence_threshold,
    consensus_reached,
    make_stop_hook,
    replay_online,
    should_continue,
    stop_point,
)
from h1r.deepconf.voting import VoteResult
from h1r.errors import ConfigError


# ---------- threshold: the low/high trap ----------

def test_threshold_low_is_90th_and_high_is_10th_percentile():
    warm = [float(x) for x in range(16, 0, -1)]  # 16 warm-up lowest-group confidences, 1..16
    assert confidence_threshold(warm, variant="low") == 14.5  # 1 + 0.9 * 15
    assert confidence_threshold(warm, variant="high") == 2.5  # 1 + 0.1 * 15
    assert confidence_threshold(warm, keep_top_percent=10) == 14.5
    assert confidence_threshold(warm, keep_top_percent=90) == 2.5
    eleven = [float(x) for x in range(11)]
    assert confidence_threshold(eleven, variant="low") == 9.0
    assert confidence_threshold(eleven, variant="high") == 1.0
    # empty warm-up traces (NaN metrics) are ignored
    assert confidence_threshold(eleven + [math.nan], variant="low") == 9.0


def test_threshold_parameters_cannot_be_confused():
    with pytest.raises(ConfigError, match="exactly one"):
        confidence_threshold([1.0, 2.0])
    with pytest.raises(ConfigError, match="exactly one"):
        confidence_threshold([1.0, 2.0], variant="low", keep_top_percent=10)
    with pytest.raises(ConfigError, match="'low'"):
        confidence_threshold([1.0, 2.0], variant="90")
    with pytest.raises(ConfigError, match="no finite"):
        confidence_threshold([math.nan], variant="low")


# ---------- the per-token stop hook ----------

def rows_for(confs, k=4):
    """Top-k logprob rows whose token confidence is exactly `c` (all k values equal -c)."""
    return [[-float(c)] * k for c in confs]


def test_hook_stops_at_the_token_whose_full_window_drops_below_s():
    confs = [9, 1, 1, 9, 9, 9, 1, 1, 1, 9]
    # window 3 means after tokens 3..10: 11/3, 11/3, 19/3, 27/3, 19/3, 11/3, 1, 11/3
    hook = make_stop_hook(threshold=4.0, window=3, topk=4)
    fired = [hook(i, row) for i, row in enumerate(rows_for(confs))]
    assert fired == [False, False, True] + [True] * 7  # window full at token 3, mean 11/3 < 4
    assert hook.num_tokens == 3 and hook.stopped
    assert stop_point(confs, 4.0, window=3) == 3
    hook2 = make_stop_hook(threshold=3.0, window=3)
    fired2 = [hook2(i, row) for i, row in enumerate(rows_for(confs))]
    assert fired2.index(True) == 8  # the window mean 1 at token 9
    assert hook2.num_tokens == 9 == stop_point(confs, 3.0, window=3)
    never = make_stop_hook(threshold=3.0, window=20)  # never full: never stops
    assert not any(never(i, row) for i, row in enumerate(rows_for(confs)))


def test_hook_confidences_equal_offline_and_ties_do_not_stop():
    rng = np.random.default_rng(3)
    shapes = [(0.2, 300), (0.5, 200), (1.0, 400)]  # (dirichlet concentration, tokens)
    traces = [np.log(rng.dirichlet(np.ones(30) * a, size=n))[:, :20] for a, n in shapes]
    lows = [trace_confidence(token_confidences(t), window=64).lowest for t in traces]
    for s in lows:  # s exactly equal to a trace's lowest group: that trace survives (strict <)
        for t, low in zip(traces, lows):
            hook = make_stop_hook(s, window=64, topk=20)
            for i, row in enumerate(t):
                if hook(i, list(row)):
                    break
            assert hook.stopped == (low < s)
            assert np.array_equal(hook.confidences, token_confidences(t)[: hook.num_tokens])


def test_hook_rejects_a_non_finite_threshold():
    with pytest.raises(ConfigError, match="finite"):
        make_stop_hook(float("nan"))
    assert ConfidenceStop(5.0, window=8, topk=20).make_hook().group.window == 8


# ---------- replay: online/offline consistency ----------

def test_replay_excludes_exactly_the_traces_below_s_and_counts_tokens_to_the_stop():
    rng = np.random.default_rng(7)
    window = 32
    lengths = [500, 400, 20, 31, 32, 33, 1000, 10, 300, 250, 700, 64, 25, 200]  # some shorter than the window

    def trace(n):  # steady confidence with one dip of random place and depth
        t = 14 + rng.normal(0, 1.5, n)
        p = rng.integers(0, n)
        t[p : p + 40] -= rng.uniform(0, 6)
        return t

    traces = [trace(n) for n in lengths]
    lows = np.array([trace_confidence(t, window=window).lowest for t in traces])
    short = np.array(lengths) < window
    for variant in ("low", "high"):
        s = confidence_threshold(lows[:8], variant=variant)  # the first 8 act as warm-up
        r = replay_online(traces, s, window)
        assert [not k for k in r.kept] == list(lows < s)
        for t, rt in zip(traces, r.traces):
            means = group_confidences(t, window)
            below = np.flatnonzero(means < s)
            if len(t) >= window and below.size:
                # stopped: counts the tokens up to and including the one whose window fell below s
                assert rt.stopped_at == rt.tokens == below[0] + window
                assert means[: below[0]].min(initial=math.inf) >= s
            else:
                assert rt.stopped_at is None and rt.tokens == len(t)
        assert r.total_tokens == sum(rt.tokens for rt in r.traces)
        assert r.total_tokens < sum(lengths)  # something was stopped early, in both variants
    low_r = replay_online(traces, confidence_threshold(lows[:8], variant="low"), window)
    high_r = replay_online(traces, confidence_threshold(lows[:8], variant="high"), window)
    # the fixture covers the edges: stops mid-trace, short traces filtered at completion and kept
    assert any(t.stopped_at and t.stopped_at > window for t in low_r.traces)
    assert any(not t.kept and t.stopped_at is None for t, sh in zip(low_r.traces, short) if sh)
    assert any(t.kept for t, sh in zip(low_r.traces, short) if sh)
    # the low variant (stricter) stops more and spends fewer tokens
    assert sum(low_r.kept) <= sum(high_r.kept) and low_r.total_tokens <= high_r.total_tokens


# ---------- adaptive sampling ----------

def test_consensus_and_budget_only():
    strong = VoteResult(answer="4", share=0.96)
    weak = VoteResult(answer="4", share=0.6)
    assert consensus_reached(strong, 0.95) and not consensus_reached(weak, 0.95)
    assert not consensus_reached(strong, None)  # budget-only mode
    assert not consensus_reached(VoteResult(answer=None, share=0.0), 0.5)
    assert should_continue(16, 64, weak, 0.95)
    assert not should_continue(16, 64, strong, 0.95)
    assert should_continue(16, 64, strong, None)
    assert not should_continue(64, 64, weak, None)

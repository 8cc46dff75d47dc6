import math

import numpy as np
import pytest
import torch

from h1r.deepconf.confidence import (
    LOGPROB_FLOOR,
    SlidingGroupConfidence,
    group_confidences,
    token_confidence,
    token_confidences,
    trace_confidence,
)
from h1r.errors import ConfigError


# ---------- token confidence ----------

def test_token_confidence_is_negative_mean_of_the_given_topk():
    assert token_confidence([-0.1, -3.0]) == pytest.approx(1.55)
    assert token_confidence({5: -0.5, 9: -1.5, 2: -4.0}) == pytest.approx(2.0)  # vLLM-style dict


def test_peaked_distribution_is_more_confident_than_flat():
    peaked = [math.log(0.98)] + [math.log(0.02 / 19)] * 19
    flat = [math.log(1 / 20)] * 20
    assert token_confidence(peaked) > token_confidence(flat)


def test_k_keeps_the_largest_values():
    # given 3 values but k=2: the two most likely candidates, whatever the order given
    assert token_confidence([-5.0, -1.0, -2.0], k=2) == pytest.approx(1.5)
    assert token_confidence([-5.0, -1.0], k=20) == pytest.approx(3.0)  # fewer than k: use all


def test_minus_inf_is_clipped_and_nan_rejected():
    assert token_confidence([0.0, -math.inf]) == pytest.approx(-LOGPROB_FLOOR / 2)
    with pytest.raises(ConfigError, match="NaN"):
        token_confidence([-1.0, float("nan")])
    with pytest.raises(ConfigError, match="at least one"):
        token_confidence([])
    with pytest.raises(ConfigError, match="NaN"):
        token_confidences(np.array([[-1.0, np.nan]]))
    with pytest.raises(ConfigError, match="2-D"):
        token_confidences(np.zeros(5))
    with pytest.raises(ConfigError, match="k must be"):
        token_confidence([-1.0, -2.0], k=0)


def test_vectorised_token_confidences_equal_scalar_bit_for_bit():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(50) * 0.3, size=300))  # [300, 50], some very negative
    lp = -np.sort(-lp, axis=1)[:, :20]
    lp[3, 7] = -np.inf
    scalar = np.array([token_confidence(list(row)) for row in lp])
    assert np.array_equal(token_confidences(lp), scalar)
    assert np.array_equal(token_confidences([list(r) for r in lp]), scalar)
    assert np.array_equal(token_confidences(torch.from_numpy(lp)), scalar)
    shuffled = rng.permuted(lp, axis=1)
    assert np.array_equal(token_confidences(shuffled, k=5), [token_confidence(list(r), k=5) for r in shuffled])
    ragged = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0]]
    assert token_confidences(ragged).tolist() == [1.5, 0.5, 2.0]
    assert token_confidences([]).shape == (0,)


# ---------- group / trace metrics ----------

def test_group_confidences_window_edges():
    c = [1.0, 2.0, 3.0, 4.0]
    assert group_confidences(c, window=4).tolist() == [2.5]  # window exactly full: one group
    assert group_confidences(c, window=5).size == 0  # shorter than the window: none
    assert group_confidences(c, window=1).tolist() == c  # window of 1: the tokens themselves
    assert group_confidences(c, window=2).tolist() == [1.5, 2.5, 3.5]
    with pytest.raises(ConfigError, match="window"):
        group_confidences(c, window=0)


def test_trace_shorter_than_window_uses_plain_mean():
    m = trace_confidence([1.0, 2.0, 6.0], window=4, tail=2)
    assert (m.mean, m.lowest, m.bottom) == (3.0, 3.0, 3.0)
    assert m.tail == 4.0  # tail shorter than the trace: the last 2 tokens


def test_window_exactly_full_and_window_of_one():
    c = [4.0, 1.0, 7.0, 2.0]
    full = trace_confidence(c, window=4, tail=100)
    assert full.lowest == full.bottom == full.mean == full.tail == 3.5
    one = trace_confidence(c, window=1, tail=1)
    assert one.lowest == 1.0 and one.tail == 2.0
    assert one.bottom == 1.0  # 4 windows: int(0.4) -> at least one window


def test_bottom_ten_percent_with_few_and_many_windows():
    nine = list(range(9, 0, -1))  # 9 windows of size 1: 10% of 9 -> 1 window -> the min
    assert trace_confidence(nine, window=1).bottom == 1.0
    twenty = [float(x) for x in range(20, 0, -1)]  # 20 windows: the lowest 2 -> mean(1, 2)
    assert trace_confidence(twenty, window=1).bottom == 1.5
    # size-2 windows over 21 tokens: 20 window means 1.5..20.5; lowest two: 1.5, 2.5
    m = trace_confidence([float(x) for x in range(1, 22)], window=2, tail=3)
    assert m.lowest == 1.5 and m.bottom == 2.0 and m.tail == 20.0 and m.mean == 11.0


def test_empty_trace_metrics_are_nan_and_bad_params_rejected():
    m = trace_confidence([], window=4)
    assert all(math.isnan(v) for v in (m.mean, m.lowest, m.bottom, m.tail))
    with pytest.raises(ConfigError, match="tail"):
        trace_confidence([1.0], tail=0)
    with pytest.raises(ConfigError, match="bottom_fraction"):
        trace_confidence([1.0], bottom_fraction=0.0)
    with pytest.raises(ConfigError, match="unknown confidence metric"):
        m.get("median")


# ---------- streaming ----------

def test_streaming_window_equals_offline_bit_for_bit():
    rng = np.random.default_rng(1)
    for window, n in [(2048, 5000), (7, 50), (1, 10), (16, 16), (16, 10)]:
        c = rng.gamma(4.0, 4.0, size=n)  # confidence-like magnitudes, 0..40
        s = SlidingGroupConfidence(window)
        streamed = []
        for i, x in enumerate(c):
            v = s.push(x)
            assert s.full == (i + 1 >= window)
            assert (v is None) == (not s.full)
            if v is not None:
                streamed.append(v)
                assert s.value == v
        offline = group_confidences(c, window)
        assert np.array_equal(np.array(streamed), offline)  # exact, not approx
        if offline.size:
            assert s.lowest == trace_confidence(c, window).lowest
        else:
            assert s.lowest == math.inf and s.value is None


def test_streaming_rejects_bad_window():
    with pytest.raises(ConfigError, match="window"):
        SlidingGroupConfidence(0)
    with pytest.raises(ConfigError, match="window"):
        SlidingGroupConfidence(True)

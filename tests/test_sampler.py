"""The sampler draws from the distribution each parameter claims (chi-square on a tiny vocabulary)."""

import pytest
import torch

from h1r.engine.sampler import SamplingBatch, sample

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
R = 40000


def _draw(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, position=0):
    sb = SamplingBatch(temperature=torch.full((R,), temperature), top_p=torch.full((R,), top_p),
                       top_k=torch.full((R,), top_k, dtype=torch.long), min_p=torch.full((R,), min_p),
                       seeds=torch.arange(R, dtype=torch.int64) * 7919 + 1,
                       positions=torch.full((R,), position, dtype=torch.int64))
    tok, _ = sample(LOGITS.expand(R, -1).clone(), sb)
    return torch.bincount(tok, minlength=len(LOGITS)).double()


def _expected(temperature=1.0, keep=None):
    p = torch.softmax(LOGITS.double() / temperature, -1)
    if keep is not None:
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum()
    return p


def _pvalue(counts, p):
    support = p > 0
    assert counts[~support].sum() == 0, "sampled a token outside the allowed set"
    exp = p[support] * counts.sum()
    chi2 = ((counts[support] - exp) ** 2 / exp).sum()
    df = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), chi2 / 2.0)) if df > 0 else 1.0


def test_temperature():
    for t in (1.0, 0.5, 1.7):
        assert _pvalue(_draw(temperature=t), _expected(t)) > 1e-3


def test_wrong_distribution_is_detected():  # the test above can fail
    assert _pvalue(_draw(temperature=0.5), _expected(1.0)) < 1e-6


def test_top_k():
    keep = torch.arange(8) < 3
    assert _pvalue(_draw(top_k=3), _expected(1.0, keep)) > 1e-3


def test_top_p():
    p = torch.softmax(LOGITS.double(), -1)  # cumulative: .40 .65 .80 .89 ...
    keep = (p.cumsum(0) - p) < 0.7  # smallest prefix with mass >= 0.7
    assert int(keep.sum()) == 3
    assert _pvalue(_draw(top_p=0.7), _expected(1.0, keep)) > 1e-3


def test_min_p():
    p = torch.softmax(LOGITS.double(), -1)
    keep = p >= 0.2 * p.max()
    assert _pvalue(_draw(min_p=0.2), _expected(1.0, keep)) > 1e-3


def test_combined_temperature_and_top_k():
    keep = torch.arange(8) < 5
    assert _pvalue(_draw(temperature=0.8, top_k=5), _expected(0.8, keep)) > 1e-3


def test_greedy_and_positions_change_the_draw():
    assert _draw(temperature=0.0)[0] == R
    a = _draw(position=0)
    b = _draw(position=1)
    assert not torch.equal(a, b)  # different positions -> different noise


@pytest.mark.parametrize("rp", [1.3])
def test_repetition_and_presence_penalties_lower_seen_tokens(rp):
    sb = SamplingBatch(temperature=torch.zeros(1), top_p=torch.ones(1), top_k=torch.zeros(1, dtype=torch.long),
                       min_p=torch.zeros(1), seeds=torch.zeros(1, dtype=torch.int64),
                       positions=torch.zeros(1, dtype=torch.int64), all_greedy=True,
                       repetition_penalty=torch.tensor([rp]), seen_mask=(torch.arange(8) == 0)[None])
    logits = torch.tensor([[2.0, 1.9, 0, 0, 0, 0, 0, 0]])
    assert int(sample(logits, sb)[0]) == 1  # 2.0 / 1.3 < 1.9
    sb.repetition_penalty, sb.seen_mask = None, None
    sb.output_counts = (torch.arange(8) == 0).float()[None]
    sb.presence_penalty, sb.frequency_penalty = torch.tensor([0.5]), torch.tensor([0.0])
    assert int(sample(logits, sb)[0]) == 1

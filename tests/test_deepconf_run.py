import json
import math

import numpy as np
import pytest

from h1r.deepconf.confidence import token_confidences, trace_confidence
from h1r.deepconf.online import confidence_threshold, replay_online
from h1r.deepconf.result import DeepConfResult, make_trace
from h1r.deepconf.run import DeepConfConfig, pool_generator, run_deepconf
from h1r.errors import ConfigError
from h1r.utils.config import load_config

WINDOW = 16


def make_pool(n=40, seed=0):
    """(text, top-k logprob rows) per trace: confident traces say 42, shaky ones 17 or nothing."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        good = rng.random() < 0.6
        length = int(rng.integers(8, 120))
        conf = (14.0 if good else 11.0) + rng.normal(0, 1.0, length)
        conf[rng.integers(0, length):][:20] -= rng.uniform(0, 8)  # a dip of random depth
        answer = "42" if good else ("17" if rng.random() < 0.8 else None)
        text = f"<think>step {i}</think> " + (rf"\boxed{{{answer}}}" if answer else "no idea")
        rows = np.repeat(-conf[:, None], 4, axis=1)  # every top-k value -c: token confidence c
        pool.append((text, rows))
    return pool


def fake_engine(pool):
    """What the real engine does: per-sequence hook called after every token, finish on True."""
    it = iter(pool)
    calls = []

    def generate(n, stop):
        calls.append((n, stop))
        out = []
        for _ in range(n):
            text, rows = next(it)
            hook = stop.make_hook() if stop else None
            used, reason = len(rows), "stop"
            for i, row in enumerate(rows):
                if hook and hook(i, list(row)):
                    used, reason = i + 1, "confidence"
                    break
            out.append(make_trace(text, token_confidences(rows[:used]), reason, window=WINDOW, tail=WINDOW))
        return out

    return generate, calls


def full_pool(pool):
    return [make_trace(t, token_confidences(r), "stop", window=WINDOW, tail=WINDOW) for t, r in pool]


@pytest.mark.parametrize("variant", ["low", "high"])
def test_budget_only_engine_path_equals_replay_and_offline_filter(variant):
    pool = make_pool()
    cfg = DeepConfConfig(variant=variant, budget=40, warmup_traces=16, consensus=None, window=WINDOW, tail=WINDOW)
    generate, calls = fake_engine(pool)
    online = run_deepconf(generate, cfg)
    replayed = run_deepconf(pool_generator(full_pool(pool), WINDOW, WINDOW), cfg)
    # warm-up without a stop hook, then the rest in one batch with the threshold
    assert [n for n, _ in calls] == [16, 24] and calls[0][1] is None
    assert calls[1][1].threshold == online.threshold
    full = full_pool(pool)
    lows = [t.confidence.lowest for t in full]
    s = confidence_threshold(lows[:16], variant=variant)
    assert online.threshold == replayed.threshold == s
    # exactly the traces whose lowest group confidence is below s are excluded (warm-up too)
    assert [t.kept for t in online.traces] == [low >= s for low in lows]
    assert [t.kept for t in replayed.traces] == [low >= s for low in lows]
    # token accounting: warm-up in full; final traces up to and including their stop token
    r = replay_online([t.token_confidences for t in full[16:]], s, WINDOW)
    assert online.tokens["warmup"] == sum(t.num_tokens for t in full[:16])
    assert online.tokens["final"] == replayed.tokens["final"] == r.total_tokens
    assert online.tokens["total"] == online.tokens["warmup"] + online.tokens["final"]
    assert [t.num_tokens for t in online.traces[16:]] == [x.tokens for x in r.traces]
    assert any(t.finish_reason == "confidence" for t in online.traces)
    assert online.answer == replayed.answer == "42" and online.ended_by == "budget"
    assert online.votes["majority"].voters == sum(t.kept and t.answer is not None for t in online.traces)
    for t in online.traces:
        if t.finish_reason == "confidence":
            assert t.answer is None and not t.kept


def test_adaptive_sampling_stops_at_consensus():
    # warm-up: 12 x "42" (confidence 14) and 4 x "17" (13): min-window share 168/220 = 0.76
    # each further "42" adds 14; share >= 0.85 needs 10 more, i.e. three batches of 4
    def same(answer, c):
        return (rf"\boxed{{{answer}}}", np.full((30, 4), -c))

    pool = [same("42", 14.0)] * 12 + [same("17", 13.0)] * 4 + [same("42", 14.0)] * 48
    cfg = DeepConfConfig(variant="high", budget=64, warmup_traces=16, consensus=0.85, step=4, window=WINDOW)
    generate, calls = fake_engine(pool)
    res = run_deepconf(generate, cfg)
    assert [n for n, _ in calls] == [16, 4, 4, 4]
    assert res.ended_by == "consensus" and len(res.traces) == 28 and res.answer == "42"
    assert res.share == pytest.approx((12 + 12) * 14 / ((12 + 12) * 14 + 4 * 13))
    assert res.tokens == {"warmup": 16 * 30, "final": 12 * 30, "total": 28 * 30}
    # budget-only mode ignores consensus: one batch for the rest of the budget
    generate, calls = fake_engine(pool)
    res = run_deepconf(generate, DeepConfConfig(**{**cfg.__dict__, "consensus": None}))
    assert [n for n, _ in calls] == [16, 48] and res.ended_by == "budget" and res.tokens["total"] == 64 * 30


def test_consensus_in_warmup_skips_the_final_phase():
    text, rows = r"\boxed{7}", np.full((30, 4), -12.0)
    pool = [(text, rows)] * 20
    generate, calls = fake_engine(pool)
    res = run_deepconf(generate, DeepConfConfig(budget=20, warmup_traces=8, window=WINDOW))
    assert res.ended_by == "consensus" and len(calls) == 1 and res.answer == "7" and res.share == 1.0
    assert res.tokens == {"warmup": 240, "final": 0, "total": 240}


def test_offline_mode_filters_top_percent():
    pool = make_pool()
    cfg = DeepConfConfig(mode="offline", budget=40, window=WINDOW, tail=WINDOW)
    res = run_deepconf(pool_generator(full_pool(pool)), cfg)
    answered = [t.confidence.lowest for t in res.traces if t.answer is not None]
    assert res.threshold == pytest.approx(np.percentile(answered, 90))
    assert sum(t.kept for t in res.traces) == sum(v >= res.threshold for v in answered)
    assert res.tokens["final"] == sum(len(r) for _, r in pool) and res.tokens["warmup"] == 0


def test_result_round_trips_through_json():
    pool = make_pool()
    cfg = DeepConfConfig(budget=40, consensus=None, window=WINDOW, tail=WINDOW)
    res = run_deepconf(pool_generator(full_pool(pool)), cfg)
    res.traces[0].confidence = trace_confidence([])  # NaN metrics must survive as null
    text = res.to_json()
    assert "NaN" not in text
    back = DeepConfResult.from_dict(json.loads(text))
    assert back.answer == res.answer and back.tokens == res.tokens and back.threshold == res.threshold
    assert back.votes == res.votes and len(back.traces) == len(res.traces)
    assert math.isnan(back.traces[0].confidence.lowest)
    assert [t.to_dict() for t in back.traces[1:]] == [t.to_dict() for t in res.traces[1:]]
    assert "token_confidences" not in res.to_dict()["traces"][0]
    assert res.to_dict(token_confidences=True, text=True)["traces"][1]["text"].startswith("<think>")
    assert back.config["variant"] == "low"


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="'low'"):
        DeepConfConfig(variant="90")
    with pytest.raises(ConfigError, match="exceeds the budget"):
        DeepConfConfig(budget=8, warmup_traces=16)
    with pytest.raises(ConfigError, match="consensus"):
        DeepConfConfig(consensus=1.5)
    with pytest.raises(ConfigError, match="vote method"):
        DeepConfConfig(vote_method="best")
    with pytest.raises(ConfigError, match="window"):
        DeepConfConfig(window=0)
    cfg = load_config(DeepConfConfig, overrides=["--variant", "high", "--consensus", "none", "--budget", "64"])
    assert cfg.keep_top_percent == 90.0 and cfg.consensus is None and cfg.budget == 64
    with pytest.raises(ConfigError, match="exhausted"):
        run_deepconf(pool_generator([]), DeepConfConfig(budget=4, warmup_traces=2))
    with pytest.raises(ConfigError, match="asked for"):
        run_deepconf(lambda n, stop: [], DeepConfConfig(budget=4, warmup_traces=2))

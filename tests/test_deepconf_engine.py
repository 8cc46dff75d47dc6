"""DeepConf through the real engine: early stopping matches the replay, token accounting, shared
prefills, solve_many == solve, bad input."""

import numpy as np
import pytest

from h1r import LLM, SamplingParams
from h1r.deepconf import ConfidenceStop, DeepConfConfig, group_confidences, replay_online
from h1r.deepconf.engine import engine_generator, request_seed, solve, solve_many, trace_of
from h1r.engine import CompletionOutput, SamplingError, TokenLogprobs
from h1r.errors import ConfigError
from tests.engine_fixtures import make_model_dir

KW = dict(dtype="float32", max_model_len=256, cache_memory=64 << 20, page_size=8)
SAMPLING = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)
SHORT = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
WINDOW = 8  # traces here are 24-40 tokens long


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), **KW)


def prompt(seed: int, n: int = 9) -> list[int]:
    return np.random.default_rng(seed).integers(10, 300, n).tolist()


def capturing(llm):
    """A `submit` that also keeps the engine's RequestOutputs."""
    outs = []

    def submit(ids, params):
        outs.append(llm.generate([ids], params)[0])
        return outs[-1]
    return submit, outs


def threshold_between_windows(conf_lists, window):
    """A threshold near the median lowest group confidence, halfway between two window values, so
    that last-bit differences between runs cannot flip a comparison."""
    lows = sorted(group_confidences(c, window).min() for c in conf_lists)
    everything = np.unique(np.concatenate([group_confidences(c, window) for c in conf_lists]))
    j = int(np.searchsorted(everything, lows[len(lows) // 2]))
    s = (everything[j] + everything[j + 1]) / 2
    assert np.abs(everything - s).min() > 1e-6
    return float(s)


def test_online_stop_matches_replay_of_the_unstopped_traces(llm):
    cfg = DeepConfConfig(window=WINDOW)
    ids, n = prompt(1), 24
    submit_free, free = capturing(llm)
    submit_hook, hooked = capturing(llm)
    free_traces = engine_generator(submit_free, ids, cfg, SAMPLING, seed=5, keep_confidences=True)(n, None)
    free_confs = [t.token_confidences for t in free_traces]
    s = threshold_between_windows(free_confs, WINDOW)
    before = llm.engine.stats.generated_tokens
    traces = engine_generator(submit_hook, ids, cfg, SAMPLING, seed=5, keep_confidences=True)(
        n, ConfidenceStop(s, WINDOW, cfg.topk))
    generated = llm.engine.stats.generated_tokens - before

    replay = replay_online(free_confs, s, WINDOW)
    stopped = [r.stopped_at is not None for r in replay.traces]
    assert 4 <= sum(stopped) <= n - 4  # the test exercises both outcomes
    for i, (t, r) in enumerate(zip(traces, replay.traces)):
        got, ref = hooked[0].outputs[i], free[0].outputs[i]
        assert got.token_ids == ref.token_ids[: len(got.token_ids)]  # same seed: same tokens up to the stop
        np.testing.assert_allclose(t.token_confidences, free_confs[i][: t.num_tokens], rtol=1e-6)
        if r.stopped_at is not None:
            assert (t.finish_reason, got.finish_reason) == ("confidence", "hook")
            assert t.num_tokens == r.stopped_at == len(got.token_ids) and t.answer is None and not t.kept
        else:
            assert t.finish_reason == "length" and t.num_tokens == 40
        # bitwise: the engine hook and the offline arithmetic agree on the trace's own confidences
        own = replay_online([t.token_confidences], s, WINDOW).traces[0]
        assert own.stopped_at == (t.num_tokens if t.finish_reason == "confidence" else None)
        assert own.kept == (group_confidences(t.token_confidences, WINDOW).min() >= s)
    # every generated token is counted, those of stopped traces included
    assert sum(t.num_tokens for t in traces) == replay.total_tokens == generated
    assert replay.total_tokens < sum(len(c) for c in free_confs)


def test_solve_counts_every_token_and_thresholds_the_warmup(llm):
    cfg = DeepConfConfig(budget=24, warmup_traces=8, window=WINDOW, consensus=None)
    before = llm.engine.stats.generated_tokens
    r = solve(llm, prompt(2), cfg, SAMPLING, seed=11, keep_confidences=True)
    assert r.tokens["total"] == llm.engine.stats.generated_tokens - before
    assert r.tokens == {"warmup": sum(t.num_tokens for t in r.traces[:8]),
                        "final": sum(t.num_tokens for t in r.traces[8:]), "total": r.tokens["total"]}
    warm = [t for t in r.traces if t.stage == "warmup"]
    assert len(warm) == 8 and len(r.traces) == 24 and r.ended_by == "budget"
    assert r.threshold == pytest.approx(np.percentile([t.confidence.lowest for t in warm], 90), abs=0, rel=0)
    stopped = [t for t in r.traces if t.finish_reason == "confidence"]
    assert stopped and all(t.stage == "final" and t.num_tokens <= 40 and not t.kept for t in stopped)
    assert any(t.num_tokens < 40 for t in stopped)
    assert all(t.finish_reason != "confidence" for t in warm)  # warm-up traces run to the end
    assert r.config["seed"] == 11 and r.config["prompt_tokens"] == 9


def test_one_prefill_per_problem(llm):
    """solve pins the prompt: the warm-up and every final batch fork from one prefill."""
    ids = prompt(3, 13)
    before = llm.engine.stats.prefill_tokens
    # adaptive: warm-up (8) + final batches of 4 until the budget of 16 (no answers, no consensus)
    r = solve(llm, ids, DeepConfConfig(budget=16, warmup_traces=8, step=4, window=WINDOW), SHORT, seed=1)
    assert len(r.traces) == 16 and r.ended_by == "budget"
    assert llm.engine.stats.prefill_tokens - before == len(ids)
    before = llm.engine.stats.prefill_tokens
    solve(llm, ids, DeepConfConfig(budget=16, warmup_traces=8, window=WINDOW, consensus=None), SHORT, seed=1)
    assert llm.engine.stats.prefill_tokens - before == len(ids)
    u = llm.engine.cache_usage()  # the pin is released: nothing held
    assert u["slots_free"] == u["slots_total"] and u["pages_free"] == u["pages_total"] and not llm.engine.scheduler.groups


def _summary(r):
    return [(t.stage, t.finish_reason, t.num_tokens, t.text, t.kept, t.answer) for t in r.traces]


def test_solve_many_equals_solve_and_runs_problems_together(llm, monkeypatch):
    cfg = DeepConfConfig(budget=12, warmup_traces=6, step=3, window=WINDOW)
    prompts = [prompt(10), prompt(11, 5), [{"role": "user", "content": "w1 w2 w3"}]]
    steps0 = llm.engine.stats.steps
    alone = [solve(llm, p, cfg, SHORT, seed=s) for p, s in zip(prompts, (7, 8, 9))]
    steps_alone = llm.engine.stats.steps - steps0

    added = []  # engine step at which each request entered
    real_add = llm.engine.add_request
    monkeypatch.setattr(llm.engine, "add_request",
                        lambda *a, **k: (added.append(llm.engine.stats.steps), real_add(*a, **k))[1])
    steps0 = llm.engine.stats.steps
    together = solve_many(llm, prompts, cfg, SHORT, seeds=[7, 8, 9])
    steps_together = llm.engine.stats.steps - steps0
    for a, b in zip(alone, together):
        assert _summary(a) == _summary(b)
        assert a.tokens == b.tokens and a.answer == b.answer and a.ended_by == b.ended_by
        assert a.threshold == pytest.approx(b.threshold, rel=1e-6)
    assert added[:3] == [steps0] * 3  # all three warm-ups in the first batch
    assert steps_together < 0.6 * steps_alone
    assert not llm.engine.has_unfinished() and not llm.engine.requests


def test_solve_many_seeds_default_from_sampling_and_empty_list(llm):
    sp = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=40)
    cfg = DeepConfConfig(budget=4, warmup_traces=2, window=4, consensus=None)
    rs = solve_many(llm, [prompt(20), prompt(21)], cfg, sp)
    assert [r.config["seed"] for r in rs] == [40, 41]
    assert solve_many(llm, [], cfg, sp) == []
    assert request_seed(40, 0) != request_seed(40, 1) != request_seed(41, 0)


def test_offline_mode_runs_the_whole_budget_without_hooks(llm):
    r = solve(llm, prompt(4), DeepConfConfig(mode="offline", budget=10, window=WINDOW), SAMPLING, seed=3)
    assert len(r.traces) == 10 and all(t.finish_reason == "length" for t in r.traces)
    assert r.tokens["total"] == 400 and r.tokens["warmup"] == 0


def test_trace_of_maps_finish_reasons_and_answers():
    lp = TokenLogprobs(np.zeros(3, np.float32), np.zeros((3, 2), np.int32),
                       np.array([[-0.1, -3.0], [-0.2, -2.0], [-0.5, -1.0]], np.float32))
    cfg = DeepConfConfig(window=2, topk=2)
    done = trace_of(CompletionOutput(0, "x \\boxed{4}", [5, 6, 7], "stop", logprobs=lp), cfg)
    assert done.answer == "4" and done.kept and done.num_tokens == 3
    assert done.confidence.mean == pytest.approx(np.mean([1.55, 1.1, 0.75]))
    cut = trace_of(CompletionOutput(0, "x \\boxed{4}", [5, 6, 7], "hook", logprobs=lp), cfg)
    assert cut.finish_reason == "confidence" and cut.answer is None and not cut.kept
    with pytest.raises(RuntimeError, match="logprobs"):
        trace_of(CompletionOutput(0, "x", [5], "stop"), cfg)


def test_bad_input_is_named(llm):
    cfg = DeepConfConfig(budget=4, warmup_traces=2, window=4)
    with pytest.raises(ConfigError, match="empty"):
        solve(llm, "   ", cfg, SAMPLING)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        solve(llm, [1, 99999], cfg, SAMPLING)
    with pytest.raises(ConfigError, match="non-empty string"):
        solve(llm, [], cfg, SAMPLING)
    with pytest.raises(ConfigError, match="role"):
        solve(llm, [{"content": "hi"}], cfg, SAMPLING)
    with pytest.raises(ConfigError, match="topk"):
        solve(llm, [1, 2], DeepConfConfig(topk=21), SAMPLING)
    with pytest.raises(ConfigError, match="problem 1: .*context"):
        solve_many(llm, [[5, 6], [5] * 300], cfg, SAMPLING)
    with pytest.raises(ConfigError, match="list of prompts"):
        solve_many(llm, [5, 6], cfg, SAMPLING)
    with pytest.raises(ConfigError, match="2 seeds for 1 problems"):
        solve_many(llm, [[5, 6]], cfg, SAMPLING, seeds=[1, 2])


def test_solve_many_surfaces_a_failing_request_and_leaves_the_engine_clean(llm):
    cfg = DeepConfConfig(budget=4, warmup_traces=2, window=4, consensus=None)
    sp = SamplingParams(temperature=1.0, max_tokens=60, ignore_eos=True)
    with pytest.raises(SamplingError, match="exceeds the context"):
        solve_many(llm, [prompt(30), [7] * 220], cfg, sp, seeds=[1, 2])  # 220 + 60 > 256
    assert not llm.engine.has_unfinished() and not llm.engine.requests
    assert solve(llm, prompt(31), cfg, SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True), seed=1)

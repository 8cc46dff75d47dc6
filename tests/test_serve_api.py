"""The OpenAI-compatible server through the official `openai` client, against a real uvicorn server on a
tiny random model: completions, chat with reasoning_content, streaming, logprobs, n > 1, DeepConf, API key.

Reference outputs come from the same engine run offline (`llm.generate`) while the server is idle.
The model's lm_head is edited so that greedy chat output closes its reasoning with </think> mid-way:
the reasoning split is then exercised on real engine output.
"""

from types import SimpleNamespace

import numpy as np
import openai
import pytest
import torch

from h1r import LLM, SamplingParams
from h1r.serve.app import ServeConfig, build_app
from h1r.serve.server import BackgroundServer
from tests.engine_fixtures import make_model_dir

START, END = "<think>", "</think>"
MESSAGES = [{"role": "user", "content": "w1 w2 w3"}]
GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})


def _force_thinking(llm) -> None:
    """Make greedy chat output close its (implicit, as DeepSeek-R1's) reasoning with </think> after a few
    tokens and then answer, by giving </think> a scaled copy of the lm_head row of a token greedy
    decoding picks there."""
    tok, w = llm.tokenizer, llm.model.lm_head.weight
    end, special = tok.token_to_id(END), tok.special_token_ids
    ids = tok.apply_chat_template(MESSAGES, tokenize=True)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    greedy = lambda: llm.generate(ids, sp)[0].outputs[0].token_ids  # noqa: E731
    plain = greedy()
    with torch.no_grad():
        for scale in (1.05, 1.2, 1.02):
            for pos in range(2, 7):
                w[end] = w[plain[pos]] * scale
                out = greedy()
                if end in out[2:9] and len([t for t in out[out.index(end):] if t not in special]) >= 2:
                    return
    raise RuntimeError("could not make the tiny model think")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("serve"))
    llm = LLM(str(d), dtype="float32", max_model_len=256, cache_memory=32 << 20, page_size=8)
    _force_thinking(llm)
    app = build_app(llm, ServeConfig(served_model_name="tiny"))
    with BackgroundServer(app) as bg:
        client = openai.OpenAI(base_url=bg.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        # the reference answers come from a second engine over the same weights: stepping the server's
        # engine from the test thread would race its background thread
        ref = LLM(llm.model, llm.tokenizer, max_model_len=256, cache_memory=32 << 20, page_size=8)
        yield SimpleNamespace(llm=llm, ref=ref, tok=llm.tokenizer, url=bg.url, client=client,
                              server=app.state.server, model_dir=d)
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]


def offline(srv, prompt_ids, **kw):
    """The engine's own answer, from a separate engine over the same weights."""
    return srv.ref.generate(prompt_ids, SamplingParams(**kw))[0]


def words(tok, ids):
    """Word-level tiny tokenizer: every non-special token decodes to one word."""
    special = tok.special_token_ids
    return [tok.id_to_token(t) for t in ids if t not in special]


def test_models_and_health(srv):
    models = srv.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    import httpx

    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}


def test_completion_text_and_logprobs_match_the_engine(srv):
    r = srv.client.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=10, logprobs=3, **GREEDY)
    ref = offline(srv, srv.tok.encode("w1 w2 w3"), temperature=0, max_tokens=10, ignore_eos=True, logprobs=3)
    c, o = r.choices[0], ref.outputs[0]
    assert c.finish_reason == "length" and c.text.split() == words(srv.tok, o.token_ids)
    assert c.logprobs.tokens == [srv.tok.decode([t]) for t in o.token_ids]
    assert np.array_equal(np.float32(c.logprobs.token_logprobs), o.logprobs.chosen)
    for t, top in enumerate(c.logprobs.top_logprobs):
        want = {srv.tok.decode([int(i)]): float(v) for i, v in zip(o.logprobs.top_ids[t], o.logprobs.top[t])}
        assert {k: top[k] for k in want} == want and len(top) in (3, 4)
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 10 and r.usage.total_tokens == 13


def test_completion_stream_equals_the_non_streamed_answer(srv):
    kw = dict(model="tiny", prompt="w5 w6", max_tokens=9, logprobs=1, **GREEDY)
    whole = srv.client.completions.create(**kw)
    chunks = list(srv.client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    streamed_lp = [x for ch in chunks if ch.choices and ch.choices[0].logprobs
                   for x in ch.choices[0].logprobs.token_logprobs]
    assert streamed_lp == whole.choices[0].logprobs.token_logprobs
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_batched_prompts_with_n_and_seed_match_the_engine(srv):
    prompts = ["w1 w2", "w7 w8 w9"]
    r = srv.client.completions.create(model="tiny", prompt=prompts, n=3, seed=7, temperature=1.0, max_tokens=6,
                                      logprobs=0, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == list(range(6))
    for p, prompt in enumerate(prompts):
        ref = offline(srv, srv.tok.encode(prompt), n=3, seed=7, temperature=1.0, max_tokens=6, ignore_eos=True,
                      logprobs=0)
        for i, o in enumerate(ref.outputs):
            assert r.choices[p * 3 + i].logprobs.tokens == [srv.tok.decode([t]) for t in o.token_ids]
    assert len({tuple(c.logprobs.tokens) for c in r.choices}) > 2  # the samples differ
    assert r.usage.prompt_tokens == 2 + 3 and r.usage.completion_tokens == 36


def test_chat_splits_reasoning_content_as_the_engine_wrote_it(srv):
    r = srv.client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, **GREEDY)
    ids = srv.tok.apply_chat_template(MESSAGES, tokenize=True)
    o = offline(srv, ids, temperature=0, max_tokens=12, ignore_eos=True).outputs[0]
    end = o.token_ids.index(srv.tok.token_to_id(END))
    msg = r.choices[0].message
    assert msg.reasoning_content.split() == words(srv.tok, o.token_ids[:end])
    assert msg.content.split() == words(srv.tok, o.token_ids[end + 1:])
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 12


def test_chat_stream_equals_the_non_streamed_answer(srv):
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=12, **GREEDY)
    whole = srv.client.chat.completions.create(**kw)
    chunks = list(srv.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == whole.choices[0].message.reasoning_content and content == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_chat_logprobs_match_the_engine_streamed_or_not(srv):
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=8, logprobs=True, top_logprobs=4, **GREEDY)
    r = srv.client.chat.completions.create(**kw)
    ids = srv.tok.apply_chat_template(MESSAGES, tokenize=True)
    o = offline(srv, ids, temperature=0, max_tokens=8, ignore_eos=True, logprobs=4).outputs[0]
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [srv.tok.decode([t]) for t in o.token_ids]
    assert np.array_equal(np.float32([c.logprob for c in content]), o.logprobs.chosen)
    for c, top_ids, top in zip(content, o.logprobs.top_ids, o.logprobs.top):
        assert [(t.token, t.logprob) for t in c.top_logprobs] == \
            [(srv.tok.decode([int(i)]), float(v)) for i, v in zip(top_ids, top)]
        assert bytes(c.bytes).decode() == c.token
    streamed = [x for ch in srv.client.chat.completions.create(stream=True, **kw)
                for x in (ch.choices[0].logprobs.content if ch.choices and ch.choices[0].logprobs else [])]
    assert [x.model_dump() for x in streamed] == [x.model_dump() for x in content]


def test_n_samples_stream_per_choice(srv):
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=6, n=2, seed=11, temperature=1.0,
              extra_body={"ignore_eos": True})
    whole = srv.client.chat.completions.create(**kw)
    reasoning, content = {0: "", 1: ""}, {0: "", 1: ""}
    for ch in srv.client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            reasoning[c.index] += getattr(c.delta, "reasoning_content", None) or ""
            content[c.index] += c.delta.content or ""
    for c in whole.choices:
        assert (reasoning[c.index], content[c.index]) == (c.message.reasoning_content or "", c.message.content or "")
    assert whole.choices[0].message != whole.choices[1].message and whole.usage.completion_tokens == 12


def test_stop_strings_cut_the_same_way_streamed_or_not(srv):
    base = srv.client.completions.create(model="tiny", prompt="w3 w4", max_tokens=8, **GREEDY).choices[0].text
    stop = base.split()[3]
    kw = dict(model="tiny", prompt="w3 w4", max_tokens=8, stop=[stop], temperature=0)
    whole = srv.client.completions.create(**kw).choices[0]
    streamed = "".join(ch.choices[0].text for ch in srv.client.completions.create(stream=True, **kw) if ch.choices)
    assert whole.finish_reason == "stop" and stop not in whole.text and whole.text.split() == base.split()[:3]
    assert streamed == whole.text


def test_deepconf_option_votes_like_offline_solve(srv):
    from h1r.deepconf.engine import solve
    from h1r.deepconf.run import DeepConfConfig

    opts = {"mode": "online", "variant": "low", "budget": 8, "warmup": 4, "window": 4, "consensus": 0.95, "step": 2}
    r = srv.client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, seed=5,
                                           extra_body={"deepconf": opts})
    stats = r.model_extra["deepconf"]
    ids = srv.tok.apply_chat_template(MESSAGES, tokenize=True)
    cfg = DeepConfConfig(mode="online", variant="low", budget=8, warmup_traces=4, window=4, consensus=0.95, step=2)
    ref = solve(srv.llm, ids, cfg, SamplingParams(temperature=0.6, top_p=0.95, max_tokens=10), seed=5)
    assert r.choices[0].message.content == stats["answer"] == ref.answer
    assert stats["tokens"] == ref.tokens and stats["tokens"]["total"] == r.usage.completion_tokens
    assert stats["num_traces"] == len(ref.traces) and 4 <= stats["num_traces"] <= 8
    assert stats["ended_by"] == ref.ended_by and stats["threshold"] == pytest.approx(ref.threshold)
    assert "traces" not in stats
    chunks = list(srv.client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, seed=5, stream=True,
        extra_body={"deepconf": {**opts, "include_traces": True}}))
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason][0]
    assert final.choices[0].delta.content == ref.answer
    assert [t["num_tokens"] for t in final.model_extra["deepconf"]["traces"]] == [t.num_tokens for t in ref.traces]


@pytest.mark.parametrize("extra, param", [
    ({"deepconf": {"budget": 0}}, "deepconf.budget"),
    ({"deepconf": {"budget": 4, "warmup": 8}}, "deepconf"),
    ({"deepconf": {"variant": "mid"}}, "deepconf.variant"),
    ({"deepconf": {"budget": 4, "warmup": 2}, "n": 2}, "n"),
])
def test_deepconf_bad_options_are_400s(srv, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert e.value.status_code == 400 and e.value.body["param"] == param


def test_api_key(srv):
    llm = LLM(str(srv.model_dir), dtype="float32", max_model_len=128, cache_memory=8 << 20, page_size=8)
    with BackgroundServer(build_app(llm, ServeConfig(served_model_name="tiny", api_key="sk-right"))) as bg:
        def client(key):
            return openai.OpenAI(base_url=bg.url + "/v1", api_key=key, max_retries=0)

        with pytest.raises(openai.AuthenticationError) as e:
            client("sk-wrong").completions.create(model="tiny", prompt="w1", max_tokens=2)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        ok = client("sk-right").completions.create(model="tiny", prompt="w1", max_tokens=2)
        assert ok.usage.completion_tokens >= 1
        import httpx

        no_key = httpx.post(bg.url + "/v1/chat/completions", json={"messages": MESSAGES})
        assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
        assert httpx.get(bg.url + "/health").status_code == 200  # probes need no key
        assert httpx.get(bg.url + "/v1/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
    # off by default: the module's server took "unused" and would take anything
    assert srv.client.with_options(api_key="anything").models.list().data

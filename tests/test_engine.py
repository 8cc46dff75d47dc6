"""The generation engine against transformers and against itself (batching, sharing, preemption)."""

import pytest
import torch

from h1r import LLM, SamplingParams
from h1r.engine import SamplingError
from tests.engine_fixtures import make_model_dir

KW = dict(dtype="float32", max_model_len=256, cache_memory=64 << 20, page_size=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), max_num_batched_tokens=48, **KW)


@pytest.fixture(scope="module")
def hf(model_dir):
    import transformers

    return transformers.FalconH1ForCausalLM.from_pretrained(str(model_dir)).float().eval()


def prompts(seed=0, lens=(5, 40, 17, 90, 3, 33)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 300, (n,), generator=g).tolist() for n in lens]


GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=5)


def test_greedy_batch_equals_alone_and_transformers(llm, hf):
    ps = prompts()
    outs = llm.generate(ps, GREEDY)
    for p, o in zip(ps, outs):
        got = o.outputs[0].token_ids
        assert got == llm.generate([p], GREEDY)[0].outputs[0].token_ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, pad_token_id=0)[0, len(p):]
        assert got == ref.tolist()
        assert o.outputs[0].finish_reason == "length"


def test_logprobs_equal_log_softmax_of_reference(llm, hf):
    p = prompts(1, (23,))[0]
    out = llm.generate([p], GREEDY)[0].outputs[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([p + out.token_ids])).logits[0, len(p) - 1:-1].float(), -1)
    lp = out.logprobs
    chosen = ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.from_numpy(lp.chosen), chosen, atol=1e-5, rtol=0)
    top, ids = ref.topk(5)
    torch.testing.assert_close(torch.from_numpy(lp.top), top, atol=1e-5, rtol=0)
    assert (torch.from_numpy(lp.top_ids).long() == ids).all()
    d = lp.as_dicts(out.token_ids)[0]
    assert out.token_ids[0] in d and len(d) == 5  # greedy: chosen is the top-1


def test_n16_prefills_the_prompt_once_and_seeds_reproduce(llm):
    p = prompts(2, (37,))[0]
    sp = SamplingParams(n=16, temperature=1.0, max_tokens=8, seed=7, ignore_eos=True)
    before = llm.engine.stats.prefill_tokens
    a = llm.generate([p], sp)[0]
    assert llm.engine.stats.prefill_tokens - before == len(p)  # one prefill for 16 samples
    assert len({tuple(o.token_ids) for o in a.outputs}) > 8
    b = llm.generate([p], sp)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    c = llm.generate([p], SamplingParams(n=16, temperature=1.0, max_tokens=8, seed=8, ignore_eos=True))[0]
    assert [o.token_ids for o in a.outputs] != [o.token_ids for o in c.outputs]


def test_identical_prompts_in_one_call_share_a_prefill(llm):
    p = prompts(3, (30,))[0]
    before = llm.engine.stats.prefill_tokens
    outs = llm.generate([p, p, p], SamplingParams(n=2, max_tokens=4, seed=1, ignore_eos=True))
    assert llm.engine.stats.prefill_tokens - before == len(p)
    assert all(len(o.outputs) == 2 for o in outs)


def test_sample_does_not_depend_on_batch_company(llm):
    ps = prompts(4)
    sp = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, seed=11, ignore_eos=True)
    alone = llm.generate([ps[2]], sp)[0].outputs[0].token_ids
    crowd = llm.generate(ps, [SamplingParams(temperature=1.0, max_tokens=15, ignore_eos=True)] * 2 + [sp] +
                         [SamplingParams(temperature=0.5, max_tokens=9, ignore_eos=True)] * 3)
    assert crowd[2].outputs[0].token_ids == alone


def test_stop_token_string_and_hook(llm, model_dir):
    p = prompts(5, (12,))[0]
    free = llm.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0].outputs[0]
    stop_tok = free.token_ids[5]
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_tok], ignore_eos=True))
    o = o[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop_tok and o.token_ids[-1] == stop_tok
    assert len(o.token_ids) == free.token_ids.index(stop_tok) + 1
    # a stop string cuts the text before it
    word = llm.tokenizer.decode([free.token_ids[4]])
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=30, stop=[word], ignore_eos=True))[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == word and word not in o.text

    seen = []

    def factory():
        def hook(ev):
            seen.append((ev.index, len(ev.topk_logprobs)))
            return ev.index == 3
        return hook
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_hook_factory=factory,
                                         hook_topk=7))[0].outputs[0]
    assert o.finish_reason == "hook" and len(o.token_ids) == 4 and seen == [(i, 7) for i in range(4)]


def test_everything_is_freed_after_preemption_abort_and_hooks(model_dir):
    llm = LLM(str(model_dir), dtype="float32", max_model_len=128, page_size=4, max_num_seqs=8,
              max_num_batched_tokens=32, cache_memory=240_000)  # ~90 pages: forces preemption
    eng = llm.engine
    ps = prompts(6, (20, 31, 9, 25, 14, 40, 7, 18))
    mk = lambda i: SamplingParams(n=2, temperature=1.0, max_tokens=40, seed=i, ignore_eos=True,
                                  stop_hook_factory=(lambda: (lambda ev: ev.index == 10)) if i % 3 == 0 else None)
    for i, p in enumerate(ps):
        eng.add_request(f"r{i}", p, mk(i))
    for _ in range(6):
        eng.step()
    eng.abort_request("r1")
    eng.abort_request("r5")
    while eng.has_unfinished():
        eng.step()
    u = eng.cache_usage()
    assert u["preemptions"] > 0
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]
    reasons = {o.finish_reason for r in (f"r{i}" for i in range(8)) for o in eng.get_output(r).outputs}
    assert reasons == {"abort", "hook", "length"}
    # a preempted and recomputed sequence gives the same greedy tokens as an undisturbed one
    big = LLM(str(model_dir), max_num_batched_tokens=64, **KW)
    g = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in llm.generate(ps, g)] == [o.outputs[0].token_ids for o in big.generate(ps, g)]


def test_single_sample_prompts_fill_the_token_budget_not_max_snapshots(model_dir):
    """A burst of one-sample requests is prefilled up to the token budget per step (each prompt's slot
    becomes its sequence's), while prompts held for several samples stay within max_snapshots and the
    generating sequences within max_num_seqs; greedy tokens are those of a one-at-a-time engine."""
    llm = LLM(str(model_dir), max_num_batched_tokens=400, max_num_seqs=12, max_snapshots=2, **KW)
    eng = llm.engine
    ps = prompts(9, (20,) * 16)
    g = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    for i, p in enumerate(ps):
        eng.add_request(f"s{i}", p, g)
    eng.step()
    assert eng.stats.prefill_tokens == 12 * 20  # max_num_seqs prompts in one step, not max_snapshots (2)
    most = 0
    while eng.has_unfinished():
        eng.step()
        most = max(most, len(eng.scheduler.running))
    assert most <= 12
    one = LLM(str(model_dir), max_num_batched_tokens=400, max_num_seqs=1, **KW)
    assert [eng.get_output(f"s{i}").outputs[0].token_ids for i in range(16)] == \
           [o.outputs[0].token_ids for o in one.generate(ps, g)]
    # prompts with several samples each are still prefilled at most max_snapshots at a time
    before = eng.stats.prefill_tokens
    for i, p in enumerate(prompts(10, (20,) * 5)):
        eng.add_request(f"m{i}", p, SamplingParams(n=3, max_tokens=4, seed=i, ignore_eos=True))
    eng.step()
    assert eng.stats.prefill_tokens - before == 2 * 20
    while eng.has_unfinished():
        eng.step()
        assert len(eng.scheduler.running) <= 12
    assert all(len(eng.get_output(f"m{i}").outputs) == 3 for i in range(5))
    u = eng.cache_usage()
    assert u["slots_free"] == u["slots_total"] and u["pages_free"] == u["pages_total"]


@pytest.mark.parametrize("kw,msg", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_p=0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-3), "top_k must be"),
    (dict(min_p=2), "min_p must be in"),
    (dict(n=0), "n must be an integer"),
    (dict(max_tokens=0), "max_tokens must be a positive integer"),
    (dict(logprobs=21), "logprobs must be an integer in"),
])
def test_bad_sampling_params(kw, msg):
    with pytest.raises(SamplingError, match=msg):
        SamplingParams(**kw)


def test_bad_requests(llm):
    with pytest.raises(SamplingError, match="exceeds the context length 256"):
        llm.generate([[11] * 200], SamplingParams(max_tokens=100))
    with pytest.raises(SamplingError, match="outside the vocabulary"):
        llm.generate([[11, 99999]], SamplingParams())
    with pytest.raises(SamplingError, match="stop token id 5000 is outside"):
        llm.generate([[11]], SamplingParams(stop_token_ids=[5000]))
    with pytest.raises(SamplingError, match="empty"):
        llm.generate([[]], SamplingParams())
    assert not llm.engine.has_unfinished() and not llm.engine.requests


def test_chat_uses_the_template(llm):
    out = llm.chat([{"role": "user", "content": "w1 w2 w3"}], SamplingParams(temperature=0, max_tokens=3,
                                                                            ignore_eos=True))[0]
    expect = llm.tokenizer.apply_chat_template([{"role": "user", "content": "w1 w2 w3"}], tokenize=True)
    assert out.prompt_token_ids == expect and len(out.outputs[0].token_ids) == 3


def test_update_weights_changes_outputs_in_memory(model_dir):
    from h1r.checkpoint import load_model

    llm = LLM(str(model_dir), max_num_batched_tokens=64, **KW)
    other = load_model(model_dir, dtype="float32")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    p = prompts(9, (15,))[0]
    before = llm.generate([p], GREEDY)[0].outputs[0].token_ids
    llm.update_weights(other.state_dict())
    after = llm.generate([p], GREEDY)[0].outputs[0].token_ids
    ref = LLM(other, llm.tokenizer, max_num_batched_tokens=64, **{k: v for k, v in KW.items() if k != "dtype"})
    assert after == ref.generate([p], GREEDY)[0].outputs[0].token_ids and after != before
    with pytest.raises(KeyError, match="unknown parameter"):
        llm.update_weights({"nope": torch.zeros(1)})


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_one_step_ahead_decode_matches_the_synchronous_loop(model_dir, mode):
    """Decode step t+1 launched before step t's tokens reach the host: same tokens, logprobs, stops,
    hooks and aborts as the plain loop, and every page and slot freed."""
    ref = LLM(str(model_dir), max_num_batched_tokens=48, async_decode=False, **KW)
    eng_llm = LLM(str(model_dir), max_num_batched_tokens=48, async_decode=(mode == "async"), **KW)
    ps = prompts(10)
    free = ref.generate([ps[0]], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    stop_tok = free.token_ids[6]
    mk = lambda: [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=2),
                  SamplingParams(temperature=0.8, max_tokens=15, seed=4, stop_token_ids=[stop_tok], ignore_eos=True),
                  SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=9, ignore_eos=True,
                                 stop_hook_factory=lambda: (lambda ev: ev.index == 4)),
                  SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
                  SamplingParams(temperature=0.5, max_tokens=25, seed=2, min_tokens=3),
                  SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)]
    a, b = ref.generate(ps, mk()), eng_llm.generate(ps, mk())
    for x, y in zip(a, b):
        for cx, cy in zip(x.outputs, y.outputs):
            assert cx.token_ids == cy.token_ids and cx.finish_reason == cy.finish_reason
            if cx.logprobs is not None:
                assert abs(cx.logprobs.chosen - cy.logprobs.chosen).max() < 1e-5  # batch shapes differ per step
    # abort while a step is in flight
    eng = eng_llm.engine
    eng.add_request("x", ps[1], SamplingParams(n=2, temperature=1.0, max_tokens=60, ignore_eos=True))
    for _ in range(8):
        eng.step()
    eng.abort_request("x")
    while eng.has_unfinished():
        eng.step()
    assert {o.finish_reason for o in eng.get_output("x").outputs} == {"abort"}
    u = eng.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]


def test_pinned_prompt_is_prefilled_once_across_requests(model_dir):
    llm = LLM(str(model_dir), max_num_batched_tokens=48, **KW)
    p = prompts(11, (21,))[0]
    key = llm.pin_prompt(p)
    before = llm.engine.stats.prefill_tokens
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=5, seed=1, ignore_eos=True)
    a = llm.generate([p], sp)[0]
    b = llm.generate([p], SamplingParams(n=2, temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert llm.engine.stats.prefill_tokens - before == len(p)  # two requests, one prefill
    unpinned = LLM(str(model_dir), max_num_batched_tokens=48, **KW)
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in unpinned.generate([p], sp)[0].outputs]
    assert b.outputs[0].token_ids == b.outputs[1].token_ids
    llm.unpin_prompt(key)
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 2), (3, 1)])
def test_paged_attention_references_read_each_query_heads_own_kv_group(hq, hkv):
    """The engine's PyTorch attention over pages (decode and chunked prefill with a cached prefix) equals
    plain per-head attention where query head h reads K/V head h // (hq/hkv)."""
    import torch.nn.functional as F

    from h1r.engine.context import paged_decode_attention, paged_prefill_attention

    g = torch.Generator().manual_seed(hq * 10 + hkv)
    P, page, hd = 12, 4, 8
    kp, vp = torch.randn(P, page, hkv, hd, generator=g), torch.randn(P, page, hkv, hd, generator=g)
    rep = lambda t: t.repeat_interleave(hq // hkv, dim=0)  # [hkv, L, hd] -> [hq, L, hd]

    table = torch.stack([torch.randperm(P, generator=g)[:5] for _ in range(3)])
    ctx = torch.tensor([1, 4, 17])  # one token, a page boundary, an odd length
    q = torch.randn(3, hq, hd, generator=g)
    out = paged_decode_attention(q, kp, vp, table, ctx, 0.3)
    for s in range(3):
        k = kp[table[s]].reshape(-1, hkv, hd)[:ctx[s]].transpose(0, 1)
        v = vp[table[s]].reshape(-1, hkv, hd)[:ctx[s]].transpose(0, 1)
        want = F.scaled_dot_product_attention(q[s][:, None], rep(k), rep(v), scale=0.3)[:, 0]
        torch.testing.assert_close(out[s], want, rtol=1e-5, atol=1e-6)

    pages, cached, T = table[0], 6, 7  # a chunk of 7 tokens after 6 cached ones
    q = torch.randn(T, hq, hd, generator=g)
    out = paged_prefill_attention(q, kp, vp, pages, cached, 0.3)
    k = kp[pages].reshape(-1, hkv, hd)[:cached + T].transpose(0, 1)
    v = vp[pages].reshape(-1, hkv, hd)[:cached + T].transpose(0, 1)
    mask = torch.arange(cached + T)[None, :] <= torch.arange(T)[:, None] + cached
    want = F.scaled_dot_product_attention(q.transpose(0, 1), rep(k), rep(v), attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, want.transpose(0, 1), rtol=1e-5, atol=1e-6)

"""The trainer's logprobs: a padded or packed batch gives each sequence's logprobs exactly as that
sequence alone; they match the rollout engine's processed logprobs at the sampling temperature (so the
importance ratio starts at 1); and weights pushed into the engine in memory change what it samples."""

import numpy as np
import pytest
import torch

from h1r.train.batching import collate
from h1r.train.grpo_batch import TrainSeq, collate_rl
from h1r.train.grpo_update import PolicyLogprobs


@pytest.fixture(scope="module")
def lm():
    from h1r.checkpoint import init_model
    from h1r.config import preset

    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=96, num_hidden_layers=2, mamba_chunk_size=8)  # chunk boundaries inside rows
    return init_model(cfg, seed=1).eval()


def _seq(rng, prompt_len, comp_len):
    ids = rng.integers(5, 96, size=prompt_len + comp_len)
    return TrainSeq(ids.astype(np.int64), prompt_len, np.zeros(comp_len, np.float32), 0.0, 0.0, 0.0, 0.0, False)


def _alone(module, s):
    b = collate([[(s.ids, s.start, len(s.ids), 1.0)]], 0, False)
    return module(b.input_ids, b.target_mask, b.attention_mask, b.reset)


@pytest.mark.parametrize("packed", [False, True])
@torch.no_grad()
def test_padded_or_packed_batch_equals_each_sequence_alone(lm, packed):
    module = PolicyLogprobs(lm, temperature=0.85)
    rng = np.random.default_rng(0)
    seqs = [_seq(rng, p, c) for p, c in [(5, 11), (9, 3), (3, 20), (12, 7)]]
    rows = [[seqs[0], seqs[1]], [seqs[2]], [seqs[3]]] if packed else [[s] for s in seqs]
    b = collate_rl(rows, pad_id=0, packed=packed)
    if packed:
        assert b.mb.reset is not None and b.mb.attention_mask is not None  # packed, and padded too
    logp, ent, raw = module(b.mb.input_ids, b.mb.target_mask, b.mb.attention_mask, b.mb.reset)
    order = [s for row in rows for s in row]
    alone = [_alone(module, s) for s in order]
    assert logp.shape[0] == sum(len(s.ids) - s.start for s in order) == b.advantages.shape[0]
    torch.testing.assert_close(logp, torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, torch.cat([a[1] for a in alone]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw, torch.cat([a[2] for a in alone]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logp, raw)  # temperature applied


@torch.no_grad()
def test_trainer_logprobs_match_engine_processed_logprobs_and_weights_sync(lm):
    import copy

    from h1r.engine.llm import LLM
    from h1r.engine.sampling_params import SamplingParams
    from h1r.train.grpo import engine_weights
    from h1r.train.distributed import DistInfo

    class Tok:  # the engine needs only stop ids from a tokenizer when prompts are token ids
        stop_token_ids = [2]

        def decode(self, ids, skip_special_tokens=False):
            return " ".join(map(str, ids))

    policy = copy.deepcopy(lm)
    module = PolicyLogprobs(policy, temperature=0.85)
    llm = LLM(copy.deepcopy(lm), Tok(), max_num_seqs=8, max_model_len=64, cache_memory=4 << 20)
    prompts = [[5, 17, 33, 8, 61], [9, 9, 40]]
    params = SamplingParams(n=3, temperature=0.85, max_tokens=12, logprobs=0, logprobs_mode="processed", seed=7,
                            ignore_eos=True)

    def check(outs):
        for prompt, o in zip(prompts, outs):
            for c in o.outputs:
                s = TrainSeq(np.asarray(prompt + list(c.token_ids)), len(prompt), c.logprobs.chosen, 0, 0, 0, 0, False)
                torch.testing.assert_close(_alone(module, s)[0], torch.from_numpy(c.logprobs.chosen),
                                           rtol=1e-4, atol=1e-4)

    before = llm.generate(prompts, params)
    check(before)
    for p in policy.parameters():  # a "training step"
        p.add_(torch.randn_like(p) * 0.05)
    llm.update_weights({k: v for k, v in engine_weights(module, DistInfo()).items()
                        if k in dict(llm.model.named_parameters())})
    after = llm.generate(prompts, params)
    check(after)  # the engine now samples from the updated policy
    assert [c.token_ids for o in before for c in o.outputs] != [c.token_ids for o in after for c in o.outputs]

"""Back-filling: zero-advantage groups are dropped and replaced, from the cache first, then from fresh
generation rounds; the cache stays within its size and evicts groups older than its age limit; its
state survives a checkpoint round trip."""

import numpy as np
import torch

from h1r.train.grpo_rollout import Group, Rollout, RolloutCache, collect_batch


def make_group(position: int, version: int, informative: bool) -> Group:
    rewards = [1.0, 0.0, 1.0, 0.0] if informative else [1.0] * 4
    rs = [Rollout([position, k], np.asarray([-0.5, -0.25], np.float32), "stop", r, r > 0)
          for k, r in enumerate(rewards)]
    return Group(position, position % 5, rs, version)


class FakeGenerator:
    """Groups whose positions are multiples of 3 have zero advantage."""

    def __init__(self, version=0):
        self.calls, self.version = [], version

    def __call__(self, positions):
        self.calls.append(list(positions))
        return [make_group(p, self.version, informative=p % 3 != 0) for p in positions]


def test_zero_advantage_groups_are_dropped_and_backfilled_then_surplus_cached():
    cache, gen = RolloutCache(capacity=10, max_age=2), FakeGenerator()
    c = collect_batch(cache, position=0, version=0, need=5, per_round=4, max_rounds=4, generate=gen)
    # round 1: 0..3 -> 1, 2 kept (0 and 3 have zero advantage); round 2: 4..7 -> 4, 5, 7 kept (6 dropped)
    assert gen.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [g.position for g in c.groups] == [1, 2, 4, 5, 7]
    assert all(g.informative for g in c.groups)
    assert c.position == 8 and c.rounds == 2 and c.cache_hits == 0 and len(c.generated) == 8
    assert len(cache) == 0  # nothing left over: round 2 had exactly 3 informative groups for 3 places

    gen2 = FakeGenerator(version=1)
    c = collect_batch(cache, 8, 1, need=2, per_round=4, max_rounds=4, generate=gen2)
    # 8..11 -> 8, 10, 11 informative (9 dropped): 2 used, 1 surplus cached
    assert [g.position for g in c.groups] == [8, 10] and [g.position for g in cache.groups] == [11]

    gen3 = FakeGenerator(version=2)
    c = collect_batch(cache, 12, 2, need=3, per_round=4, max_rounds=4, generate=gen3)
    assert c.cache_hits == 1 and c.groups[0].position == 11  # the cache is used first
    assert [g.position for g in c.groups] == [11, 13, 14] and gen3.calls == [[12, 13, 14, 15]]
    assert [g.position for g in cache.groups] == []  # 12 and 15 were multiples of 3


def test_cache_alone_can_fill_a_step_without_generation():
    cache = RolloutCache(capacity=8, max_age=3)
    cache.add([make_group(p, 0, True) for p in range(4)])
    gen = FakeGenerator()
    c = collect_batch(cache, 100, 1, need=3, per_round=4, max_rounds=4, generate=gen)
    assert gen.calls == [] and c.cache_hits == 3 and c.position == 100
    assert [g.position for g in c.groups] == [0, 1, 2] and len(cache) == 1  # oldest first


def test_cache_is_bounded_and_aged():
    cache = RolloutCache(capacity=3, max_age=2)
    assert cache.add([make_group(p, 0, True) for p in range(2)]) == 0
    assert cache.add([make_group(p, 1, True) for p in range(2, 5)]) == 2  # over capacity: oldest dropped
    assert [g.position for g in cache.groups] == [2, 3, 4]
    cache.add([make_group(5, 3, True)])
    assert [g.position for g in cache.groups] == [3, 4, 5]
    assert cache.evict_stale(version=3) == 0  # version 1 is 2 steps old: still allowed
    assert cache.evict_stale(version=4) == 2  # now 3 steps old: evicted
    assert [g.position for g in cache.groups] == [5]
    c = collect_batch(cache, 0, 6, need=1, per_round=1, max_rounds=1, generate=FakeGenerator(6))
    assert c.evicted == 1 and c.cache_hits == 0  # the stale entry is not served


def test_max_rounds_bounds_generation_and_disabled_cache_keeps_nothing():
    cache = RolloutCache(capacity=0, max_age=2)
    gen = FakeGenerator()
    c = collect_batch(cache, 0, 0, need=50, per_round=3, max_rounds=2, generate=gen)
    assert len(gen.calls) == 2 and len(c.groups) == 4  # a short batch rather than endless generation
    c = collect_batch(cache, 0, 0, need=1, per_round=6, max_rounds=2, generate=FakeGenerator())
    assert len(c.groups) == 1 and len(cache) == 0 and c.overflow == 3


def test_cache_state_round_trip_is_exact(tmp_path):
    cache = RolloutCache(capacity=4, max_age=2)
    g = make_group(7, 3, True)
    g.rollouts[0].logprobs = np.asarray([-1.2345678, -3e-8], np.float32)
    cache.add([g, make_group(8, 3, True)])
    torch.save(cache.state(), tmp_path / "c.pt")
    back = RolloutCache(4, 2)
    back.load_state(torch.load(tmp_path / "c.pt", weights_only=True))
    assert [(x.position, x.prompt_index, x.version) for x in back.groups] == [(7, 2, 3), (8, 3, 3)]
    for a, b in zip(cache.groups, back.groups):
        for ra, rb in zip(a.rollouts, b.rollouts):
            assert ra.token_ids == rb.token_ids and ra.reward == rb.reward and ra.correct == rb.correct
            assert ra.finish_reason == rb.finish_reason and np.array_equal(ra.logprobs, rb.logprobs)

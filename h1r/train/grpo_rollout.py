"""Rollouts: G samples per prompt from the engine, their rewards, and the back-filled batch.

Zero-advantage groups (every rollout got the same reward) teach nothing and are dropped. A step needs
`prompts_per_step` informative groups: it takes them first from a bounded cache of surplus groups
(oldest first; groups generated more than `rollout_cache_max_age` policy versions ago are evicted),
then generates rounds of fresh prompts until the batch is full (at most `max_generation_rounds`),
and puts what a round produced beyond the need into the cache (over capacity, the oldest go). The
recipe's "backfill" strategy with its bounded generation cache (part A.3.3).

Under torchrun each rank generates its share of a round's prompts with its own engine; the groups
are then gathered so that every rank holds the same batch, cache and plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from h1r.train.distributed import DistInfo


@dataclass
class Rollout:
    token_ids: list[int]  # completion, including the stop token when it stopped
    logprobs: np.ndarray  # float32 [len(token_ids)]: the engine's processed logprobs (at the temperature)
    finish_reason: str  # "stop" | "length" | ...
    reward: float
    correct: bool

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Group:
    position: int  # position in the prompt stream (unique per draw; seeds the sampling)
    prompt_index: int  # index into the prompt list
    rollouts: list[Rollout]
    version: int  # policy version (optimiser steps applied) that generated it

    @property
    def rewards(self) -> np.ndarray:
        return np.asarray([r.reward for r in self.rollouts], dtype=np.float64)

    @property
    def informative(self) -> bool:
        rw = self.rewards
        return bool((rw != rw[0]).any())

    def to_state(self) -> dict:
        return {"position": self.position, "prompt_index": self.prompt_index, "version": self.version,
                "rollouts": [{"token_ids": torch.tensor(r.token_ids, dtype=torch.int64),
                              "logprobs": torch.from_numpy(np.asarray(r.logprobs, dtype=np.float32)),
                              "finish_reason": r.finish_reason, "reward": r.reward, "correct": r.correct}
                             for r in self.rollouts]}

    @classmethod
    def from_state(cls, s: dict) -> "Group":
        return cls(s["position"], s["prompt_index"],
                   [Rollout(r["token_ids"].tolist(), r["logprobs"].numpy(), r["finish_reason"], float(r["reward"]),
                            bool(r["correct"])) for r in s["rollouts"]], s["version"])


def sampling_seed(seed: int, position: int, salt: str = "rollout") -> int:
    """A stable 62-bit seed per (run seed, stream position)."""
    return int.from_bytes(hashlib.sha256(f"h1r-grpo/{salt}/{seed}/{position}".encode()).digest()[:8], "big") >> 2


def score(texts: list[str], samples: list[dict], cfg) -> tuple[list[float], list[bool]]:
    """Total reward and correctness of each completion (rewards run in parallel, hostile-safe)."""
    from h1r.rewards.registry import compute_rewards

    totals, parts = compute_rewards(texts, samples, cfg.weights, cfg.reward_options())
    key = cfg.correctness_reward
    correct = [v >= 1.0 for v in parts[key]] if key else [t > 0 for t in totals]
    return [float(t) for t in totals], correct


def generate_groups(llm, prompts, indices: list[int], positions: list[int], cfg, version: int,
                    timers: dict | None = None) -> list[Group]:
    """G rollouts for each prompt index (rank-local), scored. `prompts`: the run's Prompt list;
    `timers["reward_s"]` accumulates the time spent on rewards."""
    import time

    from h1r.engine.sampling_params import SamplingParams

    if not indices:
        return []
    params = [SamplingParams(n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             max_tokens=cfg.max_completion_length, logprobs=0, logprobs_mode="processed",
                             seed=sampling_seed(cfg.seed, pos)) for pos in positions]
    outs = llm.generate([prompts[i].ids for i in indices], params)
    texts = [c.text for o in outs for c in o.outputs]
    samples = [prompts[i].row for i in indices for _ in range(cfg.num_generations)]
    t0 = time.perf_counter()
    rewards, correct = score(texts, samples, cfg)
    if timers is not None:
        timers["reward_s"] = timers.get("reward_s", 0.0) + time.perf_counter() - t0
    groups, k = [], 0
    for i, pos, o in zip(indices, positions, outs):
        rs = []
        for c in o.outputs:
            lp = np.asarray(c.logprobs.chosen, dtype=np.float32)
            if len(lp) != len(c.token_ids):
                raise RuntimeError(f"engine returned {len(lp)} logprobs for {len(c.token_ids)} tokens")
            rs.append(Rollout(list(c.token_ids), lp, c.finish_reason or "length", rewards[k], correct[k]))
            k += 1
        groups.append(Group(pos, i, rs, version))
    return groups


def gather_groups(local: list[Group], info: DistInfo) -> list[Group]:
    """Every rank's groups, in global order (rank r generated positions r, r+W, ...)."""
    if not info.distributed:
        return local
    box: list = [None] * info.world_size
    dist.all_gather_object(box, [g.to_state() for g in local])
    per_rank = [[Group.from_state(s) for s in states] for states in box]
    out = []
    for j in range(max(len(x) for x in per_rank)):
        out.extend(x[j] for x in per_rank if j < len(x))
    return out


class RolloutCache:
    """Surplus informative groups, bounded in size and in age (policy versions)."""

    def __init__(self, capacity: int, max_age: int):
        self.capacity, self.max_age = capacity, max_age
        self.groups: list[Group] = []  # oldest first

    def __len__(self) -> int:
        return len(self.groups)

    def evict_stale(self, version: int) -> int:
        keep = [g for g in self.groups if version - g.version <= self.max_age]
        evicted = len(self.groups) - len(keep)
        self.groups = keep
        return evicted

    def take(self, k: int) -> list[Group]:
        out, self.groups = self.groups[:k], self.groups[k:]
        return out

    def add(self, groups: list[Group]) -> int:
        """-> how many (oldest) groups fell out because of the capacity."""
        self.groups.extend(groups)
        over = max(0, len(self.groups) - self.capacity)
        self.groups = self.groups[over:]
        return over

    def state(self) -> dict:
        return {"capacity": self.capacity, "max_age": self.max_age, "groups": [g.to_state() for g in self.groups]}

    def load_state(self, s: dict) -> None:
        self.groups = [Group.from_state(g) for g in s["groups"]]


@dataclass
class Collected:
    groups: list[Group]  # the step's informative groups (cached ones first)
    position: int  # the stream position after this step
    generated: list[Group] = field(default_factory=list)  # every group generated this step
    cache_hits: int = 0
    rounds: int = 0
    evicted: int = 0  # stale cache entries dropped
    overflow: int = 0  # cache entries dropped for room


def collect_batch(cache: RolloutCache, position: int, version: int, need: int, per_round: int, max_rounds: int,
                  generate: Callable[[list[int]], list[Group]]) -> Collected:
    """Fill a batch of `need` informative groups: cache first, then generation rounds of `per_round`
    fresh stream positions (`generate(positions)` -> their groups)."""
    evicted = cache.evict_stale(version)
    got = cache.take(need)
    c = Collected(got, position, cache_hits=len(got), evicted=evicted)
    while len(c.groups) < need and c.rounds < max_rounds:
        positions = list(range(c.position, c.position + per_round))
        c.position += per_round
        c.rounds += 1
        fresh = generate(positions)
        c.generated.extend(fresh)
        useful = [g for g in fresh if g.informative]
        room = need - len(c.groups)
        c.groups.extend(useful[:room])
        c.overflow += cache.add(useful[room:])
    return c

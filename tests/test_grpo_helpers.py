"""Shared builders for the GRPO tests: a tiny random policy, prompt rows, a config, and a test-only
reward ("parity") that gives a random model's rollouts varied rewards, so groups carry signal.
(No tests here; imported by tests/test_grpo_*.py. Importing it registers the reward.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

from h1r.rewards.registry import list_rewards, register_reward
from tests.test_sft_helpers import WORDS, make_model_dir  # noqa: F401  (re-exported)

if "parity" not in list_rewards():
    @register_reward("parity")
    def parity_reward(responses, samples, **_):
        """1.0 when the response has an even number of characters: a coin flip for a random model."""
        return [float(len(r) % 2 == 0) for r in responses]


def make_prompt_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"p{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
             "answer": str(rng.randint(0, 19)), "difficulty": rng.choice(["easy", "medium", "hard"])}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_dict(model: Path, data: Path, out: Path, **over) -> dict:
    """A run that takes seconds on the 2-layer tiny model: 4 prompts x 4 rollouts of <= 6 tokens."""
    cfg = dict(model=str(model), data=[str(data)], output_dir=str(out), reward_funcs=["parity"],
               num_generations=4, max_completion_length=6, max_prompt_length=48, prompts_per_step=4,
               generation_batch_size=24, rollout_cache_size=4, rollout_cache_max_age=1, learning_rate=3e-3,
               warmup_steps=1, max_steps=4, per_device_train_batch_size=8, engine_max_num_seqs=32,
               engine_cache_memory=8 << 20, cpu_threads=1, progress=False, tensorboard=False, seed=3)
    cfg.update(over)
    return cfg

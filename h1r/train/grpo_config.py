"""GRPOConfig: every knob of `h1r grpo`, loadable from YAML/TOML/JSON plus `--key value` overrides.

Names follow TRL's `GRPOConfig` wherever the concept is the same (num_generations, temperature, top_p,
top_k, max_prompt_length, max_completion_length, learning_rate, lr_scheduler_type, warmup_steps,
max_grad_norm, beta, epsilon, epsilon_high, scale_rewards, loss_type, mask_truncated_completions,
num_iterations, per_device_train_batch_size, generation_batch_size, reward_funcs, reward_weights,
max_steps, seed), so settings carry over. Differences that matter:
- `prompts_per_step` (no TRL equivalent): groups per optimiser step *after* zero-advantage groups are
  dropped and back-filled (recipe: 128 prompts x 16 rollouts, one optimiser step per rollout batch).
- `generation_batch_size` counts completions, as in TRL, but is one generation *round*; a step runs as
  many rounds as back-filling needs (at most `max_generation_rounds`).
- importance sampling: `importance_sampling_correction` / `importance_sampling_cap` are TRL's
  `vllm_importance_sampling_correction` with mode `token_truncate` (per-token min(ratio, cap)), cap 2 as
  in the recipe (TRL's default cap is 3).
- `loss_type`: "grpo" (per-sequence token mean, then mean over sequences), "dapo" = "bnpo" (token mean
  over the whole global batch: every micro-batch, every rank, so results do not depend on the split),
  "dr_grpo" (token sum / (sequences x max_completion_length)).
- Trainer plumbing (save_every, keep_last, resume, log_every, device, dtype, cpu_threads, ...) uses the
  names of `h1r sft` (h1r.train.config.SFTConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from h1r.errors import ConfigError, DataError
from h1r.train.config import check_activation_checkpointing

# keys that define the prompt stream, the rollouts and the schedule: a resumed run must use the same
RESUME_MUST_MATCH = (
    "model", "data", "domains", "max_prompt_length", "difficulty_filter", "filter_num_samples",
    "filter_temperature", "filter_top_p", "filter_max_tokens", "filter_keep_unsolved", "filter_keep_truncated",
    "filter_consistent_wrong", "curriculum_order", "num_generations", "temperature", "top_p", "top_k",
    "max_completion_length", "prompts_per_step", "generation_batch_size", "max_generation_rounds",
    "rollout_cache_size", "rollout_cache_max_age", "reward_funcs", "reward_weights", "format_penalty",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "min_lr_ratio", "weight_decay", "beta", "epsilon",
    "epsilon_high", "scale_rewards", "loss_type", "mask_truncated_completions", "importance_sampling_correction",
    "importance_sampling_cap", "nll_coef", "entropy_coef", "num_iterations", "max_steps", "seed")

CORRECTNESS_REWARDS = ("math", "correct", "choice", "code")  # the first of these in reward_funcs = accuracy


@dataclass
class GRPOConfig:
    # ---- what to train, on what, where to write ------------------------------------------------
    model: str = ""  # starting policy (HF layout with tokenizer + chat template), e.g. the SFT output; required
    data: list[str] = field(default_factory=list)  # prompt JSONL: "messages" (ending with the user turn) or
    #                                                "prompt", plus the gold "answer"; required
    output_dir: str = ""  # run directory: checkpoints/, final/, metrics.jsonl, tb/, curriculum.jsonl; required
    eval_data: str | None = None  # held-out prompt JSONL, evaluated greedily every `eval_every` steps
    # ---- curriculum --------------------------------------------------------------------------------
    domains: list[str] = field(default_factory=lambda: ["math"])  # row "kind" values kept (missing = math)
    max_prompt_length: int = 512  # prompts with more tokens are dropped (counted in the data log)
    difficulty_filter: bool = False  # filter `data` against the starting model first (h1r.train.grpo_filter)
    filter_num_samples: int = 8
    filter_temperature: float = 0.6
    filter_top_p: float = 0.95
    filter_max_tokens: int | None = None  # default: max_completion_length
    filter_keep_unsolved: float = 0.1  # share of 0/k problems kept (when no wrong answer dominates)
    filter_keep_truncated: float = 0.1  # share of 0/k problems kept whose every sample hit max_tokens
    filter_consistent_wrong: int = 4  # drop 0/k problems whose most common wrong answer appears >= this often
    curriculum_order: Literal["shuffle", "easy_to_hard", "hard_to_easy", "file"] = "shuffle"
    # ---- rollouts ----------------------------------------------------------------------------------
    num_generations: int = 16  # G: rollouts per prompt
    temperature: float = 0.85
    top_p: float = 1.0  # < 1 biases the importance-sampling ratio (trl#6789): keep 1.0 with IS correction
    top_k: int = 0
    max_completion_length: int = 512
    prompts_per_step: int = 128  # groups per optimiser step, after dropping zero-advantage groups
    generation_batch_size: int | None = None  # completions per generation round (default prompts_per_step*G)
    max_generation_rounds: int = 4  # rounds per step before training on a short batch
    rollout_cache_size: int | None = None  # surplus informative groups kept for later steps (default
    #                                        prompts_per_step; 0 disables the cache)
    rollout_cache_max_age: int = 2  # evict cached groups generated more than this many policy versions ago
    engine_max_num_seqs: int = 256  # sequences the rollout engine decodes at once (per rank)
    engine_max_num_batched_tokens: int = 4096
    engine_cache_memory: int | None = None  # bytes of K/V pages + state slots (None: sized automatically)
    engine_gpu_memory_utilization: float = 0.3  # share of free GPU memory the engine's cache may take when
    #                                             engine_cache_memory is None (TRL's vllm_gpu_memory_utilization)
    # ---- rewards -----------------------------------------------------------------------------------
    reward_funcs: list[str] = field(default_factory=lambda: ["math", "format"])  # h1r.rewards.registry names
    reward_weights: list[float] | None = None  # one per reward (default all 1.0)
    format_penalty: float = 0.5  # the "format" reward: -format_penalty for output breaking
    #                              `<think> ... </think> answer` or lacking \boxed{}
    reward_timeout: float = 5.0  # seconds per math-verify check (a hostile answer scores 0)
    # ---- objective ---------------------------------------------------------------------------------
    learning_rate: float = 2e-6  # recipe value for the 7B model
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 10  # linear warmup (recipe: 10 steps)
    min_lr_ratio: float = 0.0  # linear/cosine decay ends at learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    beta: float = 0.0  # k3 KL coefficient; 0 = no reference model is loaded at all
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = 0.28  # upper clip (clip-higher); None = epsilon
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divide advantages by the group/batch std
    loss_type: Literal["grpo", "dapo", "bnpo", "dr_grpo"] = "dapo"
    mask_truncated_completions: bool = False  # completions that hit max_completion_length get no loss
    importance_sampling_correction: bool = True  # weight tokens by min(pi_train / pi_rollout, cap)
    importance_sampling_cap: float = 2.0
    nll_coef: float = 0.0  # auxiliary NLL (token mean) on correct completions; 0 = off
    entropy_coef: float = 0.0  # entropy bonus (aggregated like the loss); the recipe uses none
    num_iterations: int = 1  # mu: optimiser steps on each batch of rollouts
    per_device_train_batch_size: int = 16  # rows per forward/backward on each rank
    pack: bool = False  # pack several sequences per row (state and attention reset at boundaries)
    # ---- run ---------------------------------------------------------------------------------------
    max_steps: int = 100
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # compute dtype of the trainer (autocast)
    # recompute decoder layers in the backward: true for all, a fraction in (0, 1] for that share, evenly spread
    activation_checkpointing: bool | float = False
    cpu_threads: int | None = None  # torch.set_num_threads on CPU (bit-exact resume needs the same value)
    eval_every: int = 0  # steps between held-out evaluations (0: only when eval_data is set, at start and end)
    eval_max_problems: int | None = None  # evaluate on the first N problems of eval_data
    save_every: int = 0  # steps between training checkpoints (0: none)
    keep_last: int = 2
    resume: bool = False
    save_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def prompts_per_round(self) -> int:
        n = self.generation_batch_size or self.prompts_per_step * self.num_generations
        return n // self.num_generations

    @property
    def cache_size(self) -> int:
        return self.prompts_per_step if self.rollout_cache_size is None else self.rollout_cache_size

    @property
    def weights(self) -> dict[str, float]:
        w = self.reward_weights or [1.0] * len(self.reward_funcs)
        return dict(zip(self.reward_funcs, w))

    def validate(self) -> None:
        from h1r.rewards.registry import get_reward

        check_activation_checkpointing(self.activation_checkpointing)
        if isinstance(self.data, str):
            self.data = [self.data]
        for name in ("model", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if not self.data:
            raise ConfigError("data is required (one or more prompt JSONL files)")
        if not Path(self.model).is_dir():
            raise ConfigError(f"model: {self.model} is not a directory")
        for path in self.data:
            if not Path(path).is_file():
                raise DataError(f"{path}: no such data file")
        for name in ("num_generations",):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} must be >= 2 (group advantages need two rollouts), "
                                  f"got {getattr(self, name)}")
        for name in ("max_prompt_length", "max_completion_length", "prompts_per_step", "max_generation_rounds",
                     "engine_max_num_seqs", "engine_max_num_batched_tokens", "num_iterations",
                     "per_device_train_batch_size", "max_steps", "log_every", "keep_last", "filter_num_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every", "rollout_cache_max_age", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rollout_cache_size is not None and self.rollout_cache_size < 0:
            raise ConfigError(f"rollout_cache_size must be >= 0, got {self.rollout_cache_size}")
        if self.generation_batch_size is not None and (
                self.generation_batch_size < self.num_generations or self.generation_batch_size % self.num_generations):
            raise ConfigError(f"generation_batch_size ({self.generation_batch_size}) must be a positive multiple of "
                              f"num_generations ({self.num_generations})")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 for rollouts, got {self.temperature}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("need 0 < top_p <= 1 and top_k >= 0")
        if not 0 <= self.epsilon < 1 or self.clip_high < 0:
            raise ConfigError(f"need 0 <= epsilon < 1 and epsilon_high >= 0, got {self.epsilon}, {self.epsilon_high}")
        if self.beta < 0 or self.nll_coef < 0 or self.entropy_coef < 0:
            raise ConfigError("beta, nll_coef and entropy_coef must be >= 0")
        if not 0 < self.engine_gpu_memory_utilization <= 1:
            raise ConfigError(f"engine_gpu_memory_utilization must be in (0, 1], "
                              f"got {self.engine_gpu_memory_utilization}")
        if self.importance_sampling_cap < 1:
            raise ConfigError(f"importance_sampling_cap must be >= 1, got {self.importance_sampling_cap}")
        if self.learning_rate <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("need learning_rate > 0 and 0 <= min_lr_ratio <= 1")
        for name in ("filter_keep_unsolved", "filter_keep_truncated"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.filter_temperature or not 0 < self.filter_top_p <= 1:
            raise ConfigError("need filter_temperature > 0 and 0 < filter_top_p <= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if not self.reward_funcs:
            raise ConfigError("reward_funcs is empty")
        for name in self.reward_funcs:
            get_reward(name)  # ConfigError naming the unknown reward
        if len(set(self.reward_funcs)) != len(self.reward_funcs):
            raise ConfigError(f"reward_funcs has duplicates: {self.reward_funcs}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values for "
                              f"{len(self.reward_funcs)} reward_funcs")
        if self.eval_data is not None and not Path(self.eval_data).is_file():
            raise ConfigError(f"eval_data: {self.eval_data} does not exist")

    def reward_options(self) -> dict[str, dict]:
        return {"math": {"timeout": self.reward_timeout}, "correct": {"timeout": self.reward_timeout},
                "format": {"penalty": self.format_penalty}}

    @property
    def correctness_reward(self) -> str | None:
        return next((r for r in self.reward_funcs if r in CORRECTNESS_REWARDS), None)

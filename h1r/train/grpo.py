"""GRPO with verifiable rewards (recipe part A.3): `train(cfg) -> path of the final HF model`.

One step: a batch of `prompts_per_step` informative groups (cache, then fresh rounds of G rollouts
from the H1R engine, rewards, zero-advantage groups dropped: h1r.train.grpo_rollout), group
advantages, the clipped surrogate with clip-higher and truncated importance weights (no KL and no
reference model unless beta > 0), `num_iterations` optimiser steps (h1r.train.grpo_update), then the
new weights are copied into the engine in memory (`LLM.update_weights`, which resets its caches).

Runs as one process or under `torchrun` (FSDP2): each rank holds a full copy of the policy in its own
engine and generates its share of each round; the groups are gathered so every rank plans the same
batch. Checkpoints (h1r.train.checkpointing) hold the model, optimiser, scheduler, RNG, the prompt
stream position and the rollout cache, so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from h1r.errors import CheckpointError, ConfigError
from h1r.train.checkpointing import CheckpointManager, export_hf_model
from h1r.train.common import compute_autocast, load_base_model, seed_everything, trim_metrics
from h1r.train.distributed import DistInfo, init_distributed, shard_model, shutdown_distributed
from h1r.train.grpo_batch import build_sequences, rank_batches
from h1r.train.grpo_config import RESUME_MUST_MATCH, GRPOConfig
from h1r.train.grpo_data import PromptStream, fingerprint, load_prompts
from h1r.train.grpo_eval import evaluate, rollout_stats
from h1r.train.grpo_rollout import RolloutCache, collect_batch, gather_groups, generate_groups
from h1r.train.grpo_update import PolicyLogprobs, policy_update
from h1r.train.optim import build_adamw, build_scheduler
from h1r.utils.config import to_dict

__all__ = ["GRPOConfig", "train"]


def _say(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(f"[h1r grpo] {msg}", file=sys.stderr, flush=True)


def train(cfg: GRPOConfig) -> Path:
    """Run GRPO to max_steps (or continue it with cfg.resume) and return the final model directory."""
    cfg.validate()
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        if owns_group:
            shutdown_distributed()


def engine_weights(module, info: DistInfo) -> dict:
    """The policy's full weights, on every rank (names as in the checkpoint), to copy into the engine."""
    if info.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    else:
        sd = module.state_dict()
    return {k[3:]: v for k, v in sd.items() if k.startswith("lm.")}


def sync_engine(llm, module, info: DistInfo) -> None:
    params = dict(llm.model.named_parameters())
    llm.update_weights({k: v for k, v in engine_weights(module, info).items() if k in params})


def build_engine(lm, tokenizer, cfg: GRPOConfig, info: DistInfo, dtype: torch.dtype):
    from h1r.engine.llm import LLM

    engine_lm = copy.deepcopy(lm).to(device=info.device, dtype=dtype).eval().requires_grad_(False)
    max_new = max(cfg.max_completion_length, cfg.filter_max_tokens or 0)
    return LLM(engine_lm, tokenizer, max_num_seqs=cfg.engine_max_num_seqs,
               max_model_len=cfg.max_prompt_length + max_new,
               max_num_batched_tokens=cfg.engine_max_num_batched_tokens, cache_memory=cfg.engine_cache_memory,
               gpu_memory_utilization=cfg.engine_gpu_memory_utilization, seed=cfg.seed)


def check_resume(state: dict, cfg: GRPOConfig, data_fp: str, path: Path) -> None:
    saved, now = state.get("config", {}), to_dict(cfg)
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume from {path}: these settings differ from the checkpoint's ({detail})")
    if state.get("data_fingerprint") != data_fp:
        raise CheckpointError(f"cannot resume from {path}: the training prompts changed since it was written")


class GRPORun:
    """What one run holds: the engine, the policy (sharded under torchrun), the optimiser and schedule,
    the prompts and their stream, the rollout cache and the stream position."""

    def __init__(self, cfg: GRPOConfig, info: DistInfo):
        from h1r.tokenizer import load_tokenizer

        self.cfg, self.info = cfg, info
        self.ckpts = CheckpointManager(Path(cfg.output_dir) / "checkpoints", info, cfg.keep_last)
        self.latest = self.ckpts.latest()
        if self.latest is not None and not cfg.resume:
            raise ConfigError(f"{cfg.output_dir} already holds training checkpoints ({self.latest.name}); pass "
                              "--resume to continue that run, or choose a new output_dir")
        self.tokenizer = tok = load_tokenizer(cfg.model)
        self.lm = lm = load_base_model(cfg.model)
        if tok.vocab_size > lm.config.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                              f"{lm.config.vocab_size}")
        self.autocast = compute_autocast(cfg.dtype, info.device)
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and info.device.type == "cuda")
        self.llm = build_engine(lm, tok, cfg, info, torch.bfloat16 if bf16 else torch.float32)
        self._load_prompts()
        self._build_trainer()
        self.cache = RolloutCache(cfg.cache_size, cfg.rollout_cache_max_age)
        self.run_state = {"config": to_dict(cfg), "data_fingerprint": fingerprint(self.prompts)}
        self.position = 0
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.timers = {"reward_s": 0.0}

    def _load_prompts(self) -> None:
        from h1r.train.grpo_filter import curriculum_path, run_filter

        cfg, info = self.cfg, self.info
        data = list(cfg.data)
        if cfg.difficulty_filter:
            path = curriculum_path(cfg)
            if not (cfg.resume and path.is_file()):
                _say(info, f"difficulty filter: {cfg.filter_num_samples} samples per problem against {cfg.model}")
                run_filter(cfg, self.llm, self.tokenizer, info)
            data = [str(path)]
        self.prompts, stats = load_prompts(data, self.tokenizer, cfg.domains, cfg.max_prompt_length)
        _say(info, "prompts: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
        self.eval_prompts = []
        if cfg.eval_data:
            ev = load_prompts([cfg.eval_data], self.tokenizer, cfg.domains, cfg.max_prompt_length)[0]
            self.eval_prompts = ev[:cfg.eval_max_problems] if cfg.eval_max_problems else ev
        self.stream = PromptStream(self.prompts, cfg.curriculum_order, cfg.seed)

    def _build_trainer(self) -> None:
        cfg, info, lm = self.cfg, self.info, self.lm
        lm.set_activation_checkpointing(cfg.activation_checkpointing)
        lm.train()
        self.module = shard_model(PolicyLogprobs(lm.to(info.device), cfg.temperature, cfg.entropy_coef > 0),
                                  lm.model.layers, info)
        self.ref_module = None
        if cfg.beta > 0:  # only then is a reference model loaded at all
            ref = load_base_model(cfg.model).to(info.device).eval().requires_grad_(False)
            self.ref_module = shard_model(PolicyLogprobs(ref, cfg.temperature), ref.model.layers, info)
        self.optimizer = build_adamw(self.module, cfg.learning_rate, cfg.weight_decay,
                                     (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon)
        mu = cfg.num_iterations
        self.scheduler = build_scheduler(self.optimizer, cfg.max_steps * mu, cfg.warmup_steps * mu,
                                         cfg.lr_scheduler_type, cfg.min_lr_ratio)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def resume(self) -> int:
        """-> the step to start from (0 for a fresh run)."""
        cfg, info, latest = self.cfg, self.info, self.latest
        if not cfg.resume:
            return 0
        if latest is None:
            _say(info, "resume: no checkpoint found, starting from scratch")
            return 0
        saved = self.ckpts.load(latest, self.module, self.optimizer, self.scheduler)
        check_resume(saved, cfg, self.run_state["data_fingerprint"], latest)
        self.position = int(saved["position"])
        cache_state = self.ckpts.load_extra(latest, "rollout_cache")
        if cache_state is not None:
            self.cache.load_state(cache_state)
        sync_engine(self.llm, self.module, info)
        _say(info, f"resumed from {latest} (step {saved['step']}/{cfg.max_steps}, {len(self.cache)} cached groups)")
        return int(saved["step"])

    def save(self, done: int) -> None:
        state = {**self.run_state, "position": self.position}
        self.ckpts.save(done, self.module, self.optimizer, self.scheduler, state,
                        extras={"rollout_cache": self.cache.state()})

    def export(self) -> Path:
        from h1r.checkpoint import resolve_dtype

        out = Path(self.cfg.output_dir) / "final"
        save_dtype = None if self.cfg.save_dtype == "auto" else self.cfg.save_dtype
        final = export_hf_model(self.module, self.lm.config, self.info, out, copy_files_from=self.cfg.model,
                                dtype=resolve_dtype(save_dtype or self.lm.config.torch_dtype))
        return final if final is not None else out

    # ---- one step ------------------------------------------------------------------------------------
    def generate(self, positions: list[int], version: int):
        """This rank's share of a round (engine + rewards), then everyone's groups."""
        mine = positions[self.info.rank::self.info.world_size]
        local = generate_groups(self.llm, self.prompts, [self.stream.take(p, 1)[0] for p in mine], mine, self.cfg,
                                version, self.timers)
        return gather_groups(local, self.info)

    def step(self, step: int) -> dict:
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        self.timers["reward_s"] = 0.0
        got = collect_batch(self.cache, self.position, step, cfg.prompts_per_step, cfg.prompts_per_round,
                            cfg.max_generation_rounds, lambda pos: self.generate(pos, step))
        self.position = got.position
        t1 = time.perf_counter()
        seqs, bstats = build_sequences(got.groups, self.prompts, cfg)
        m = policy_update(self.module, self.ref_module, rank_batches(seqs, cfg, info, self.pad_id), self.optimizer,
                          self.scheduler, cfg, info, self.autocast)
        sync_engine(self.llm, self.module, info)  # in memory; resets the engine's caches
        t2 = time.perf_counter()
        n_gen = len(got.generated)
        m.update(rollout_stats(got.generated, ""), **rollout_stats(got.groups, "batch_"),
                 groups=len(got.groups), generated_groups=n_gen, generation_rounds=got.rounds,
                 kept_group_share=(sum(g.informative for g in got.generated) / n_gen) if n_gen else float("nan"),
                 cache_hits=got.cache_hits, cache_size=len(self.cache), cache_evicted=got.evicted,
                 cache_overflow=got.overflow, masked_truncated=bstats["masked_truncated"], rollout_time_s=t1 - t0,
                 reward_time_s=self.timers["reward_s"], train_time_s=t2 - t1, step_time_s=t2 - t0,
                 prompts_seen=self.position)
        return m

    def evaluate(self) -> dict:
        return evaluate(self.llm, self.eval_prompts, self.cfg, self.info)


def _train(cfg: GRPOConfig, info: DistInfo) -> Path:
    from tqdm import tqdm

    from h1r.utils.metrics import MetricsLogger

    seed_everything(cfg.seed)
    if cfg.cpu_threads is not None and info.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    out = Path(cfg.output_dir)
    run = GRPORun(cfg, info)
    start = run.resume()
    logger = None
    if info.is_main:
        trim_metrics(out / "metrics.jsonl", start)
        logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
    step_sleep = float(os.environ.get("H1R_DEBUG_STEP_SLEEP", "0") or 0)  # tests: time to kill a run
    if run.eval_prompts and start == 0:
        m = run.evaluate()
        if logger is not None:
            logger.log(0, **m)
        _say(info, f"eval before training: accuracy {m['eval_accuracy']:.3f}, length {m['eval_response_length']:.1f}")
    bar = tqdm(total=cfg.max_steps, initial=start, desc="grpo", disable=not (info.is_main and cfg.progress),
               dynamic_ncols=True)
    try:
        for step in range(start, cfg.max_steps):
            m = run.step(step)
            done = step + 1
            if run.eval_prompts and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
                m.update(run.evaluate())
            if logger is not None and (done % cfg.log_every == 0 or done == cfg.max_steps or "eval_accuracy" in m):
                logger.log(done, **m)
            post = dict(reward=f"{m.get('reward', float('nan')):.3f}", acc=f"{m.get('accuracy', float('nan')):.2f}",
                        kept=f"{m['kept_group_share']:.2f}", hits=int(m["cache_hits"]))
            if "eval_accuracy" in m:
                post["eval"] = f"{m['eval_accuracy']:.3f}"
            bar.set_postfix(post)
            bar.update(1)
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.max_steps:
                run.save(done)
            if step_sleep:
                time.sleep(step_sleep)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    final = run.export()
    _say(info, f"wrote {final}")
    return final

"""Cold-start SFT (recipe part A.2): `train(cfg) -> path of the final HF model`.

One optimiser step = one global batch of `batch_size` examples from the weighted stream, packed (or
padded) into rows, dealt to the ranks, run as micro-batches with the global token-mean loss, then
clipped AdamW. Runs as one process or under `torchrun` (FSDP2; NCCL on GPUs, gloo on CPUs); every
rank computes the same batch plan, so results do not depend on how the batch is split.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from h1r.errors import CheckpointError, ConfigError
from h1r.train.batching import DataStream, collate, plan_rows, rank_micro_batches
from h1r.train.checkpointing import CheckpointManager, export_hf_model
from h1r.train.common import compute_autocast, half_dtype, load_base_model, seed_everything, trim_metrics
from h1r.train.config import RESUME_MUST_MATCH, SFTConfig
from h1r.train.data import fingerprint, load_sft_examples
from h1r.train.distributed import (DistInfo, all_reduce_sum, init_distributed, local_grad_norm_to_float,
                                   shard_model, shutdown_distributed)
from h1r.train.graphed_step import GraphedMicroStep, check_supported
from h1r.train.loss import TokenNLL, global_token_mean
from h1r.train.optim import build_adamw, build_scheduler
from h1r.train.weighting import token_weight
from h1r.utils.config import to_dict


def _say(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(f"[h1r sft] {msg}", file=sys.stderr, flush=True)


def check_resume(state: dict, cfg: SFTConfig, data_fp: str, stream_digest: str, path: Path) -> None:
    saved, now = state.get("config", {}), to_dict(cfg)
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume from {path}: these settings differ from the checkpoint's ({detail})")
    if state.get("data_fingerprint") != data_fp or state.get("stream_digest") != stream_digest:
        raise CheckpointError(f"cannot resume from {path}: the training data changed since it was written")


def step_batches(examples, items, token_weights, cfg: SFTConfig, info: DistInfo, pad_id: int):
    """This rank's micro-batches of the global batch `items` (indices into `examples`)."""
    rows = plan_rows([len(examples[i].input_ids) for i in items], cfg.pack, cfg.max_seq_len)

    def doc(j):
        e = examples[items[j]]
        return e.input_ids, e.sup_start, e.sup_end, token_weights[items[j]]

    micro = rank_micro_batches(rows, info.rank, info.world_size, cfg.micro_batch_size)
    return [collate([[doc(j) for j in row] for row in mb], pad_id, cfg.pack) for mb in micro]


def optimizer_step(module, batches, optimizer, scheduler, info: DistInfo, autocast, use_weights: bool,
                   clip: float, micro_step: GraphedMicroStep | None = None) -> dict:
    """Accumulate the global token-mean loss over this rank's micro-batches, clip, step. -> metrics.
    micro_step: run each micro-batch through it (fixed shapes, a CUDA graph) instead of the plain path."""
    n_sup, n_tok = all_reduce_sum([sum(b.n_supervised for b in batches), sum(b.n_tokens for b in batches)], info)
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    for b in batches:
        if micro_step is not None:
            loss, nll = micro_step(b, info.world_size / max(float(n_sup), 1.0))
            loss_sum += loss.double()
            nll_sum += nll.double()
            continue
        b = b.to(info.device)
        with autocast:
            nll = module(b.input_ids, b.target_mask, b.attention_mask, b.reset)  # [n]
        w = b.token_weight[:, 1:][b.target_mask[:, 1:]] if use_weights else None
        loss = global_token_mean(nll, w, n_sup, info.world_size)
        loss.backward()
        loss_sum += loss.detach().double()
        nll_sum += nll.detach().double().sum()
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)  # a device scalar: no wait yet
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=micro_step is None)  # a graph adds into the same .grad tensors
    # the host reads the metrics only after queueing the optimizer, so AdamW runs while it returns and prepares
    # the next step; reading the norm before optimizer.step left the GPU idle while the host issued AdamW
    grad_norm = local_grad_norm_to_float(grad_norm)
    loss_g, nll_g = all_reduce_sum([loss_sum.item() / info.world_size, nll_sum.item()], info)
    return dict(loss=loss_g, nll=nll_g / max(n_sup, 1.0), lr=lr, grad_norm=grad_norm, tokens=n_tok,
                supervised_tokens=n_sup)


def train(cfg: SFTConfig) -> Path:
    """Run SFT to the end (or continue it with cfg.resume) and return the final model directory."""
    cfg.validate()
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        if owns_group:
            shutdown_distributed()


def _resume(cfg: SFTConfig, ckpts: CheckpointManager, info, module, optimizer, scheduler, run_state, total) -> int:
    """-> the step to start from (0 for a fresh run)."""
    latest = ckpts.latest()
    if latest is not None and not cfg.resume:
        raise ConfigError(f"{cfg.output_dir} already holds training checkpoints ({latest.name}); pass --resume to "
                          "continue that run, or choose a new output_dir")
    if not cfg.resume:
        return 0
    if latest is None:
        _say(info, "resume: no checkpoint found, starting from scratch")
        return 0
    saved = ckpts.load(latest, module, optimizer, scheduler)
    check_resume(saved, cfg, run_state["data_fingerprint"], run_state["stream_digest"], latest)
    _say(info, f"resumed from {latest} (step {saved['step']}/{total})")
    return int(saved["step"])


def _train(cfg: SFTConfig, info: DistInfo) -> Path:
    from tqdm import tqdm

    from h1r.checkpoint import resolve_dtype
    from h1r.tokenizer import load_tokenizer
    from h1r.utils.metrics import MetricsLogger

    if cfg.cuda_graph:  # before anything is loaded or written
        check_supported(info.device, info.distributed)
    seed_everything(cfg.seed)
    if cfg.cpu_threads is not None and info.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    out = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model)
    examples, stats = load_sft_examples(cfg.data, tokenizer, cfg)
    _say(info, "data: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lm = load_base_model(cfg.model, cfg.random_init, cfg.seed)
    if tokenizer.vocab_size > lm.config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                          f"{lm.config.vocab_size}")
    lm.set_activation_checkpointing(cfg.activation_checkpointing)
    lm.train()
    module = shard_model(TokenNLL(lm.to(info.device)), lm.model.layers, info)
    optimizer = build_adamw(module, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps)
    stream = DataStream([e.weight for e in examples], cfg.weighting, cfg.seed, cfg.batch_size, cfg.epochs,
                        cfg.max_steps, cfg.shuffle)
    total = stream.total_steps
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
    scheduler = build_scheduler(optimizer, total, warmup, cfg.schedule, cfg.min_lr_ratio)
    run_state = {"config": to_dict(cfg), "data_fingerprint": fingerprint(examples), "stream_digest": stream.digest()}
    ckpts = CheckpointManager(out / "checkpoints", info, cfg.keep_last)
    start = _resume(cfg, ckpts, info, module, optimizer, scheduler, run_state, total)

    logger = None
    if info.is_main:
        trim_metrics(out / "metrics.jsonl", start)
        logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
    autocast = compute_autocast(cfg.dtype, info.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_weights = [token_weight(e.weight, cfg.weighting) for e in examples]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    micro_step = None
    if cfg.cuda_graph:
        micro_step = GraphedMicroStep(module, cfg.micro_batch_size, cfg.max_seq_len, info.device, pad_id,
                                      cfg.weighting == "loss", half_dtype(cfg.dtype, info.device),
                                      cfg.graph_docs_per_row)
    step_sleep = float(os.environ.get("H1R_DEBUG_STEP_SLEEP", "0") or 0)  # tests: time to kill a run
    bar = tqdm(total=total, initial=start, desc="sft", disable=not (info.is_main and cfg.progress), dynamic_ncols=True)
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            batches = step_batches(examples, stream.step_items(step), token_weights, cfg, info, pad_id)
            m = optimizer_step(module, batches, optimizer, scheduler, info, autocast, cfg.weighting == "loss", clip,
                               micro_step)
            dt, done = time.perf_counter() - t0, step + 1
            if logger is not None and (done % cfg.log_every == 0 or done == total):
                logger.log(done, **m, tokens_per_s=m["tokens"] / dt, step_time_s=dt, epoch=stream.epoch_at(done))
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens'] / dt:,.0f}")
            bar.update(1)
            if cfg.save_every and done % cfg.save_every == 0 and done < total:
                ckpts.save(done, module, optimizer, scheduler, {**run_state, "epoch": stream.epoch_at(done),
                                                                "examples_seen": done * cfg.batch_size})
            if step_sleep:
                time.sleep(step_sleep)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    save_dtype = None if cfg.save_dtype == "auto" else cfg.save_dtype
    final = export_hf_model(module, lm.config, info, out / "final", copy_files_from=cfg.model,
                            dtype=resolve_dtype(save_dtype or lm.config.torch_dtype))
    _say(info, f"wrote {out / 'final'}")
    return final if final is not None else out / "final"

"""The RL curriculum's difficulty filter against the starting model (recipe part A.3.2, Fig. 9).

For each problem: k samples (default 8, T=0.6, top_p=0.95); pass = correct / k.
    k/k                 drop (too easy: no learning signal)
    0 < pass < k        keep
    0/k, all truncated  keep a small random share (`filter_keep_truncated`)
    0/k otherwise       drop when the most common (wrong) answer appears >= `filter_consistent_wrong`
                        times (a wrong label or a systematic trap), else keep a small random share
                        (`filter_keep_unsolved`)
The random draws are a pure function of (seed, problem position), so a rerun keeps the same problems.
Kept rows get "pass_rate" (for `curriculum_order: easy_to_hard`) and "filter" (the rule that kept
them). `difficulty_filter(cfg)` writes OUTPUT_DIR/curriculum.jsonl (+ curriculum.json with counts);
`h1r grpo --filter-only` runs just this, and `train` runs it first when `difficulty_filter: true`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from h1r.train.distributed import DistInfo


@dataclass
class Decision:
    keep: bool
    reason: str  # solved | partial | all_truncated | consistent_wrong | unsolved
    pass_rate: float


def uniform(seed: int, position: int) -> float:
    """A stable draw in [0, 1) per (seed, problem position)."""
    h = hashlib.sha256(f"h1r-grpo/filter-keep/{seed}/{position}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def classify(correct: list[bool], answers: list[str | None], truncated: list[bool], u: float,
             keep_unsolved: float = 0.1, keep_truncated: float = 0.1, consistent_wrong: int = 4) -> Decision:
    """One problem's fate from its k samples. `answers`: extracted final answers (None when absent);
    `u`: this problem's uniform draw, compared with the keep shares."""
    from h1r.rewards.math import normalize

    k, n_ok = len(correct), sum(bool(c) for c in correct)
    rate = n_ok / k if k else 0.0
    if k and n_ok == k:
        return Decision(False, "solved", rate)
    if n_ok > 0:
        return Decision(True, "partial", rate)
    if k and all(truncated):
        return Decision(u < keep_truncated, "all_truncated", rate)
    counts = Counter(normalize(a) for a in answers if a is not None and a.strip())
    if counts and max(counts.values()) >= consistent_wrong:
        return Decision(False, "consistent_wrong", rate)
    return Decision(u < keep_unsolved, "unsolved", rate)


def filter_prompts(llm, prompts, cfg, info: DistInfo | None = None) -> tuple[list[dict], dict]:
    """Sample, grade and classify every prompt (each rank its share; results gathered).
    -> (kept rows annotated with pass_rate and filter, counts by reason)."""
    import torch.distributed as dist

    from h1r.engine.sampling_params import SamplingParams
    from h1r.rewards.math import extract_answer
    from h1r.train.grpo_rollout import sampling_seed, score

    info = info or DistInfo()
    mine = list(range(info.rank, len(prompts), info.world_size))
    k = cfg.filter_num_samples
    params = [SamplingParams(n=k, temperature=cfg.filter_temperature, top_p=cfg.filter_top_p,
                             max_tokens=cfg.filter_max_tokens or cfg.max_completion_length,
                             seed=sampling_seed(cfg.seed, i, "filter")) for i in mine]
    outs = llm.generate([prompts[i].ids for i in mine], params, use_tqdm=cfg.progress and info.is_main) if mine else []
    texts = [c.text for o in outs for c in o.outputs]
    _, correct = score(texts, [prompts[i].row for i in mine for _ in range(k)], cfg) if texts else ([], [])
    local = {}
    for j, (i, o) in enumerate(zip(mine, outs)):
        ok = correct[j * k:(j + 1) * k]
        d = classify(ok, [extract_answer(c.text) for c in o.outputs], [c.finish_reason == "length" for c in o.outputs],
                     uniform(cfg.seed, i), cfg.filter_keep_unsolved, cfg.filter_keep_truncated,
                     cfg.filter_consistent_wrong)
        local[i] = (d.keep, d.reason, d.pass_rate)
    if info.distributed:
        box: list = [None] * info.world_size
        dist.all_gather_object(box, local)
        local = {i: v for part in box for i, v in part.items()}
    counts: Counter = Counter()
    kept = []
    for i, p in enumerate(prompts):
        keep, reason, rate = local[i]
        counts[f"{reason}_{'kept' if keep else 'dropped'}"] += 1
        if keep:
            kept.append({**p.row, "pass_rate": rate, "filter": reason})
    counts["problems"], counts["kept"] = len(prompts), len(kept)
    return kept, dict(sorted(counts.items()))


def curriculum_path(cfg) -> Path:
    return Path(cfg.output_dir) / "curriculum.jsonl"


def run_filter(cfg, llm, tokenizer, info: DistInfo | None = None) -> Path:
    """Filter cfg.data with the engine `llm` (holding the starting model) and write the curriculum."""
    from h1r.errors import DataError
    from h1r.train.distributed import barrier
    from h1r.train.grpo_data import load_prompts
    from h1r.utils.io import atomic_write_json, write_jsonl

    info = info or DistInfo()
    prompts, _ = load_prompts(cfg.data, tokenizer, cfg.domains, cfg.max_prompt_length)
    kept, counts = filter_prompts(llm, prompts, cfg, info)
    path = curriculum_path(cfg)
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kept:
            write_jsonl(path, kept)
        atomic_write_json(path.with_suffix(".json"), {"source": list(cfg.data), "counts": counts,
                                                      "num_samples": cfg.filter_num_samples})
    barrier(info)
    if not kept:
        raise DataError(f"the difficulty filter kept no problem of {', '.join(cfg.data)} ({counts}); the starting "
                        "model solves all of them or none")
    return path


def difficulty_filter(cfg) -> Path:
    """Standalone: load the starting model into an engine, filter, write OUTPUT_DIR/curriculum.jsonl."""
    import torch

    from h1r.engine.llm import LLM

    cfg.validate()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    llm = LLM(cfg.model, max_num_seqs=cfg.engine_max_num_seqs, max_model_len=cfg.max_prompt_length +
              (cfg.filter_max_tokens or cfg.max_completion_length), cache_memory=cfg.engine_cache_memory,
              max_num_batched_tokens=cfg.engine_max_num_batched_tokens, seed=cfg.seed)
    return run_filter(cfg, llm, llm.tokenizer)

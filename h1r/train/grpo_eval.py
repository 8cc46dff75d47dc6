"""What a GRPO run logs about its rollouts, and the held-out evaluation it runs on the way."""

from __future__ import annotations

import numpy as np

from h1r.train.distributed import DistInfo, all_reduce_sum


def rollout_stats(groups, prefix: str) -> dict:
    """Reward, accuracy, length and truncation over every rollout of `groups`."""
    rs = [r for g in groups for r in g.rollouts]
    if not rs:
        return {}
    lengths = np.asarray([len(r.token_ids) for r in rs], dtype=np.float64)
    rewards = np.asarray([r.reward for r in rs], dtype=np.float64)
    return {f"{prefix}reward": rewards.mean(), f"{prefix}reward_std": rewards.std(),
            f"{prefix}accuracy": float(np.mean([r.correct for r in rs])),
            f"{prefix}response_length": lengths.mean(), f"{prefix}response_length_max": lengths.max(),
            f"{prefix}truncated_share": float(np.mean([r.truncated for r in rs]))}


def evaluate(llm, prompts, cfg, info: DistInfo | None = None) -> dict:
    """Greedy pass@1 on held-out prompts (each rank its share): accuracy and mean response length."""
    from h1r.engine.sampling_params import SamplingParams
    from h1r.train.grpo_rollout import score

    info = info or DistInfo()
    mine = prompts[info.rank::info.world_size]
    correct, tokens = 0.0, 0.0
    if mine:
        greedy = SamplingParams(temperature=0.0, max_tokens=cfg.max_completion_length)
        outs = llm.generate([p.ids for p in mine], greedy)
        texts = [o.outputs[0].text for o in outs]
        _, ok = score(texts, [p.row for p in mine], cfg)
        correct, tokens = float(sum(ok)), float(sum(len(o.outputs[0].token_ids) for o in outs))
    correct, tokens, n = all_reduce_sum([correct, tokens, float(len(mine))], info)
    return {"eval_accuracy": correct / max(n, 1.0), "eval_response_length": tokens / max(n, 1.0), "eval_problems": n}

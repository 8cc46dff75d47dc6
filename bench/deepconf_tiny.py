"""DeepConf on the tiny model after SFT, on held-out synthetic problems: pass@1, majority@K,
offline DeepConf and online DeepConf-low / -high (Alg. 2) accuracy and total tokens at K = 32, 64.

Two protocols, both counting every generated token (stopped traces included):
- pool replay (the paper's): one pool of P full traces per problem is generated once; each of R
  runs shuffles it, majority@K votes on the first K, and online DeepConf replays the shuffled pool
  with `pool_generator` (early stopping replayed on the stored token confidences, which the engine
  tests show is exactly what the engine's hook does). Accuracy and tokens are averaged over runs.
- live: `solve_many` on the engine with the real per-token stop hook, one run with fresh seeds;
  live majority@K votes on the pool's first K traces (the pool is K fresh samples per problem).

Traces here are 20-120 tokens long, so the group-confidence window (and the tail) is 16 tokens, not
the paper's 2,048 (which is sized for ~10k-token traces). The model is built once and cached under
runs/deepconf_tiny (`h1r data synth`, `h1r data tokenizer`, `h1r init tiny`, SFT); delete that
folder to rebuild it.

    python bench/deepconf_tiny.py [--per-cell 2] [--pool 128] [--runs 64] [--window 16] [--no-live]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KS = (32, 64)
# name -> (variant, consensus τ, traces per consensus check; None: --step); every online method uses
# warm-up 16 and the min-window vote. "_step1" is the paper's protocol: the consensus test before every trace.
ONLINE = {
    "deepconf_low": ("low", 0.95, None),
    "deepconf_high": ("high", 0.95, None),
    "deepconf_low_budget_only": ("low", None, None),
    "deepconf_high_budget_only": ("high", None, None),
    "deepconf_low_step1": ("low", 0.95, 1),
}
LIVE = ("deepconf_low", "deepconf_high")


# ---- the model -----------------------------------------------------------------------------------
def build_model(work: Path, stages: list[tuple[int, float]]) -> Path:
    """Synthetic curriculum -> tokenizer -> random tiny model -> SFT stages (steps, peak lr), each
    continuing from the previous one's final model; every stage is cached under its recipe."""
    from h1r.train.config import SFTConfig
    from h1r.train.sft import train

    h1r = [sys.executable, "-m", "h1r"]
    run = lambda *a: subprocess.run([*h1r, *map(str, a)], check=True, cwd=ROOT)
    if not (work / "data" / "test.jsonl").exists():
        run("data", "synth", "--out", work / "data", "--seed", 0)
    if not (work / "tok" / "tokenizer.json").exists():
        run("data", "tokenizer", "--data", work / "data" / "train.jsonl", "--out", work / "tok", "--vocab-size", 512)
    if not (work / "init" / "config.json").exists():
        run("init", "tiny", work / "init", "--tokenizer", work / "tok", "--seed", 0)
    model, done = work / "init", []
    for steps, lr in stages:
        done.append((steps, lr))
        recipe = {"synth_seed": 0, "vocab_size": 512, "init_seed": 0, "batch_size": 32, "max_seq_len": 1024,
                  "weighting": "sample", "stages": [list(x) for x in done]}
        run_dir = work / ("sft-" + "+".join(f"{n}-lr{lr:g}" for n, lr in done))
        stamp, final = run_dir / "recipe.json", run_dir / "final"
        if not (stamp.exists() and json.loads(stamp.read_text()) == recipe and (final / "config.json").exists()):
            cfg = SFTConfig(model=str(model), data=[str(work / "data" / "train.jsonl")], output_dir=str(run_dir),
                            max_steps=steps, batch_size=32, micro_batch_size=32, max_seq_len=1024, lr=lr,
                            cpu_threads=1, progress=False, tensorboard=False, log_every=20)
            final = Path(train(cfg))
            stamp.write_text(json.dumps(recipe))
        model = final
    return model


def parse_stages(text: str) -> list[tuple[int, float]]:
    """"400@3e-3,400@1.5e-3" -> [(400, 0.003), (400, 0.0015)]"""
    out = []
    for part in text.split(","):
        steps, lr = part.split("@")
        out.append((int(steps), float(lr)))
    return out


def load_problems(path: Path, per_cell: int) -> list[dict]:
    """The first `per_cell` held-out problems of every (family, level)."""
    from h1r.utils.io import iter_jsonl

    cells, out = defaultdict(int), []
    for row in iter_jsonl(path):
        key = (row["family"], row["level"])
        if cells[key] < per_cell:
            cells[key] += 1
            out.append(row)
    return out


# ---- scoring -------------------------------------------------------------------------------------
class Grader:
    """answers_equal, cached per (problem, answer): hundreds of runs re-grade the same answers."""

    def __init__(self, golds: list[str]):
        self.golds, self.cache = golds, {}

    def __call__(self, problem: int, answer: str | None) -> bool:
        from h1r.rewards.math import answers_equal

        if answer is None:
            return False
        key = (problem, answer)
        if key not in self.cache:
            self.cache[key] = bool(answers_equal(answer, self.golds[problem]))
        return self.cache[key]


def online_cfg(name: str, K: int, args):
    from h1r.deepconf import DeepConfConfig

    variant, tau, step = ONLINE[name]
    return DeepConfConfig(mode="online", variant=variant, budget=K, warmup_traces=args.warmup, consensus=tau,
                          step=step or args.step, window=args.window, tail=args.window)


def rewindow(trace, window: int):
    """The same trace with its confidences recomputed for another window."""
    from h1r.deepconf import trace_confidence

    return dataclasses.replace(trace, confidence=trace_confidence(trace.token_confidences, window, window))


def replay(pools, grade, args) -> dict:
    """Pool replay: R shuffles per problem; every method sees the same shuffles."""
    from h1r.deepconf import offline_deepconf, pool_generator, run_deepconf, vote

    acc = defaultdict(list)  # (K, method) -> [run][problem] correct
    tok = defaultdict(list)  # (K, method) -> [run][problem] tokens
    extra = defaultdict(list)  # (K, method) -> per (run, problem): traces used, stopped
    for r in range(args.runs):
        rows = defaultdict(lambda: ([], []))
        for p, pool in enumerate(pools):
            order = np.random.default_rng([args.seed, r, p]).permutation(len(pool))
            shuffled = [pool[j] for j in order]
            answers = [t.answer for t in shuffled]
            for K in KS:
                maj = vote(answers[:K], method="majority")
                rows[(K, "majority")][0].append(grade(p, maj.answer))
                rows[(K, "majority")][1].append(sum(t.num_tokens for t in shuffled[:K]))
                votes, _, _ = offline_deepconf(answers[:K], [t.confidence for t in shuffled[:K]], 10.0, "lowest")
                rows[(K, "offline_low")][0].append(grade(p, votes["min_window_weighted"].answer))
                rows[(K, "offline_low")][1].append(rows[(K, "majority")][1][-1])
                for name in ONLINE:
                    res = run_deepconf(pool_generator(shuffled, args.window, args.window), online_cfg(name, K, args))
                    rows[(K, name)][0].append(grade(p, res.answer))
                    rows[(K, name)][1].append(res.tokens["total"])
                    extra[(K, name)].append((len(res.traces), sum(t.finish_reason == "confidence" for t in res.traces)))
        for key, (a, t) in rows.items():
            acc[key].append(a)
            tok[key].append(t)
        if (r + 1) % max(1, args.runs // 8) == 0:
            print(f"  replay run {r + 1}/{args.runs}", flush=True)
    out = {}
    for (K, method), a in acc.items():
        a, t = np.asarray(a, float), np.asarray(tok[(K, method)], float)  # [runs, problems]
        d = {"accuracy": float(a.mean()), "accuracy_std_over_runs": float(a.mean(1).std()),
             "tokens": float(t.sum(1).mean()), "tokens_std_over_runs": float(t.sum(1).std())}
        if extra[(K, method)]:
            used, stopped = np.asarray(extra[(K, method)], float).T
            d["traces_per_problem"] = float(used.mean())
            d["stopped_per_problem"] = float(stopped.mean())
        out.setdefault(f"K={K}", {})[method] = d
    for K in KS:
        table = out[f"K={K}"]
        base = table["majority"]["tokens"]
        for d in table.values():
            d["tokens_vs_majority"] = d["tokens"] / base - 1.0
    return out


def pass_at_1(pools, grade) -> dict:
    a = [np.mean([grade(p, t.answer) for t in pool]) for p, pool in enumerate(pools)]
    t = [np.mean([t.num_tokens for t in pool]) for pool in pools]
    return {"accuracy": float(np.mean(a)), "tokens": float(np.sum(t))}


def auroc(pos, neg) -> float:
    """P(a correct trace's confidence > an incorrect one's), ties count half."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def diagnostics(pools, grade, args) -> dict:
    """Why DeepConf can or cannot help here: does confidence separate right from wrong traces,
    how often the right answer is in the pool at all, and how many tokens early stopping can save."""
    out = {"mean_trace_tokens": float(np.mean([t.num_tokens for pool in pools for t in pool])),
           "answered_fraction": float(np.mean([t.answer is not None for pool in pools for t in pool])),
           "correct_in_pool_fraction": float(np.mean([any(grade(p, t.answer) for t in pool)
                                                      for p, pool in enumerate(pools)]))}
    for metric in ("lowest", "mean", "tail", "bottom"):
        scores = []
        for p, pool in enumerate(pools):
            ok = [t.confidence.get(metric) for t in pool if t.answer is not None and grade(p, t.answer)]
            bad = [t.confidence.get(metric) for t in pool if t.answer is not None and not grade(p, t.answer)]
            if ok and bad:
                scores.append(auroc(ok, bad))
        out[f"auroc_{metric}"] = float(np.mean(scores)) if scores else None
        out["auroc_problems"] = len(scores)
    # a stopped trace costs at least `window` tokens and warm-up traces are never stopped, so even if
    # every final trace were stopped at the earliest point the saving vs majority@K is at most this
    for K in KS:
        full = np.mean([t.num_tokens for pool in pools for t in pool])
        cut = np.mean([min(t.num_tokens, args.window) for pool in pools for t in pool])
        out[f"max_early_stop_saving_K={K}"] = float((K - args.warmup) / K * (1 - cut / full))
    return out


def by_level(problems, pools, grade) -> dict:
    out = defaultdict(list)
    for p, (row, pool) in enumerate(zip(problems, pools)):
        out[row["level"]].append(np.mean([grade(p, t.answer) for t in pool]))
    return {str(k): float(np.mean(v)) for k, v in sorted(out.items())}


# ---- the run -------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "deepconf_tiny"))
    ap.add_argument("--sft", default="400@3e-3,400@1.5e-3",
                    help="SFT stages STEPS@PEAK_LR, comma-separated; each continues from the previous")
    ap.add_argument("--per-cell", type=int, default=2, help="held-out problems per (family, level)")
    ap.add_argument("--pool", type=int, default=128, help="traces per problem in the replay pool")
    ap.add_argument("--runs", type=int, default=64, help="resampled replay runs (the paper: 64)")
    ap.add_argument("--window", type=int, default=16, help="group-confidence window (and tail), tokens")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--step", type=int, default=4, help="final traces per batch between consensus checks")
    ap.add_argument("--windows", default="8,32", help="extra windows for the replay ablation (DeepConf-low)")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-live", action="store_true", help="skip the live online runs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deepconf_tiny.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from h1r import LLM, SamplingParams
    from h1r.deepconf import DeepConfConfig, TraceRecord
    from h1r.deepconf.engine import solve_many

    work = Path(args.work)
    t0 = time.time()
    model = build_model(work, parse_stages(args.sft))
    problems = load_problems(work / "data" / "test.jsonl", args.per_cell)
    prompts = [row["messages"] for row in problems]
    grade = Grader([row["answer"] for row in problems])
    llm = LLM(str(model), max_num_seqs=256, max_num_batched_tokens=4096, max_model_len=512, cache_memory=512 << 20)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    timing = {"model_s": time.time() - t0}
    print(f"{len(problems)} problems, model {model}", flush=True)

    # 1. the pool: P full traces per problem (offline mode = no early stop), confidences kept; cached
    t = time.time()
    cache = model.parent / (f"pool-{args.per_cell}x{args.pool}-T{args.temperature:g}-p{args.top_p:g}"
                            f"-max{args.max_tokens}.json")
    if cache.exists():
        pools = [[TraceRecord.from_dict(d) for d in pool] for pool in json.loads(cache.read_text())]
    else:
        pool_cfg = DeepConfConfig(mode="offline", budget=args.pool, window=args.window, tail=args.window)
        pool_res = solve_many(llm, prompts, pool_cfg, sampling, seeds=[10_000 + i for i in range(len(prompts))],
                              keep_text=False, keep_confidences=True, progress=True)
        pools = [r.traces for r in pool_res]
        cache.write_text(json.dumps([[t.to_dict(token_confidences=True) for t in pool] for pool in pools]))
        timing["pool_s"] = time.time() - t
    pools = [[dataclasses.replace(rewindow(t, args.window), kept=True) for t in pool] for pool in pools]
    timing["pool_tokens"] = int(sum(t.num_tokens for pool in pools for t in pool))
    print(f"pool: {timing['pool_tokens']} tokens ({time.time() - t:.0f} s)", flush=True)

    # 2. replay
    t = time.time()
    results = {"pass@1": pass_at_1(pools, grade), "pass@1_by_level": by_level(problems, pools, grade),
               "diagnostics": diagnostics(pools, grade, args)}
    results["pool_replay"] = replay(pools, grade, args)
    ablation = {}
    for w in [int(x) for x in args.windows.split(",") if x.strip()]:
        sub = argparse.Namespace(**{**vars(args), "window": w, "runs": max(1, args.runs // 2)})
        rep = replay([[rewindow(t, w) for t in pool] for pool in pools], grade, sub)
        ablation[f"window={w}"] = {k: {m: rep[k][m] for m in ("majority", "deepconf_low", "deepconf_low_budget_only")}
                                   for k in rep}
    results["window_ablation"] = ablation
    timing["replay_s"] = time.time() - t

    # 3. live: the real engine hook, one run, fresh seeds; majority@K on the pool's first K (fresh samples too)
    if not args.no_live:
        live = {}
        for K in KS:
            maj = [grade(p, _majority([t.answer for t in pool[:K]])) for p, pool in enumerate(pools)]
            live[f"K={K}"] = {"majority": {"accuracy": float(np.mean(maj)),
                                           "tokens": float(sum(t.num_tokens for pool in pools for t in pool[:K]))}}
            for name in LIVE:
                t = time.time()
                res = solve_many(llm, prompts, online_cfg(name, K, args), sampling,
                                 seeds=[20_000 + 1000 * K + i for i in range(len(prompts))], keep_text=False)
                live[f"K={K}"][name] = {
                    "accuracy": float(np.mean([grade(p, r.answer) for p, r in enumerate(res)])),
                    "tokens": float(sum(r.tokens["total"] for r in res)),
                    "traces_per_problem": float(np.mean([len(r.traces) for r in res])),
                    "stopped_per_problem": float(np.mean([sum(t.finish_reason == "confidence" for t in r.traces)
                                                          for r in res])),
                    "ended_by_consensus": int(sum(r.ended_by == "consensus" for r in res)),
                    "seconds": time.time() - t}
                print(f"live K={K} {name}: {live[f'K={K}'][name]}", flush=True)
            base = live[f"K={K}"]["majority"]["tokens"]
            for d in live[f"K={K}"].values():
                d["tokens_vs_majority"] = d["tokens"] / base - 1.0
        results["live"] = live

    timing["total_s"] = time.time() - t0
    levels = defaultdict(int)
    for row in problems:
        levels[row["level"]] += 1
    report = {
        "setup": {"model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
                  "recipe": json.loads((model.parent / "recipe.json").read_text()), "problems": len(problems),
                  "problems_per_level": dict(sorted(levels.items())), "pool": args.pool, "runs": args.runs,
                  "window": args.window, "tail": args.window, "topk": 20, "warmup": args.warmup, "step": args.step,
                  "consensus": 0.95, "vote_method": "min_window_weighted", "temperature": args.temperature,
                  "top_p": args.top_p, "max_tokens": args.max_tokens, "threads": torch.get_num_threads(),
                  "platform": platform.platform(), "torch": torch.__version__},
        "results": results,
        "timing": timing,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print_table(report)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _majority(answers):
    from h1r.deepconf import vote

    return vote(answers, method="majority").answer


def print_table(report):
    res = report["results"]
    print(f"pass@1 {res['pass@1']['accuracy']:.3f} ({res['pass@1']['tokens']:.0f} tokens per trace set)")
    for proto in ("pool_replay", "live"):
        if proto not in res:
            continue
        for k, table in res[proto].items():
            print(f"{proto} {k}")
            for m, d in table.items():
                print(f"  {m:<28} acc {d['accuracy']:.3f}  tokens {d['tokens']:10.0f}  "
                      f"vs majority {100 * d['tokens_vs_majority']:+6.1f}%")


def plot(report, path: Path):
    """Accuracy vs total tokens, one panel per K: replay (filled, ±1 std over runs) and live (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    colors = {"majority": "k", "offline_low": "tab:purple", "deepconf_low": "tab:red", "deepconf_high": "tab:blue",
              "deepconf_low_budget_only": "tab:orange", "deepconf_high_budget_only": "tab:cyan",
              "deepconf_low_step1": "tab:pink"}
    fig, axes = plt.subplots(1, len(KS), figsize=(11, 4.6), sharey=True)
    for ax, K in zip(axes, KS):
        for proto, marker in (("pool_replay", "o"), ("live", "s")):
            table = res.get(proto, {}).get(f"K={K}", {})
            for m, c in colors.items():
                if m not in table:
                    continue
                d = table[m]
                live = proto == "live"
                std = lambda key: None if d.get(key) is None else d[key] / (1000 if "tokens" in key else 1)
                ax.errorbar(d["tokens"] / 1000, d["accuracy"], yerr=std("accuracy_std_over_runs"),
                            xerr=std("tokens_std_over_runs"), fmt="D" if m.endswith("step1") else marker, color=c,
                            mfc="none" if live else c, ms=8 if live else (4 if m.endswith("step1") else 6),
                            capsize=2, label=f"{m} ({'live' if live else 'replay'})")
        ax.axhline(res["pass@1"]["accuracy"], color="gray", ls=":", label="pass@1")
        ax.set_title(f"K = {K}")
        ax.set_xlabel("total generated tokens over all problems (thousands)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (replay: mean ± 1 std over runs)")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    s = report["setup"]
    fig.suptitle(f"DeepConf on the tiny SFT model: {s['problems']} held-out synthetic problems, "
                 f"window {s['window']} tokens, {s['runs']} replay runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

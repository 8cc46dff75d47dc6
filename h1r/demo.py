"""`h1r demo`: the whole Falcon-H1R recipe on the embedded default, from nothing, on a CPU, in minutes.

    data      synthesise the math curriculum (5 families x 5 levels) with the single teacher
    tokenizer train the byte-level BPE tokenizer on it
    base      a random tiny hybrid (attention || Mamba-2), evaluated as is
    sft       cold-start SFT with difficulty-aware weighting (level labels: easy x0.5, hard x1.5)
    grpo      GRPO with verifiable math rewards (no KL, clip-higher) from the SFT model
    eval      every stage on the held-out problems: pass@1 averaged over K samples, maj@K, DeepConf@K

and a report folder (report.md, summary.json, PNG plots) with the table printed at the end.

The SFT weights come from the synthetic rows' level-derived `difficulty` labels (levels 1-2 easy,
3 medium, 4-5 hard): a pass-rate pass (`h1r data difficulty`) against a random model would call every
problem hard. Deterministic for a seed and a thread count (floating-point sums depend on the
number of threads). Sizes are in `DemoConfig`; `quick()` is a smoke run.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from h1r.errors import ConfigError

MARKER = "demo.json"  # marks a folder as an h1r demo's (a re-run may replace it)
STAGES = ("base", "sft", "grpo")
STAGE_TITLES = {"base": "base (random init)", "sft": "after SFT", "grpo": "after GRPO"}


@dataclass
class DemoConfig:
    out: str = "h1r-demo"
    seed: int = 0
    threads: int = 1  # torch CPU threads for every stage
    progress: bool = True
    # ---- data ----
    train_per_level: int = 150  # training problems per family and level
    test_per_level: int = 4  # held-out problems per family and level (evaluated at every stage)
    traces_per_problem: int = 2
    vocab_size: int = 512
    # ---- model: the tiny preset ----
    preset: str = "tiny"
    # ---- SFT ----
    sft_steps: int = 300
    sft_batch_size: int = 32
    sft_lr: float = 5e-3
    weighting: str = "sample"  # difficulty-aware: "sample" (multiplicity) or "loss"; "none" = uniform
    # ---- GRPO ----
    grpo_steps: int = 10
    grpo_prompts_per_step: int = 16
    grpo_generations: int = 8
    grpo_lr: float = 2e-4
    grpo_temperature: float = 0.85
    # ---- evaluation ----
    eval_samples: int = 8  # K: samples per problem (pass@1 averaged over K, maj@K) and DeepConf's budget
    deepconf_warmup: int = 4
    deepconf_variants: tuple[str, ...] = ("low", "high")
    deepconf_window: int = 16  # tokens per confidence group (the paper's 2,048 is for 10k-token traces)
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 160  # per sample; the teacher's longest traces are ~120 tokens
    max_num_seqs: int = 256
    families: list[str] | None = field(default=None)

    @classmethod
    def quick(cls, **over) -> "DemoConfig":
        """A smoke run (under two minutes): every stage, tiny sizes; accuracy is not the point."""
        base = dict(train_per_level=20, test_per_level=1, sft_steps=30, sft_batch_size=16, grpo_steps=2,
                    grpo_prompts_per_step=4, grpo_generations=4, eval_samples=4, deepconf_warmup=2,
                    deepconf_variants=("low",), max_tokens=64)
        return cls(**{**base, **over})

    def validate(self) -> None:
        for name in ("train_per_level", "test_per_level", "traces_per_problem", "sft_steps", "sft_batch_size",
                     "grpo_prompts_per_step", "eval_samples", "max_tokens", "threads", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.grpo_steps < 0:
            raise ConfigError(f"grpo-steps must be >= 0, got {self.grpo_steps}")
        if self.grpo_generations < 2:
            raise ConfigError(f"grpo-generations must be >= 2, got {self.grpo_generations}")
        if not 1 <= self.deepconf_warmup <= self.eval_samples:
            raise ConfigError(f"deepconf-warmup must be in [1, eval-samples={self.eval_samples}], "
                              f"got {self.deepconf_warmup}")
        if self.weighting not in ("sample", "loss", "none"):
            raise ConfigError(f"weighting must be sample, loss or none, got {self.weighting!r}")
        bad = [v for v in self.deepconf_variants if v not in ("low", "high")]
        if bad:
            raise ConfigError(f"DeepConf variants are low and high, got {bad[0]!r}")


# ---------------------------------------------------------------------------------------------- helpers


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


OUTPUTS = ("data", "tokenizer", "models", "runs", "eval", "report.md", "summary.json", "accuracy_vs_tokens.png",
           "accuracy_by_level.png", "sft_curves.png", "grpo_curves.png", MARKER)


def prepare_out(out: Path) -> None:
    """An empty folder, or a previous demo's (its outputs are replaced; nothing else is touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"--out {out} is not empty and is not an h1r demo folder; choose another --out")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def held_out_problems(test_jsonl: Path):
    from h1r.eval.driver import load_chat_jsonl

    return {"synth": load_chat_jsonl(test_jsonl, name="synth")}


def max_model_len(cfg: DemoConfig) -> int:
    """Prompt (the curriculum's are under 40 tokens) plus the sample: keeps the engine's cache small."""
    return cfg.max_tokens + 128


def eval_sampling(cfg: DemoConfig):
    from h1r.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)


def evaluate_stage(cfg: DemoConfig, model_dir: Path, problems, out: Path, full: bool) -> dict:
    """Sample K per problem (pass@1, maj@K); DeepConf-low/high with budget K when `full`. -> stage results."""
    from h1r.engine.llm import LLM
    from h1r.eval.driver import evaluate

    llm = LLM(model_dir, max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=8 * cfg.max_num_seqs,
              max_model_len=max_model_len(cfg), seed=cfg.seed)
    n = cfg.eval_samples if full else 1
    t0 = time.perf_counter()
    res = evaluate(llm, problems, n, "majority", eval_sampling(cfg), out, seed=cfg.seed, progress=cfg.progress)
    s = res.summary["synth"]
    stage = {"pass@1": s["pass@1"], "pass@1_se": s["pass@1_se"], "tokens_per_sample": s["tokens_per_sample"],
             "samples": n, "by_level": res.by_level.get("synth", {}), "seconds": {"sample": time.perf_counter() - t0}}
    if full:
        stage[f"maj@{n}"] = s.get(f"maj@{n}", 0.0)  # absent when no sample gave an answer: nothing to vote
        stage["maj_tokens_per_problem"] = s["tokens_per_problem"]
        for variant in cfg.deepconf_variants:
            method = f"deepconf-{variant}"
            t0 = time.perf_counter()
            try:
                dc = evaluate(llm, problems, n, method, eval_sampling(cfg), out, seed=cfg.seed,
                              warmup=cfg.deepconf_warmup, progress=cfg.progress,
                              deepconf_options={"window": cfg.deepconf_window, "tail": cfg.deepconf_window})
            except ConfigError as e:  # DeepConf on the engine not available in this build
                stage[method] = None
                stage[f"{method}_note"] = str(e)
                continue
            d = dc.summary["synth"]
            stage[method] = d[method]
            stage[f"{method}_tokens_per_problem"] = d[f"{method}_tokens_per_problem"]
            stage[f"{method}_by_level"] = dc.by_level.get("synth", {})
            stage["seconds"][method] = time.perf_counter() - t0
    return stage


# ---------------------------------------------------------------------------------------------- stages


def make_data(cfg: DemoConfig, out: Path) -> dict:
    from h1r.data.synth import write_curriculum
    from h1r.data.tokenizer_train import train_from_jsonl

    data = out / "data"
    manifest = write_curriculum(data, cfg.seed, cfg.train_per_level, cfg.test_per_level, cfg.traces_per_problem,
                                cfg.families, progress=cfg.progress)
    train_from_jsonl(data / "train.jsonl", out / "tokenizer", cfg.vocab_size, progress=False)
    return manifest


def make_base(cfg: DemoConfig, out: Path) -> Path:
    import torch

    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset
    from h1r.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    mcfg = preset(cfg.preset, vocab_size=max(tok.vocab_size, preset(cfg.preset).vocab_size))
    model = init_model(mcfg, seed=cfg.seed, dtype=torch.float32)
    return save_model(model, out / "models" / "base", tokenizer=tok)


def sft_config(cfg: DemoConfig, out: Path, base: Path, weighting: str | None = None, name: str = "sft"):
    """The demo's SFT settings (bench/sft_weighting.py varies only `weighting`)."""
    from h1r.train.config import SFTConfig

    return SFTConfig(model=str(base), data=[str(out / "data" / "train.jsonl")], output_dir=str(out / "runs" / name),
                     seed=cfg.seed, max_steps=cfg.sft_steps, batch_size=cfg.sft_batch_size,
                     micro_batch_size=cfg.sft_batch_size, max_seq_len=256, lr=cfg.sft_lr, schedule="cosine",
                     min_lr_ratio=0.1, warmup_ratio=0.05, weighting=weighting or cfg.weighting, device="cpu",
                     cpu_threads=cfg.threads, tensorboard=False, progress=cfg.progress)


def run_sft(cfg: DemoConfig, out: Path, base: Path) -> Path:
    from h1r.train.sft import train

    return Path(train(sft_config(cfg, out, base)))


def grpo_available() -> str | None:
    """None when the GRPO trainer is importable, else why not."""
    try:
        from h1r.train.grpo import train  # noqa: F401
        from h1r.train.grpo_config import GRPOConfig  # noqa: F401
    except ImportError as e:
        return f"the GRPO trainer is not available in this build ({e})"
    return None


def run_grpo(cfg: DemoConfig, out: Path, start: Path) -> Path:
    from h1r.train.grpo import train
    from h1r.train.grpo_config import GRPOConfig

    gcfg = GRPOConfig(model=str(start), data=[str(out / "data" / "train_prompts.jsonl")],
                      output_dir=str(out / "runs" / "grpo"), num_generations=cfg.grpo_generations, max_prompt_length=128,
                      temperature=cfg.grpo_temperature, max_completion_length=cfg.max_tokens,
                      prompts_per_step=cfg.grpo_prompts_per_step, learning_rate=cfg.grpo_lr, warmup_steps=1,
                      max_steps=cfg.grpo_steps, seed=cfg.seed, device="cpu", cpu_threads=cfg.threads,
                      engine_max_num_seqs=cfg.max_num_seqs, per_device_train_batch_size=64,
                      tensorboard=False, progress=cfg.progress)
    return Path(train(gcfg))


# ---------------------------------------------------------------------------------------------- pipeline


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns the summary (also out/summary.json) after writing out/report.md."""
    import torch

    cfg.validate()
    out = Path(cfg.out)
    prepare_out(out)
    (out / MARKER).write_text(json.dumps(asdict(cfg), indent=1))
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    summary: dict = {"config": asdict(cfg), "stages": {}, "seconds": {}, "cpu_seconds": {}, "notes": []}
    c_start = time.process_time()
    steps = 7

    def timed(name: str, i: int, title: str, fn):
        _say(f"[{i}/{steps}] {title}")
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        summary["seconds"][name] = round(time.perf_counter() - t0, 1)
        summary["cpu_seconds"][name] = round(time.process_time() - c0, 1)  # this process; wall >> cpu: a busy CPU
        return value

    m = timed("data", 1, "synthesising the curriculum and training the tokenizer", lambda: make_data(cfg, out))
    summary["data"] = m["rows"]
    problems = held_out_problems(out / "data" / "test.jsonl")
    base = timed("init", 2, f"initialising a random {cfg.preset} hybrid model", lambda: make_base(cfg, out))
    summary["stages"]["base"] = timed("eval_base", 3, "evaluating the random model (pass@1, 1 sample per problem)",
                                      lambda: evaluate_stage(cfg, base, problems, out / "eval" / "base", full=False))
    sft = timed("sft", 4, f"SFT with difficulty-aware weighting ({cfg.weighting}), {cfg.sft_steps} steps",
                lambda: run_sft(cfg, out, base))
    summary["stages"]["sft"] = timed(
        "eval_sft", 5, f"evaluating the SFT model (pass@1 over {cfg.eval_samples}, maj@{cfg.eval_samples}, DeepConf)",
        lambda: evaluate_stage(cfg, sft, problems, out / "eval" / "sft", full=True))
    why_not = grpo_available() if cfg.grpo_steps > 0 else "grpo-steps is 0"
    if why_not is None:
        grpo = timed("grpo", 6, f"GRPO, {cfg.grpo_steps} steps of {cfg.grpo_prompts_per_step} prompts x "
                                f"{cfg.grpo_generations} rollouts", lambda: run_grpo(cfg, out, sft))
        summary["stages"]["grpo"] = timed("eval_grpo", 7, "evaluating the GRPO model",
                                          lambda: evaluate_stage(cfg, grpo, problems, out / "eval" / "grpo", full=True))
    else:
        summary["stages"]["grpo"] = None
        summary["notes"].append(f"GRPO stage pending: {why_not}")
        _say(f"[6/{steps}] GRPO skipped: {why_not}")
    for name, stage in summary["stages"].items():
        for key, note in (stage or {}).items():
            if key.endswith("_note"):
                summary["notes"].append(f"{STAGE_TITLES[name]}: {key[:-5]} not run: {note}")
    summary["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    summary["cpu_seconds"]["total"] = round(time.process_time() - c_start, 1)
    from h1r.utils.io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    write_demo_report(out, summary)
    return summary


# ---------------------------------------------------------------------------------------------- report


def _pct(x, se=None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def _num(x) -> str:
    return "–" if x is None else f"{x:,.0f}"


def summary_table(summary: dict) -> str:
    """Markdown: one row per stage, accuracy (%) and generated tokens, like the Falcon-H1R report's tables."""
    k = summary["config"]["eval_samples"]
    variants = summary["config"]["deepconf_variants"]
    head = ["stage", "pass@1 (%)", "tokens/sample", f"maj@{k} (%)", "tokens/problem"]
    for v in variants:
        head += [f"DeepConf-{v}@{k} (%)", "tokens/problem"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in STAGES:
        s = summary["stages"].get(name)
        if s is None:
            rows.append(f"| {STAGE_TITLES[name]} | pending | " + " | ".join(["–"] * (len(head) - 2)) + " |")
            continue
        cells = [STAGE_TITLES[name], _pct(s["pass@1"], s["pass@1_se"]), _num(s["tokens_per_sample"]),
                 _pct(s.get(f"maj@{k}")), _num(s.get("maj_tokens_per_problem"))]
        for v in variants:
            cells += [_pct(s.get(f"deepconf-{v}")), _num(s.get(f"deepconf-{v}_tokens_per_problem"))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def level_table(summary: dict) -> str:
    stages = [n for n in STAGES if summary["stages"].get(n)]
    levels = sorted({lv for n in stages for lv in summary["stages"][n]["by_level"]}, key=lambda v: (len(v), v))
    rows = ["| level | " + " | ".join(f"{STAGE_TITLES[n]} pass@1 (%)" for n in stages) + " |",
            "|---|" + "---|" * len(stages)]
    for lv in levels:
        cells = [_pct(summary["stages"][n]["by_level"].get(lv, {}).get("pass@1")) for n in stages]
        rows.append(f"| {lv} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_demo_report(out: Path, summary: dict) -> Path:
    from h1r.eval.report import plot_accuracy_by_level, plot_accuracy_vs_tokens, plot_training_curves
    from h1r.utils.io import atomic_write_text

    cfg = summary["config"]
    k = cfg["eval_samples"]
    points = {}  # stage -> the keys report.method_points reads
    for name in STAGES:
        s = summary["stages"].get(name)
        if not s:
            continue
        p = {"pass@1": s["pass@1"], "tokens_per_sample": s["tokens_per_sample"],
             "tokens_per_problem": s.get("maj_tokens_per_problem") or s["tokens_per_sample"]}
        if s.get(f"maj@{k}") is not None:
            p[f"maj@{k}"] = s[f"maj@{k}"]
        for v in cfg["deepconf_variants"]:
            if s.get(f"deepconf-{v}") is not None:
                p[f"deepconf-{v}"] = s[f"deepconf-{v}"]
                p[f"deepconf-{v}_tokens_per_problem"] = s[f"deepconf-{v}_tokens_per_problem"]
        points[STAGE_TITLES[name]] = p
    plot_accuracy_vs_tokens(points, out / "accuracy_vs_tokens.png")
    plot_accuracy_by_level({STAGE_TITLES[n]: summary["stages"][n]["by_level"] for n in STAGES
                            if summary["stages"].get(n)}, out / "accuracy_by_level.png",
                           title="Held-out pass@1 by difficulty level")
    parts = [
        "# H1R demo: the Falcon-H1R recipe on a tiny hybrid model\n\n",
        f"Curriculum: {summary['data']['train']} SFT traces of {summary['data']['train_prompts']} training problems, "
        f"{summary['data']['test']} held-out problems (5 levels). Model: `{cfg['preset']}` preset. "
        f"Sampling: temperature {cfg['temperature']}, top-p {cfg['top_p']}, at most {cfg['max_tokens']} tokens; "
        f"K = {k} samples per problem. Seed {cfg['seed']}, {cfg['threads']} thread(s). "
        f"Wall time {summary['seconds']['total']:.0f} s.\n\n",
        "## Accuracy and tokens by stage\n\n", summary_table(summary),
        f"\npass@1 is averaged over the K samples (± its standard error); maj@{k} and DeepConf@{k} "
        "count every generated token per problem (DeepConf's stopped traces included). The random model "
        "is sampled once per problem.\n",
        "\n![accuracy against tokens](accuracy_vs_tokens.png)\n",
        "\n## By difficulty level\n\n", level_table(summary), "\n![accuracy by level](accuracy_by_level.png)\n",
        "\n## Recipe settings\n\n",
        f"- SFT: {cfg['sft_steps']} steps of {cfg['sft_batch_size']} traces, lr {cfg['sft_lr']} (cosine), "
        + ("uniform weighting" if cfg["weighting"] == "none" else
           f"difficulty weighting `{cfg['weighting']}` from the level labels (levels 1-2 easy x0.5, 3 medium x1, "
           "4-5 hard x1.5)")
        + ", loss on the final assistant turn, packed rows with state resets.\n",
        f"- GRPO: {cfg['grpo_steps']} steps of {cfg['grpo_prompts_per_step']} prompts x {cfg['grpo_generations']} "
        f"rollouts at temperature {cfg['grpo_temperature']}, lr {cfg['grpo_lr']}, math correctness + format reward, "
        "no KL, clip-higher (0.2 / 0.28), zero-advantage groups dropped and back-filled. The difficulty filter "
        "(8 samples per training prompt) is off: it would cost more than the whole GRPO stage here.\n",
        f"- DeepConf: online, budget K = {k}, {cfg['deepconf_warmup']} warm-up traces, {cfg['deepconf_window']}-token "
        "confidence windows (the paper's 2,048 suits 10k-token traces); low keeps the top 10% of the warm-up "
        "traces' confidence (with few warm-up traces: the single most confident one), high the top 90%.\n",
    ]
    curves = []
    for run, keys in (("sft", ("loss", "lr", "grad_norm")), ("grpo", None)):
        metrics = out / "runs" / run / "metrics.jsonl"
        if metrics.is_file() and plot_training_curves(metrics, out / f"{run}_curves.png", keys):
            curves.append(f"![{run} training curves]({run}_curves.png)\n")
    if curves:
        parts += ["\n## Training curves\n\n", *curves]
    cpu = summary.get("cpu_seconds", {})
    parts.append("\n## Time per stage\n\n| stage | wall (s) | CPU (s) |\n|---|---|---|\n"
                 + "".join(f"| {k_} | {v:.1f} | {cpu.get(k_, float('nan')):.1f} |\n"
                           for k_, v in summary["seconds"].items())
                 + "\nCPU time is this process's; a wall time well above it means the CPU was shared.\n")
    if summary["notes"]:
        parts.append("\n## Notes\n\n" + "".join(f"- {n}\n" for n in summary["notes"]))
    report = out / "report.md"
    atomic_write_text(report, "".join(parts))
    return report

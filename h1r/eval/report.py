"""Evaluation reports: a Markdown table plus PNG plots (matplotlib, Agg backend, no display needed).

Plots: accuracy against tokens for each method (pass@1 at tokens per sample; maj@k and DeepConf at
tokens per problem), accuracy by difficulty level, and training curves from a run's metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from h1r.utils.io import atomic_write_text

CURVE_KEYS = ("loss", "reward", "accuracy", "response_length", "entropy", "clip_fraction", "lr", "grad_norm")
_METHOD_RE = re.compile(r"^(maj@\d+|deepconf[a-z0-9@-]*)$")  # method columns, not their _tokens


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def method_points(summary: dict[str, dict]) -> dict[str, list[tuple[str, float, float]]]:
    """{benchmark: [(method, tokens per problem, accuracy)]} from summarize() output: pass@1 costs one
    sample, maj@k costs k samples, DeepConf what it reported."""
    points = {}
    for bench, s in summary.items():
        pts = [("pass@1", s["tokens_per_sample"], s["pass@1"])]
        for key, value in sorted(s.items(), key=lambda kv: _method_order(kv[0])):
            if key.startswith("maj@"):
                pts.append((key, int(key[4:]) * s["tokens_per_sample"], value))
            elif _METHOD_RE.match(key):
                pts.append((key, s.get(f"{key}_tokens_per_problem", s["tokens_per_problem"]), value))
        points[bench] = pts
    return points


def _method_order(name: str) -> tuple:
    return (0 if name.startswith("maj@") else 1, int(name[4:]) if name.startswith("maj@") else 0, name)


def markdown_table(summary: dict[str, dict]) -> str:
    extra = sorted({k for s in summary.values() for k in s if k.startswith("pass@") and k not in ("pass@1", "pass@1_se")})
    methods = sorted({k for s in summary.values() for k in s if _METHOD_RE.match(k)}, key=_method_order)
    head = ["benchmark", "problems", "k", "pass@1 (%)", *[f"{k} (%)" for k in extra + methods], "tokens/sample", "tokens/problem"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, s in summary.items():
        p1 = f"{_pct(s['pass@1'])} ± {_pct(s['pass@1_se'])}"
        cells = [bench, str(s["problems"]), str(s["samples_per_problem"]), p1,
                 *[_pct(s.get(k)) for k in extra + methods], f"{s['tokens_per_sample']:.0f}", f"{s['tokens_per_problem']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot_accuracy_vs_tokens(summary: dict[str, dict], path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"pass@1": "o"}
    for bench, pts in method_points(summary).items():
        pts = sorted(pts, key=lambda p: p[1])
        line = ax.plot([t for _, t, _ in pts], [100 * a for _, _, a in pts], ":", alpha=0.5, label=bench)[0]
        for method, t, a in pts:
            m = markers.setdefault(method, "osD^v<>ph*"[len(markers) % 10])
            ax.scatter([t], [100 * a], marker=m, color=line.get_color(), zorder=3)
            ax.annotate(method, (t, 100 * a), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against tokens")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_by_level(by_level: dict[str, dict], path: str | Path, title: str = "Accuracy by difficulty") -> Path:
    """by_level: {level: {"pass@1": float, "problems": int}} (metrics.accuracy_by), or
    {series: {level: {...}}} to compare several (e.g. stages)."""
    plt = _pyplot()
    series = by_level if all(isinstance(v, dict) and "pass@1" not in v for v in by_level.values()) else {"": by_level}
    levels = sorted({lv for s in series.values() for lv in s}, key=lambda v: (float(v) if v.replace(".", "", 1).isdigit() else math.inf, v))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(series))
    for j, (name, s) in enumerate(series.items()):
        xs = [i + j * width for i in range(len(levels))]
        ax.bar(xs, [100 * s.get(lv, {}).get("pass@1", 0.0) for lv in levels], width, label=name or None)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(levels))], levels)
    ax.set_xlabel("difficulty level")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a MetricsLogger metrics.jsonl; a torn last line is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def plot_training_curves(metrics_path: str | Path, path: str | Path, keys: tuple[str, ...] | None = None) -> Path | None:
    """One panel per metric against step; None when the file has nothing to plot."""
    rows = read_metrics(metrics_path)
    present = [k for k in (keys or CURVE_KEYS) if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys and not present:  # unknown names: take the first numeric columns
        present = [k for k in rows[0] if k not in ("step", "time") and isinstance(rows[0][k], (int, float))][:6] if rows else []
    if not present:
        return None
    plt = _pyplot()
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([s for s, _ in pts], [v for _, v in pts])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(out_dir: str | Path, summary: dict[str, dict], title: str = "H1R evaluation",
                 by_level: dict | None = None, run_dir: str | Path | None = None, notes: str = "") -> Path:
    """report.md plus the plots that apply, in `out_dir`; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n\n", notes.strip() + "\n\n" if notes.strip() else "", "## Results\n\n", markdown_table(summary),
             "\npass@1 is averaged over the k samples per problem (± its standard error from sampling).\n"]
    if summary:
        plot_accuracy_vs_tokens(summary, out / "accuracy_vs_tokens.png")
        parts.append("\n![accuracy against tokens](accuracy_vs_tokens.png)\n")
    if by_level:
        plot_accuracy_by_level(by_level, out / "accuracy_by_level.png")
        parts.append("\n## By difficulty\n\n![accuracy by difficulty](accuracy_by_level.png)\n")
    if run_dir is not None and (Path(run_dir) / "metrics.jsonl").is_file():
        if plot_training_curves(Path(run_dir) / "metrics.jsonl", out / "training_curves.png"):
            parts.append("\n## Training\n\n![training curves](training_curves.png)\n")
    report = out / "report.md"
    atomic_write_text(report, "".join(parts))
    return report

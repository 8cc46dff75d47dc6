"""The evaluation driver: `evaluate(llm, problems, n, method, sampling, out_dir)`.

Methods
  sample         n samples per problem: pass@1 averaged over the n (± standard error), unbiased pass@k
  majority       the same samples, headlined by maj@n (maj@k for smaller k too)
  deepconf-low   online DeepConf per problem with a budget of n traces (h1r.deepconf.engine.solve_many):
  deepconf-high  keep the top 10% / 90% of the warm-up traces' confidence; every generated token counts

Resuming: every graded sample (DeepConf: every solved problem) is appended to a JSONL file in
`out_dir` the moment it finishes (`SampleStore`), and a restarted evaluation skips what is there.
Sample i of problem p is drawn with its own seed `sample_seed(seed, p, i)`, and the engine's noise
depends only on a sample's seed and position, so a resumed run draws the very samples the killed
one would have drawn. A manifest beside the records refuses to mix runs with different settings.

Sample mode drives the engine directly (add requests, step, collect) so that records are written as
each sample finishes rather than at the end of a batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from h1r.errors import ConfigError, DataError
from h1r.eval.benchmarks import Problem, load_benchmark, load_jsonl_benchmark, normalize_gold

METHODS = ("sample", "majority", "deepconf-low", "deepconf-high")
FALCON_SYSTEM_PROMPT = (
    "You are Falcon, a helpful AI assistant created by Technology Innovation Institute (TII). To answer the "
    "user\u2019s question, you first think about the reasoning process and then provide the user with the answer. "
    "The reasoning process is enclosed within <think> </think> tags, i.e., <think> reasoning process here "
    "</think> answer here."
)


# ---------------------------------------------------------------------------------------------- problems


def load_chat_jsonl(path: str | Path, name: str | None = None, limit: int | None = None) -> list[Problem]:
    """Problems from rows with `messages` (ending with the user turn, or with an assistant turn that is
    dropped) and `answer`, as `h1r data synth` writes them (test.jsonl). The whole conversation,
    system turn included, is kept in meta["messages"]; `level`, `family`, `id` ... land in meta."""
    from h1r.data.difficulty import prompt_messages
    from h1r.train.data import read_rows

    path = Path(path)
    bench = name or path.stem
    problems = []
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        msgs = prompt_messages(row, where)
        if "answer" not in row:
            raise DataError(f"{where}: missing key 'answer' (keys present: {', '.join(sorted(row))})")
        try:
            answer = normalize_gold(row["answer"])
        except ValueError as e:
            raise DataError(f"{where}: bad 'answer': {e}") from None
        kind = row.get("kind", "math")
        if kind not in ("math", "choice"):
            raise DataError(f"{where}: kind must be math or choice for a messages file, got {kind!r}")
        meta = {k: v for k, v in row.items() if k not in ("messages", "answer")}
        meta["messages"] = msgs
        pid = f"{bench}/{row.get('id', len(problems))}"
        problems.append(Problem(pid, bench, msgs[-1]["content"], answer, kind, meta))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{path}: no problems in file")
    return problems


def load_problems(names: str | Sequence[str], data_dir: str | Path | None = None, limit: int | None = None,
                  prompt_key: str = "prompt", answer_key: str = "answer", kind: str = "math") -> dict[str, list[Problem]]:
    """Benchmarks by name (`aime25`, `math500`, ...) or JSONL paths, optionally named `NAME=PATH`.
    A file whose rows carry `messages` is read as a chat file (the synthetic held-out set); any other
    file with the declared schema (`prompt_key`, `answer_key`, `kind`)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise DataError("no benchmarks given")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    out: dict[str, list[Problem]] = {}
    for spec in names:
        label, _, path = spec.partition("=") if "=" in spec else (None, "", spec)
        if path.endswith(".jsonl"):
            p = Path(path)
            if not p.is_file():
                raise DataError(f"{p}: no such benchmark file")
            first = _first_row(p)
            if "messages" in first and prompt_key not in first:
                probs = load_chat_jsonl(p, label, limit)
            else:
                id_key = "id" if "id" in first else None
                probs = load_jsonl_benchmark(p, prompt_key, answer_key, kind, id_key=id_key, name=label, limit=limit)
        else:
            probs = load_benchmark(path, data_dir, limit)
        if probs[0].benchmark in out:
            raise DataError(f"benchmark {probs[0].benchmark!r} given twice (name files with NAME=PATH)")
        out[probs[0].benchmark] = probs
    return out


def _first_row(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object")
                return row
    raise DataError(f"{path}: no problems in file")


def conversation(problem: Problem, system: str | None = None) -> list[dict]:
    """The chat the model sees: the problem's own conversation (chat files) or its prompt as the user
    turn, with `system` first unless the conversation already has a system turn."""
    msgs = list(problem.meta.get("messages") or [{"role": "user", "content": problem.prompt}])
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


# ---------------------------------------------------------------------------------------------- seeds


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    digest = hashlib.sha256(f"h1r-eval/{seed}/{problem_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


# ---------------------------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    method: str
    n: int
    summary: dict[str, dict]  # {benchmark: metrics.summarize_benchmark(...)}
    by_level: dict[str, dict]  # {benchmark: {level: {"pass@1", "problems"}}} for benchmarks with levels
    records_path: Path
    records: list[dict]


def default_ks(n: int) -> list[int]:
    return sorted({2 ** i for i in range(int(math.log2(n)) + 1)} | {n}) if n >= 1 else []


def _flatten(problems) -> list[Problem]:
    if isinstance(problems, dict):
        return [p for ps in problems.values() for p in ps]
    return list(problems)


def _manifest(path: Path, settings: dict) -> None:
    """Refuse to append to records written with different settings."""
    from h1r.utils.io import atomic_write_json

    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"{path.parent} holds an evaluation with other settings ({detail}); "
                              "use another --out directory")
        return
    atomic_write_json(path, settings)


def evaluate(llm, problems, n: int, method: str = "sample", sampling=None, out_dir: str | Path = "h1r-eval",
             system: str | None = None, seed: int = 0, ks: Sequence[int] | None = None, warmup: int | None = None,
             progress: bool = True, timeout: float = 5.0, limits=None, chunk: int = 16,
             model_name: str | None = None, deepconf_options: dict | None = None) -> EvalResult:
    """Evaluate `llm` (an h1r.engine.LLM) on `problems` ({benchmark: [Problem]} or a list) with `method`.

    `sampling`: SamplingParams (n, seed and logprobs are set per request); default T=0.6, top-p 0.95,
    no token limit beyond the context. `warmup`: DeepConf warm-up traces (default max(2, n // 4)).
    `chunk`: problems per DeepConf batch (the unit a killed DeepConf evaluation loses).
    `deepconf_options`: further DeepConfConfig fields, e.g. {"window": 16, "tail": 16} for short traces
    (a trace shorter than the window is never stopped early; the default window is 2,048 tokens).
    """
    from h1r.engine.sampling_params import SamplingParams
    from h1r.eval.metrics import accuracy_by, summarize
    from h1r.eval.records import SampleStore

    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    probs = _flatten(problems)
    if not probs:
        raise DataError("no problems to evaluate")
    if len({p.id for p in probs}) != len(probs):
        raise DataError("problem ids are not unique")
    sampling = sampling or SamplingParams(temperature=0.6, top_p=0.95, max_tokens=None)
    ks = sorted({k for k in (ks or default_ks(n)) if 1 <= k <= n})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deepconf = method.startswith("deepconf")
    stem = method if deepconf else "samples"
    settings = {"model": model_name, "system": system, "seed": seed,
                "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_p", "top_k", "min_p", "max_tokens",
                                                               "repetition_penalty", "presence_penalty")}}
    if deepconf:
        settings.update(n=n, warmup=_warmup(n, warmup), deepconf=dict(deepconf_options or {}))
    _manifest(out / f"{stem}.manifest.json", settings)
    with SampleStore(out / f"{stem}.jsonl") as store:
        if deepconf:
            _run_deepconf(llm, probs, n, method, sampling, store, system, seed, _warmup(n, warmup), chunk,
                          timeout, progress, deepconf_options or {})
        else:
            _run_samples(llm, probs, n, sampling, store, system, seed, timeout, limits, progress)
        records = store.records()
    wanted = {p.id for p in probs}
    records = [r for r in records if r["problem_id"] in wanted and r["sample_index"] < (1 if deepconf else n)]
    if deepconf:
        plain = [dict(problem_id=r["problem_id"], benchmark=r["benchmark"], sample_index=j, **w)
                 for r in records for j, w in enumerate(r["warmup"])]
        dc: dict[str, dict] = {}
        for r in records:
            dc.setdefault(r["benchmark"], {}).setdefault(method, {})[r["problem_id"]] = r
        summary = summarize(plain, ks=[k for k in ks if k <= _warmup(n, warmup)], deepconf=dc)
    else:
        summary = summarize(records, ks=ks)
    by_level = {}
    for bench in summary:
        rs = [r for r in records if r["benchmark"] == bench and r.get("level") is not None]
        if rs:
            by_level[bench] = accuracy_by(rs, "level")
    return EvalResult(method, n, summary, by_level, out / f"{stem}.jsonl", records)


def _warmup(n: int, warmup: int | None) -> int:
    w = max(2, n // 4) if warmup is None else warmup
    if not 1 <= w <= n:
        raise ConfigError(f"DeepConf warm-up traces must be in [1, n={n}], got {w}")
    return min(w, n)


# ---------------------------------------------------------------------------------------------- sample mode


def _run_samples(llm, probs: list[Problem], n: int, sampling, store, system, seed, timeout, limits, progress):
    """Every missing (problem, sample) as its own n=1 request; graded and stored as they finish."""
    from tqdm import tqdm

    from h1r.eval.records import grade_records

    todo = [(p, i) for p in probs for i in range(n) if not store.is_done(p.id, i)]
    if not todo:
        return
    engine, tok = llm.engine, llm.tokenizer
    ids_of = {}
    for p in probs:
        ids_of[p.id] = tok.apply_chat_template(conversation(p, system), add_generation_prompt=True, tokenize=True)
    window = 4 * engine.config.max_num_seqs
    debug_sleep = float(os.environ.get("H1R_DEBUG_EVAL_SLEEP", "0") or 0)  # tests: time to kill a run
    names = itertools.count()
    live: dict[str, tuple[Problem, int]] = {}
    queue = iter(todo)
    bar = tqdm(total=len(probs) * n, initial=len(probs) * n - len(todo), desc="eval", unit="sample",
               disable=not progress, dynamic_ncols=True)
    try:
        while True:
            while len(live) < window:
                item = next(queue, None)
                if item is None:
                    break
                p, i = item
                rid = f"h1r-eval-{id(store)}-{next(names)}"
                params = dataclasses.replace(sampling, n=1, seed=sample_seed(seed, p.id, i), logprobs=None,
                                             stop_hook_factory=None)
                engine.add_request(rid, ids_of[p.id], params)
                live[rid] = (p, i)
            if not live:
                break
            engine.step()
            done = [rid for rid in live if engine.requests[rid].finished]
            if not done:
                continue
            outs = [engine.get_output(rid) for rid in done]
            for rid in done:
                engine.release(rid)
            items = [live.pop(rid) for rid in done]
            comp = [o.outputs[0] for o in outs]
            recs = grade_records([p for p, _ in items], [i for _, i in items], [c.text for c in comp],
                                 [len(c.token_ids) for c in comp], timeout=timeout, limits=limits)
            for rec, c in zip(recs, comp):
                rec["finish_reason"] = c.finish_reason
                store.add(rec)
                if debug_sleep:
                    time.sleep(debug_sleep)
            bar.update(len(recs))
            bar.set_postfix(tok=engine.stats.generated_tokens, refresh=False)
    finally:
        bar.close()
        for rid in live:  # interrupted: leave the engine clean for the caller
            engine.abort_request(rid)
            engine.release(rid)


# ---------------------------------------------------------------------------------------------- DeepConf


def _grade_answers(problems: list[Problem], answers: list[str | None], timeout: float) -> list[bool]:
    from h1r.rewards.choice import grade_choice
    from h1r.rewards.parallel import grade_answers

    out = [False] * len(problems)
    math_idx = [i for i, p in enumerate(problems) if p.kind == "math"]
    for i, ok in zip(math_idx, grade_answers([answers[i] for i in math_idx], [problems[i].answer for i in math_idx],
                                             timeout)):
        out[i] = ok
    for i, p in enumerate(problems):
        if p.kind == "choice" and answers[i] is not None:
            out[i] = grade_choice(f"\\boxed{{{answers[i]}}}", p.answer)
    return out


def _run_deepconf(llm, probs: list[Problem], n: int, method: str, sampling, store, system, seed, warmup, chunk,
                  timeout, progress, options: dict):
    """Online DeepConf per problem, `chunk` problems at a time through `solve_many`; one record each."""
    from tqdm import tqdm

    try:
        from h1r.deepconf.engine import solve_many
    except ImportError as e:  # the engine integration lands separately
        raise ConfigError(f"DeepConf on the engine is not available in this build ({e})") from None
    from h1r.deepconf.run import DeepConfConfig

    if any(p.kind == "code" for p in probs):
        raise ConfigError("DeepConf votes on final answers; it does not apply to code benchmarks")
    try:
        cfg = DeepConfConfig(**{"mode": "online", **options, "variant": method.split("-")[1], "budget": n,
                                "warmup_traces": warmup})
    except TypeError as e:
        raise ConfigError(f"bad DeepConf option: {e}") from None
    todo = [p for p in probs if not store.is_done(p.id, 0)]
    bar = tqdm(total=len(probs), initial=len(probs) - len(todo), desc=method, unit="problem",
               disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            results = solve_many(llm, [conversation(p, system) for p in part], cfg, sampling,
                                 seeds=[sample_seed(seed, p.id, 0) for p in part], keep_text=False)
            answers = [r.answer for r in results]
            correct = _grade_answers(part, answers, timeout)
            warm_probs = [p for p, r in zip(part, results) for t in r.traces if t.stage == "warmup"]
            warm = [t for r in results for t in r.traces if t.stage == "warmup"]
            warm_ok = _grade_answers(warm_probs, [t.answer for t in warm], timeout)
            j = 0
            for p, r, ok in zip(part, results, correct):
                traces = [t for t in r.traces if t.stage == "warmup"]
                rec = {"problem_id": p.id, "benchmark": p.benchmark, "sample_index": 0, "method": method,
                       "correct": bool(ok), "answer": r.answer, "tokens": int(r.tokens["total"]),
                       "traces": len(r.traces), "voted": sum(t.voted for t in r.traces),
                       "stopped": sum(t.finish_reason == "confidence" for t in r.traces),
                       "threshold": r.threshold if r.threshold is None or math.isfinite(r.threshold) else None,
                       "ended_by": r.ended_by,
                       "warmup": [{"correct": bool(warm_ok[j + m]), "answer": t.answer, "tokens": t.num_tokens}
                                  for m, t in enumerate(traces)]}
                j += len(traces)
                if p.meta.get("level") is not None:
                    rec["level"] = p.meta["level"]
                store.add(rec)
            bar.update(len(part))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- report


def level_table(by_level: dict[str, dict]) -> str:
    """Markdown: accuracy per difficulty level, one column per benchmark."""
    benches = list(by_level)
    levels = sorted({lv for b in benches for lv in by_level[b]}, key=lambda v: (len(v), v))
    rows = ["| level | " + " | ".join(f"{b} (%)" for b in benches) + " |", "|---|" + "---|" * len(benches)]
    for lv in levels:
        cells = [f"{100 * by_level[b][lv]['pass@1']:.1f} (n={by_level[b][lv]['problems']})" if lv in by_level[b]
                 else "–" for b in benches]
        rows.append(f"| {lv} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_eval_report(result: EvalResult, out_dir: str | Path, title: str = "H1R evaluation", notes: str = "") -> Path:
    """report.md + PNGs (h1r.eval.report.write_report) with a per-level table when there are levels."""
    from h1r.eval.report import write_report
    from h1r.utils.io import atomic_write_text

    path = write_report(out_dir, result.summary, title, by_level=result.by_level or None, notes=notes)
    if result.by_level:
        what = "DeepConf accuracy" if result.method.startswith("deepconf") else "pass@1"
        text = path.read_text(encoding="utf-8") + f"\n### {what} by level\n\n" + level_table(result.by_level)
        atomic_write_text(path, text)
    return path

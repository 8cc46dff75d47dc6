"""Benchmark loaders: every file's schema becomes one `Problem` type.

Fields read per file (see SOURCES.md beside the data):
- aime24/aime25/aime26/hmmt25/math500: `prompt`, `answer` (int or LaTeX string).
- gsm8k: `prompt`, `answer` = full solution; the gold is the number after `####` (commas dropped).
- amc23: `problem`, `answer` (float, 27.0 -> "27"), `id`, `url`; the step-by-step instruction the
  other math files carry is appended so that all math prompts look alike.
- gpqa_diamond: `prompt` (options inside), `answer` = `\\boxed{D}` -> "D".
- livecodebench: `problem`, `starter_code`, `testtype`, `tests`; the prompt is built in the
  LiveCodeBench style (stdin programs, or a `class Solution` to complete).
User files: `load_jsonl_benchmark(path, prompt_key=..., answer_key=..., kind=...)`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from h1r.errors import DataError

Kind = Literal["math", "choice", "code"]
KINDS = ("math", "choice", "code")
STEP_BY_STEP = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Problem:
    id: str
    benchmark: str
    prompt: str  # the user message; a chat template goes around it, not inside
    answer: str  # gold: a math answer, an option letter, or "" for code (the tests are in meta)
    kind: Kind
    meta: dict = field(default_factory=dict)

    def to_sample(self) -> dict:
        """Flat dict for reward functions and JSONL: id, benchmark, prompt, answer, kind, **meta."""
        d = asdict(self)
        meta = d.pop("meta")
        return {**meta, **d}


@dataclass(frozen=True)
class _Spec:
    file: str
    kind: Kind
    prompt_key: str = "prompt"
    answer_key: str | None = "answer"
    add_instruction: bool = False


BENCHMARKS: dict[str, _Spec] = {
    "aime24": _Spec("aime24.jsonl", "math"),
    "aime25": _Spec("aime25.jsonl", "math"),
    "aime26": _Spec("aime26.jsonl", "math"),
    "hmmt25": _Spec("hmmt25.jsonl", "math"),
    "math500": _Spec("math500.jsonl", "math"),
    "gsm8k": _Spec("gsm8k.jsonl", "math"),
    "amc23": _Spec("amc23.jsonl", "math", prompt_key="problem", add_instruction=True),
    "gpqa_diamond": _Spec("gpqa_diamond.jsonl", "choice"),
    "livecodebench": _Spec("livecodebench_v5_subset.jsonl", "code", prompt_key="problem", answer_key=None),
}
ALIASES = {"gpqa": "gpqa_diamond", "lcb": "livecodebench", "livecodebench_v5": "livecodebench", "math_500": "math500"}


def default_data_dir() -> Path:
    """$H1R_BENCH_DIR, else ../shared/data/benchmarks beside the repository."""
    env = os.environ.get("H1R_BENCH_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    path = Path(data_dir) if data_dir else default_data_dir()
    if not path.is_dir():
        how = "--data-dir" if data_dir else "--data-dir (or set H1R_BENCH_DIR)"
        raise DataError(f"benchmark data directory not found: {path}; pass {how} pointing at the benchmark JSONL files")
    return path


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (or a .jsonl path)")
    return key


# ---------------------------------------------------------------------------------------------- gold


def normalize_gold(value) -> str:
    """A gold answer as a string: ints as is, integral floats without `.0`, `#### N` -> N, `\\boxed{x}` -> x."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an answer: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if "####" in text:  # GSM8K: solution text, then "#### 1,234"
        text = text.rsplit("####", 1)[1].strip()
        if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
            text = text.replace(",", "")
    m = re.fullmatch(r"\\boxed\{(.*)\}", text, re.DOTALL)
    if m:
        text = m.group(1).strip()
    if not text:
        raise ValueError("empty answer")
    return text


# ---------------------------------------------------------------------------------------------- code


def code_prompt(question: str, starter_code: str = "") -> str:
    """The LiveCodeBench generation prompt: stdin/stdout program, or complete the starter code."""
    head = (
        "You will be given a question (problem specification) and will generate a correct Python program "
        "that matches the specification and passes all tests.\n\n"
        f"Question: {question.strip()}\n\n"
    )
    if starter_code.strip():
        return head + (
            "You will use the following starter code to write the solution to the problem and enclose your "
            f"code within delimiters.\n```python\n{starter_code.rstrip()}\n```\n"
        )
    return head + (
        "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on "
        "the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
        "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
        "```python\n# YOUR CODE HERE\n```\n"
    )


def function_name(starter_code: str) -> str | None:
    """The method the functional tests call: the last `def name(self, ...)` of the starter code."""
    names = re.findall(r"def\s+(\w+)\s*\(\s*self\b", starter_code or "")
    return names[-1] if names else None


def _code_meta(row: dict, where: str) -> dict:
    tests = row.get("tests")
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{where}: code problem needs a non-empty 'tests' list")
    for t in tests:
        if not isinstance(t, dict) or "input" not in t or "output" not in t:
            raise DataError(f"{where}: each test needs 'input' and 'output'")
    starter = row.get("starter_code") or ""
    testtype = row.get("testtype") or tests[0].get("testtype") or ("functional" if starter else "stdin")
    if testtype not in ("stdin", "functional"):
        raise DataError(f"{where}: testtype must be 'stdin' or 'functional', got {testtype!r}")
    meta = {"tests": tests, "starter_code": starter, "testtype": testtype}
    if testtype == "functional":
        meta["fn_name"] = row.get("fn_name") or function_name(starter)
        if not meta["fn_name"]:
            raise DataError(f"{where}: functional problem needs 'fn_name' or a starter_code with a method")
    return meta


# ---------------------------------------------------------------------------------------------- loading


def _rows(path: Path):
    """(line number, dict) per non-empty line; bad JSON raises DataError naming file:line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def load_jsonl_benchmark(
    path: str | os.PathLike,
    prompt_key: str = "prompt",
    answer_key: str | None = "answer",
    kind: Kind = "math",
    id_key: str | None = None,
    name: str | None = None,
    add_instruction: bool = False,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a JSONL file with a declared schema.

    `prompt_key`/`answer_key` name the fields; the answer may be a number, LaTeX, `#### N` or
    `\\boxed{X}`. For kind="code" the row needs `tests` ([{input, output}]) and, for functional
    tests, `starter_code` (or `fn_name`); `answer_key` may be None. Other fields land in `meta`.
    `add_instruction` appends the step-by-step \\boxed{} instruction to math prompts.
    """
    path = Path(path)
    if kind not in KINDS:
        raise DataError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    bench = name or path.stem
    problems: list[Problem] = []
    for lineno, row in _rows(path):
        where = f"{path}:{lineno}"
        needed = [k for k in (prompt_key, answer_key, id_key) if k]
        missing = [k for k in needed if k not in row]
        if missing:
            raise DataError(f"{where}: missing key {missing[0]!r} (keys present: {', '.join(sorted(row)) or 'none'})")
        prompt = row[prompt_key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: {prompt_key!r} must be a non-empty string")
        pid = f"{bench}/{row[id_key] if id_key else len(problems)}"
        meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
        if kind == "code":
            meta.update(_code_meta(row, where))
            meta["question"] = prompt
            prompt = code_prompt(prompt, meta["starter_code"] if meta["testtype"] == "functional" else "")
            answer = ""
        else:
            try:
                answer = normalize_gold(row[answer_key])
            except ValueError as e:
                raise DataError(f"{where}: bad {answer_key!r}: {e}") from None
            if isinstance(row[answer_key], str) and row[answer_key].strip() != answer:
                meta["raw_answer"] = row[answer_key]  # e.g. GSM8K's worked solution
            if kind == "choice":
                if not re.fullmatch(r"[A-Z]", answer):
                    raise DataError(f"{where}: choice answer must be one option letter, got {answer!r}")
            if add_instruction and "\\boxed" not in prompt:
                prompt = prompt.rstrip() + "\n" + STEP_BY_STEP
        problems.append(Problem(pid, bench, prompt, answer, kind, meta))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{path}: no problems in file")
    if kind == "code":
        _drop_shared_tests(problems)
    return problems


def _drop_shared_tests(problems: list[Problem]) -> None:
    """Remove tests that one file attaches verbatim to many different problems.

    The LiveCodeBench subset carries the same 12 functional tests (digit-string inputs such as "7")
    on all 104 functional problems, whatever their signature; no correct solution passes them. A
    test (input, output) found on at least max(5, 10% of the problems) problems is treated as such
    contamination and dropped; the count is kept in meta["dropped_tests"].
    """
    seen: dict[tuple[str, str], int] = {}
    for p in problems:
        for key in {(str(t["input"]), str(t["output"])) for t in p.meta["tests"]}:
            seen[key] = seen.get(key, 0) + 1
    limit = max(5, -(-len(problems) // 10))
    shared = {k for k, n in seen.items() if n >= limit}
    if not shared:
        return
    for p in problems:
        kept = [t for t in p.meta["tests"] if (str(t["input"]), str(t["output"])) not in shared]
        if kept and len(kept) < len(p.meta["tests"]):
            p.meta["dropped_tests"] = len(p.meta["tests"]) - len(kept)
            p.meta["tests"] = kept


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Problem]:
    """A built-in benchmark by name (see BENCHMARKS/ALIASES), or a user file if `name` is a .jsonl path
    (read with the default schema: prompt, answer, math)."""
    if name.endswith(".jsonl") and Path(name).is_file():
        return load_jsonl_benchmark(name, limit=limit)
    key = canonical_name(name)
    spec = BENCHMARKS[key]
    path = resolve_data_dir(data_dir) / spec.file
    id_key = "id" if key in ("amc23", "livecodebench") else None
    return load_jsonl_benchmark(
        path, spec.prompt_key, spec.answer_key, spec.kind, id_key=id_key, name=key,
        add_instruction=spec.add_instruction, limit=limit,
    )


def load_benchmarks(names: str | list[str], data_dir: str | os.PathLike | None = None,
                    limit: int | None = None) -> dict[str, list[Problem]]:
    """Several benchmarks: `"aime25,math500"` or a list; keys are canonical names."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise DataError("no benchmarks given")
    out: dict[str, list[Problem]] = {}
    for n in names:
        probs = load_benchmark(n.strip(), data_dir, limit)
        out[probs[0].benchmark] = probs
    return out

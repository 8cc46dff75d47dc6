"""Code correctness: the last fenced Python block of a response, run against the sample's tests in
the sandbox (h1r/eval/sandbox.py); 1.0 only if every test passes."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from h1r.eval.sandbox import SampleResult, SandboxLimits, run_tests
from h1r.rewards.math import final_answer_text

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_NOT_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "plaintext", "json", "cpp", "c++", "c", "java",
               "javascript", "js", "rust", "go", "output", "input"}


def extract_code(response: str) -> str | None:
    """The last fenced code block (```python … ```, or unlabelled) after </think>, else anywhere."""
    for text in (final_answer_text(response or ""), response or ""):
        blocks = [body for lang, body in _FENCE_RE.findall(text) if lang.lower() not in _NOT_PYTHON]
        if blocks and blocks[-1].strip():
            return blocks[-1]
    return None


def run_sample(response: str, sample: dict, limits: SandboxLimits | None = None) -> SampleResult:
    """Extract the code from `response` and run it on `sample`'s tests (keys: tests, testtype, fn_name)."""
    code = extract_code(response)
    if code is None:
        return SampleResult(False, [], "no code block")
    tests = sample.get("tests") or []
    if not tests:
        raise ValueError(f"sample {sample.get('id', '?')} has no tests")
    testtype = sample.get("testtype") or ("functional" if sample.get("fn_name") else "stdin")
    return run_tests(code, tests, testtype, sample.get("fn_name"), limits)


def run_samples(responses: Sequence[str], samples: Sequence[dict], limits: SandboxLimits | None = None,
                workers: int | None = None) -> list[SampleResult]:
    """Many samples at once, one sandbox process each, `workers` at a time (default: CPU count)."""
    if len(responses) != len(samples):
        raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
    workers = max(1, min(workers or os.cpu_count() or 1, len(responses) or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="h1r-sandbox") as ex:
        return list(ex.map(lambda rs: run_sample(rs[0], rs[1], limits), zip(responses, samples)))


def code_reward(responses: Sequence[str], samples: Sequence[dict], limits: SandboxLimits | None = None,
                workers: int | None = None, **_) -> list[float]:
    return [1.0 if r.passed else 0.0 for r in run_samples(responses, samples, limits, workers)]

"""Benchmark loaders: every file, its row count (SOURCES.md), normalised answers, user files, errors."""

import json

import pytest

from h1r.errors import DataError
from h1r.eval.benchmarks import (
    STEP_BY_STEP, default_data_dir, load_benchmark, load_benchmarks, load_jsonl_benchmark, normalize_gold,
    resolve_data_dir,
)

ROWS = {"aime24": 30, "aime25": 30, "aime26": 30, "hmmt25": 30, "math500": 500, "gsm8k": 1319, "amc23": 40,
        "gpqa_diamond": 198, "livecodebench": 279}


@pytest.mark.parametrize("name,rows", ROWS.items())
def test_every_file_loads_with_its_row_count(name, rows):
    problems = load_benchmark(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(p.benchmark == name and p.prompt.strip() for p in problems)
    if problems[0].kind == "math":
        assert all(p.prompt.rstrip().endswith(STEP_BY_STEP) and p.answer for p in problems)


def test_answers_are_normalised():
    assert [p.answer for p in load_benchmark("aime24", limit=2)] == ["204", "113"]
    amc = load_benchmark("amc23")
    assert amc[0].answer == "27" and amc[0].id == "amc23/0" and "27.0" not in [p.answer for p in amc]
    gsm = load_benchmark("gsm8k")
    assert gsm[0].answer == "18" and "####" in gsm[0].meta["raw_answer"]
    assert all("," not in p.answer and "#" not in p.answer for p in gsm)
    assert {p.answer for p in load_benchmark("gpqa")} == set("ABCD")
    assert load_benchmark("math500")[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert load_benchmark("hmmt25")[9].answer == r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"


def test_livecodebench_problems():
    problems = load_benchmark("lcb")
    stdin = [p for p in problems if p.meta["testtype"] == "stdin"]
    functional = [p for p in problems if p.meta["testtype"] == "functional"]
    assert (len(stdin), len(functional)) == (175, 104)
    assert all(p.kind == "code" and p.answer == "" and p.meta["tests"] for p in problems)
    assert all(p.meta["fn_name"] and f"def {p.meta['fn_name']}(" in p.meta["starter_code"] for p in functional)
    assert all("class Solution" in p.prompt and "```python" in p.prompt for p in functional)
    assert all("stdin" in p.prompt and not p.meta["starter_code"] for p in stdin)
    # the same 12 stray tests sit on every functional problem in the file; the loader drops them
    assert all(p.meta["dropped_tests"] == 12 and 2 <= len(p.meta["tests"]) <= 4 for p in functional)
    sample = functional[0].to_sample()
    assert sample["id"] == functional[0].id and sample["tests"] and sample["kind"] == "code"


def test_aliases_lists_and_unknown_names():
    assert list(load_benchmarks("aime25, gpqa", limit=1)) == ["aime25", "gpqa_diamond"]
    with pytest.raises(DataError, match="unknown benchmark 'aime99'.*known: aime24"):
        load_benchmark("aime99")
    with pytest.raises(DataError, match="no benchmarks"):
        load_benchmarks(" , ")


def test_data_dir_resolution(tmp_path, monkeypatch):
    assert (default_data_dir() / "SOURCES.md").is_file()
    monkeypatch.setenv("H1R_BENCH_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="--data-dir"):
        load_benchmark("aime24")
    (tmp_path / "aime24.jsonl").write_text('{"prompt": "1+1?", "answer": 2}\n')
    assert load_benchmark("aime24", data_dir=tmp_path)[0].answer == "2"
    with pytest.raises(DataError, match="not found"):
        resolve_data_dir(tmp_path / "nope")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_jsonl_with_declared_schema(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [{"q": "What is 6*7?", "a": 42, "uid": "x1", "level": 3},
                                         {"q": "Half of one?", "a": "\\frac{1}{2}", "uid": "x2", "level": 1}])
    probs = load_jsonl_benchmark(f, prompt_key="q", answer_key="a", id_key="uid", add_instruction=True)
    assert [p.id for p in probs] == ["mine/x1", "mine/x2"] and probs[0].answer == "42"
    assert probs[0].meta == {"uid": "x1", "level": 3} and probs[0].prompt.endswith(STEP_BY_STEP)
    f = _write(tmp_path / "mc.jsonl", [{"prompt": "Pick", "answer": "\\boxed{B}"}])
    assert load_jsonl_benchmark(f, kind="choice")[0].answer == "B"
    f = _write(tmp_path / "code.jsonl", [{"prompt": "Echo", "tests": [{"input": "1\n", "output": "1\n"}]}])
    p = load_jsonl_benchmark(f, answer_key=None, kind="code")[0]
    assert p.meta["testtype"] == "stdin" and "Echo" in p.prompt


@pytest.mark.parametrize("rows,kwargs,message", [
    ([{"prompt": "x"}], {}, r"bad\.jsonl:1: missing key 'answer' \(keys present: prompt\)"),
    (['{"prompt": "x", "answer": 1}', "{not json"], {}, r"bad\.jsonl:2: invalid JSON"),
    (['{"prompt": "x", "answer": 1}', "", "[1, 2]"], {}, r"bad\.jsonl:3: expected a JSON object"),
    ([{"prompt": "", "answer": 1}], {}, r":1: 'prompt' must be a non-empty string"),
    ([{"prompt": "x", "answer": None}], {}, r":1: bad 'answer'"),
    ([{"prompt": "x", "answer": "42"}], {"kind": "choice"}, r":1: choice answer must be one option letter"),
    ([{"prompt": "x"}], {"kind": "code", "answer_key": None}, r":1: code problem needs a non-empty 'tests' list"),
    ([{"prompt": "x", "tests": [{"input": "1"}]}], {"kind": "code", "answer_key": None}, r"'input' and 'output'"),
    ([{"prompt": "x", "testtype": "functional", "tests": [{"input": "1", "output": "1"}]}],
     {"kind": "code", "answer_key": None}, r"needs 'fn_name'"),
    ([{"prompt": "x", "answer": 1}], {"kind": "essay"}, r"kind must be one of"),
    ([], {}, r"no problems"),
])
def test_user_jsonl_errors_name_file_and_line(tmp_path, rows, kwargs, message):
    f = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_jsonl_benchmark(f, **kwargs)


def test_missing_user_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_jsonl_benchmark(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("raw,gold", [(204, "204"), (27.0, "27"), (2.5, "2.5"), ("x\n#### 1,234", "1234"),
                                      ("\\boxed{D}", "D"), (" \\frac12 ", "\\frac12"), ("025", "025")])
def test_normalize_gold(raw, gold):
    assert normalize_gold(raw) == gold

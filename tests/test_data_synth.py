"""The synthetic curriculum and its teacher: determinism, disjoint splits, gradable correct traces."""

import json
import math
import random
import re
from fractions import Fraction

import pytest

from h1r.data import teacher
from h1r.data.synth import DIFFICULTY, build_curriculum, is_test_prompt, write_curriculum
from h1r.data.tasks import FAMILIES, LEVELS
from h1r.errors import DataError
from h1r.rewards.math import answers_equal, extract_answer, grade_response

TRACE_RE = re.compile(r"<think>\n(?:[^\n]+\n)+</think>\n\\boxed\{([^{}\n]+)\}")
FAMILY_LEVELS = [(f, lv) for f in FAMILIES for lv in LEVELS]


def problems(family, level, n=25, seed="t"):
    rng = random.Random(f"{seed}/{family}/{level}")
    return [FAMILIES[family].generate(rng, level) for _ in range(n)]


# ---- an oracle that reads only the prompt text, independent of the family code -----------------
def oracle(prompt: str) -> str:
    if m := re.fullmatch(r"Compute ([\d+\-*()]+)\.", prompt):
        return str(eval(m.group(1)))
    if m := re.fullmatch(r"Compute (.+) mod (\d+)\.", prompt):
        return str(eval(m.group(1).replace("^", "**")) % int(m.group(2)))
    if m := re.fullmatch(r"Solve (.+)=(.+) for x\.", prompt):
        import sympy

        x = sympy.Symbol("x")
        to_sympy = lambda s: sympy.sympify(re.sub(r"(\d)([x(])", r"\1*\2", s))  # noqa: E731
        (sol,) = sympy.solve(to_sympy(m.group(1)) - to_sympy(m.group(2)), x)
        return str(sol)
    if m := re.fullmatch(r"Find gcd\((\d+),(\d+)\)\.", prompt):
        return str(math.gcd(int(m.group(1)), int(m.group(2))))
    if m := re.fullmatch(r"Convert (\d+) from base (\d+) to base (\d+)\.", prompt):
        value, b2, out = int(m.group(1), int(m.group(2))), int(m.group(3)), ""
        while value:
            value, r = divmod(value, b2)
            out = str(r) + out
        return out or "0"
    raise AssertionError(f"unexpected prompt {prompt!r}")


def arithmetic_parts_agree(line: str) -> bool:
    """Every `=`-separated part of a step that is plain arithmetic has the same value."""
    line = re.sub(r"^(check|common|\d+): ", "", line)
    for segment in line.split(", "):
        values = [eval(p, {"__builtins__": {}}) for p in segment.split("=") if re.fullmatch(r"[\d+\-*/() ]+", p)]
        values = [Fraction(v).limit_denominator() for v in values]
        if len(set(values)) > 1:
            return False
    return True


@pytest.mark.parametrize("family,level", FAMILY_LEVELS)
def test_every_family_and_level_gives_correct_gradable_traces(family, level):
    for p in problems(family, level):
        assert p.family == family and p.level == level
        assert p.answer == oracle(p.prompt), p.prompt
        wrong = str(int(p.answer) + 1)
        assert not answers_equal(wrong, p.answer)
        traces = teacher.traces(p, 4, random.Random(p.prompt))
        assert len(traces) == 4
        assert len(set(traces)) >= 2, f"only one distinct trace for {p.prompt}"
        for t in traces:
            m = TRACE_RE.fullmatch(t)
            assert m, f"bad format: {t!r}"
            assert m.group(1) == p.answer
            assert grade_response(t, p.answer) and answers_equal(extract_answer(t), p.answer)
            assert not grade_response(t.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{wrong}}}"), p.answer)
            steps = t.split("\n")[1:-2]
            assert all(arithmetic_parts_agree(s) for s in steps), t


def test_levels_get_harder():
    """More and bigger steps at higher levels: traces at level 5 are much longer than at level 1."""
    for family in FAMILIES:
        mean_len = []
        for level in (1, 5):
            ts = [t for p in problems(family, level, 40) for t in teacher.traces(p, 2, random.Random(p.prompt))]
            mean_len.append(sum(map(len, ts)) / len(ts))
        assert mean_len[1] > 1.4 * mean_len[0], (family, mean_len)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    args = dict(train_per_level=6, test_per_level=3, traces_per_problem=3)
    write_curriculum(tmp_path / "a", seed=7, **args)
    write_curriculum(tmp_path / "b", seed=7, **args)
    write_curriculum(tmp_path / "c", seed=8, **args)
    for name in ("train.jsonl", "train_prompts.jsonl", "test.jsonl", "synth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def prompts_of(rows):
    return {next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows}


def test_train_and_test_are_disjoint_across_seeds():
    a = build_curriculum(0, 40, 15, 1)
    b = build_curriculum(1, 40, 15, 1)
    train = prompts_of(a["train"]) | prompts_of(b["train"])
    test = prompts_of(a["test"]) | prompts_of(b["test"])
    assert len(test) > 2 * 25 * 10 and len(train) > 2 * 25 * 30
    assert not train & test
    assert all(is_test_prompt(p) for p in test) and not any(is_test_prompt(p) for p in train)
    assert prompts_of(a["train_prompts"]) == prompts_of(a["train"])


def test_row_schema_and_counts(tmp_path):
    m = write_curriculum(tmp_path, seed=3, train_per_level=4, test_per_level=2, traces_per_problem=3,
                         families=["gcd", "arith"], system="Reason, then box the answer.")
    read = lambda n: [json.loads(line) for line in (tmp_path / n).read_text().splitlines()]  # noqa: E731
    train, prompts, test = read("train.jsonl"), read("train_prompts.jsonl"), read("test.jsonl")
    assert m["rows"] == {"train": 2 * 5 * 4 * 3, "train_prompts": 2 * 5 * 4, "test": 2 * 5 * 2}
    assert (len(train), len(prompts), len(test)) == (120, 40, 20)
    for r in train:
        assert list(r) == ["id", "trace", "family", "level", "difficulty", "answer", "messages"]
        assert r["family"] in ("gcd", "arith") and r["id"].startswith(f"{r['family']}-{r['level']}-")
        assert r["difficulty"] == DIFFICULTY[r["level"]]
        assert [x["role"] for x in r["messages"]] == ["system", "user", "assistant"]
        assert grade_response(r["messages"][-1]["content"], r["answer"])
    for r in prompts + test:
        assert list(r) == ["id", "family", "level", "difficulty", "answer", "messages"]
        assert [x["role"] for x in r["messages"]] == ["system", "user"]
        assert r["answer"] == oracle(r["messages"][-1]["content"])
    by_id = {}
    for r in train:
        by_id.setdefault(r["id"], []).append(r["trace"])
    assert sorted(by_id) == sorted(r["id"] for r in prompts)
    assert all(sorted(t) == [0, 1, 2] for t in by_id.values())
    assert DIFFICULTY == {1: "easy", 2: "easy", 3: "medium", 4: "hard", 5: "hard"}


def test_no_system_prompt_by_default():
    rows = build_curriculum(0, 1, 1, 1, families=["linear"])
    assert all(r["messages"][0]["role"] == "user" for rows_ in rows.values() for r in rows_)


@pytest.mark.parametrize("kwargs,message", [
    (dict(families=["arith", "calculus"]), "calculus"),
    (dict(families=[]), "families"),
    (dict(families=["gcd", "gcd"]), "distinct"),
    (dict(train_per_level=-1), "train-per-level"),
    (dict(traces_per_problem=0), "traces-per-problem"),
    (dict(families=["arith"], train_per_level=5000), "family arith level 1"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    args = dict(seed=0, train_per_level=2, test_per_level=1, traces_per_problem=1) | kwargs
    with pytest.raises(DataError, match=message):
        build_curriculum(**args)

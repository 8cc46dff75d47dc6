"""Reward registry: built-ins, format penalty, GPQA letters, dispatch by kind, custom rewards."""

import pytest

from h1r.errors import ConfigError
from h1r.eval.benchmarks import load_benchmark
from h1r.rewards.choice import extract_choice, gold_letter
from h1r.rewards.registry import compute_rewards, format_ok, get_reward, list_rewards, register_reward


def test_builtins_registered():
    assert {"math", "format", "code", "choice", "correct"} <= set(list_rewards())
    with pytest.raises(ConfigError, match="unknown reward 'nope'.*known: "):
        get_reward("nope")


def test_math_reward_binary():
    samples = [{"answer": "204"}, {"answer": r"\frac{1}{576}"}, {"answer": "3"}]
    responses = [r"<think>x</think> \boxed{204}", r"\boxed{\dfrac{1}{576}}", r"\boxed{4}"]
    assert get_reward("math")(responses, samples) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no gold"):
        get_reward("math")(["x"], [{"id": "p1"}])
    with pytest.raises(ValueError, match="2 responses but 1 samples"):
        get_reward("math")(["a", "b"], [{"answer": "1"}])


@pytest.mark.parametrize("response,ok", [
    (r"<think>reasoning</think> The answer is \boxed{5}.", True),
    (r"reasoning</think>\boxed{5}", True),  # the prompt already opened <think>
    (r"<think>reasoning</think> The answer is 5.", False),  # no \boxed
    (r"<think>reasoning \boxed{5}", False),  # never closed
    (r"<think>a</think> b </think> \boxed{5}", False),  # two closings
    (r"<think>a</think> <think>b</think> \boxed{5}", False),
    (r"<think></think> \boxed{5}", False),  # empty reasoning
    (r"\boxed{5}", False),
])
def test_format_check(response, ok):
    assert format_ok(response) is ok


def test_format_reward_magnitude_and_code_kind():
    r = get_reward("format")
    assert r([r"<think>a</think>\boxed{1}", "junk"], [{}, {}], penalty=0.5) == [0.0, -0.5]
    code = "<think>plan</think>\n```python\nprint(1)\n```"
    assert r([code, r"<think>plan</think> \boxed{1}"], [{"kind": "code"}, {"kind": "code"}]) == [0.0, -1.0]


def test_gpqa_letters_on_real_file():
    problems = load_benchmark("gpqa_diamond")
    assert {p.answer for p in problems} <= set("ABCD")
    responses = [rf"<think>…</think> The answer is \boxed{{{p.answer}}}" for p in problems]
    assert get_reward("choice")(responses, [p.to_sample() for p in problems]) == [1.0] * len(problems)
    wrong = [rf"\boxed{{{'ABCD'[('ABCD'.index(p.answer) + 1) % 4]}}}" for p in problems]
    assert get_reward("choice")(wrong, [p.to_sample() for p in problems]) == [0.0] * len(problems)


@pytest.mark.parametrize("response,letter", [
    (r"\boxed{D}", "D"), (r"\boxed{(b)}", "B"), (r"\boxed{\text{C}}", "C"), (r"\boxed{A. 10^-4 eV}", "A"),
    ("The answer is (B).", "B"), ("Answer: **C**", "C"), ("the answer is a guess", None), (r"\boxed{Dog}", None),
    (r"\boxed{E}", None), ("", None),
])
def test_choice_extraction(response, letter):
    assert extract_choice(response) == letter


def test_gold_letter():
    assert gold_letter(r"\boxed{D}") == "D" and gold_letter("(a)") == "A"
    with pytest.raises(ValueError):
        gold_letter("42")


def test_correct_dispatches_by_kind_and_compute_rewards_weights():
    samples = [{"kind": "math", "answer": "2"}, {"kind": "choice", "answer": "C"}, {"answer": "7"}]
    responses = [r"<think>a</think>\boxed{2}", r"<think>a</think>\boxed{B}", r"no think \boxed{7}"]
    totals, parts = compute_rewards(responses, samples, {"correct": 1.0, "format": 0.5})
    assert parts == {"correct": [1.0, 0.0, 1.0], "format": [0.0, 0.0, -1.0]}
    assert totals == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="unknown sample kind"):
        get_reward("correct")(["x"], [{"kind": "essay", "answer": "1"}])
    with pytest.raises(ConfigError):
        compute_rewards(responses, samples, {})


def test_register_custom_reward():
    @register_reward("test_length")
    def length(responses, samples, **kw):
        return [float(len(r)) for r in responses]

    assert get_reward("test_length")(["ab", "c"], [{}, {}]) == [2.0, 1.0]
    register_reward("test_length")(length)  # same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length")(lambda responses, samples, **kw: [])

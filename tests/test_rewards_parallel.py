"""Parallel math grading: hostile answers time out (score 0) while the rest still grade correctly."""

import threading
import time

import pytest

from h1r.rewards.parallel import VerifyPool, grade_answers, grade_responses


@pytest.fixture(scope="module")
def pool():
    p = VerifyPool(workers=2)
    yield p
    p.close()


def test_hostile_answer_times_out_and_others_grade(pool):
    pool.equal("1", "1")  # start a worker outside the timed part
    preds = [r"9^{9^{9^{9}}}", r"\frac{\sqrt{570}}{12}", "(" * 400 + "1" + ")" * 400, r"(3, \pi/2)", "p+q", "-q+p"]
    golds = ["5", r"\sqrt{\frac{95}{24}}", "1", r"\left( 3, \frac{\pi}{2} \right)", "p-q", "p - q"]
    start = time.monotonic()
    got = grade_answers(preds, golds, timeout=2.0, pool=pool)
    assert got == [False, True, False, True, False, True]
    assert time.monotonic() - start < 12  # two hostile answers, each bounded by its 2 s limit


def test_overrunning_worker_is_killed_and_replaced(pool):
    """With a limit shorter than math-verify's own alarm, the hard kill is what stops the answer."""
    before = pool.timeouts
    start = time.monotonic()
    assert pool.equal(r"9^{9^{9^{9}}}", "5", timeout=0.3) is False
    assert time.monotonic() - start < 2.0
    assert pool.timeouts == before + 1
    assert pool.equal(r"\frac{\sqrt{570}}{12}", r"\sqrt{\frac{95}{24}}", timeout=30) is True  # a fresh worker


def test_usable_from_worker_threads(pool):
    results = {}

    def grade(i):
        results[i] = grade_responses([rf"\boxed{{\frac{{{i}}}{{2}}}}", r"\boxed{x^2+1}"], [str(i / 2), "1+x^2"], pool=pool)

    threads = [threading.Thread(target=grade, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [True, True] for i in range(4)}


def test_many_fast_answers_skip_the_workers():
    pool = VerifyPool(workers=1)
    n = 5000
    start = time.monotonic()
    got = grade_responses([f"<think>t</think> \\boxed{{{i % 7}}}" for i in range(n)], [str(i % 5) for i in range(n)], pool=pool)
    assert got == [i % 7 == i % 5 for i in range(n)]
    assert time.monotonic() - start < 2.0
    assert pool._live == 0  # never needed math-verify
    pool.close()


def test_missing_or_oversized_answers_are_wrong(pool):
    assert grade_responses(["no box", r"\boxed{}", "\\boxed{" + "1" * 3000 + "}"], ["1", "1", "1"], pool=pool) == [False] * 3
    with pytest.raises(ValueError, match="answers but"):
        grade_answers(["1"], ["1", "2"], pool=pool)

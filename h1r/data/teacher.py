"""The single programmatic teacher: every trace, of every family, in one style.

    <think>
    step
    step
    check: verification          (in some traces)
    </think>
    \\boxed{answer}

Several different valid traces per problem come from the family's alternative decompositions
(step orders, methods) and from adding a check line or not. A single consistent style matters:
mixing teachers raised entropy and lowered scores in the Falcon-H1R ablations.
"""

from __future__ import annotations

import random

from h1r.data.tasks import FAMILIES, Problem

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def render(steps: list[str], answer: str) -> str:
    return f"{THINK_OPEN}\n" + "\n".join(steps) + f"\n{THINK_CLOSE}\n\\boxed{{{answer}}}"


def one_trace(problem: Problem, rng: random.Random) -> str:
    family = FAMILIES[problem.family]
    steps = list(family.solve(problem, rng))
    check = family.check(problem)
    if check and rng.random() < 0.5:
        steps.append(f"check: {check}")
    return render(steps, problem.answer)


def traces(problem: Problem, k: int, rng: random.Random) -> list[str]:
    """k traces, all different while the problem admits that many; otherwise the distinct ones
    repeat in turn, so every problem gets exactly k (weighting stays the trainer's job)."""
    distinct: list[str] = []
    for _ in range(10 * k):
        t = one_trace(problem, rng)
        if t not in distinct:
            distinct.append(t)
            if len(distinct) == k:
                break
    return [distinct[i % len(distinct)] for i in range(k)]

"""Modular arithmetic, e.g. `Compute (47*85) mod 9.` or `Compute 7^10 mod 13.`

Levels: a mod m; (a+b) mod m; (a*b) mod m; a^k mod m with k<=5; a^k mod m with k<=10. Different
traces reduce before or after combining, and build powers along different addition chains
(7^5 from 7^4*7 or from 7^3*7^2), or compute a small power exactly before reducing.
"""

from __future__ import annotations

import random
from operator import add, mul

from h1r.data.tasks.base import Problem, op_line, reduce_line

NAME = "modular"


def generate(rng: random.Random, level: int) -> Problem:
    while True:
        if level == 1:
            a, m = rng.randint(10, 99), rng.randint(2, 12)
            spec, text = dict(op="mod", a=a, m=m), f"{a} mod {m}"
            answer = a % m
        elif level in (2, 3):
            op = "+" if level == 2 else "*"
            a, b, m = rng.randint(10, 99), rng.randint(10, 99), rng.randint(3, 15 if level == 2 else 20)
            spec, text = dict(op=op, a=a, b=b, m=m), f"({a}{op}{b}) mod {m}"
            answer = (add if op == "+" else mul)(a, b) % m
        else:
            a, k, m = ((rng.randint(2, 15), rng.randint(3, 5), rng.randint(5, 20)) if level == 4
                       else (rng.randint(2, 30), rng.randint(6, 10), rng.randint(7, 25)))
            if a % m in (0, 1):
                continue
            spec, text = dict(op="^", a=a, k=k, m=m), f"{a}^{k} mod {m}"
            answer = pow(a, k, m)
        return Problem(NAME, level, f"Compute {text}.", str(answer), spec)


def _reduce(n: int, m: int) -> str:
    """`n=q*m+r`, or nothing to write when n is already below m."""
    return reduce_line(n, m) if n >= m else ""


def _addition_chain(k: int, rng: random.Random, max_steps: int = 4) -> list[tuple[int, int]]:
    """Random increasing chain 1 -> k; each step (i, j) makes exponent i+j from two earlier ones."""
    for _ in range(100):
        have, steps = [1], []
        while have[-1] < k:
            pairs = [(i, j) for i in have for j in have if i <= j and have[-1] < i + j <= k]
            i, j = rng.choice(pairs)
            steps.append((i, j))
            have.append(i + j)
        if len(steps) <= max_steps:
            return steps
    steps, e = [], 1  # fallback: left-to-right binary powering (at most 4 steps for k <= 10)
    for bit in bin(k)[3:]:
        steps.append((e, e))
        e *= 2
        if bit == "1":
            steps.append((e, 1))
            e += 1
    return steps


def solve(problem: Problem, rng: random.Random) -> list[str]:
    s = problem.spec
    m = s["m"]
    if s["op"] == "mod":
        a = s["a"]
        if rng.random() < 0.5:
            return [reduce_line(a, m)]
        q = a // m
        return [f"{q}*{m}={q * m}", op_line(a, "-", q * m, a - q * m)]
    if s["op"] in "+*":
        a, b, op = s["a"], s["b"], s["op"]
        apply = add if op == "+" else mul
        if rng.random() < 0.5:  # combine, then reduce
            lines = [op_line(a, op, b, apply(a, b)), _reduce(apply(a, b), m)]
            return [line for line in lines if line]
        first = [_reduce(a, m), _reduce(b, m)]  # reduce each operand, combine, reduce again
        if rng.random() < 0.5:
            first.reverse()
        ra, rb = a % m, b % m
        lines = first + [op_line(ra, op, rb, apply(ra, rb)), _reduce(apply(ra, rb), m)]
        return [line for line in lines if line]
    a, k = s["a"], s["k"]
    if a**k < 10**5 and rng.random() < 1 / 3:  # small enough to compute exactly, then reduce
        return [f"{a}^{k}={a**k}", reduce_line(a**k, m)]
    lines = [_reduce(a, m)] if a >= m else []
    value = {1: a % m}
    for i, j in _addition_chain(k, rng):
        u, v = value[i], value[j]
        if rng.random() < 0.5:
            u, v = v, u
        p = u * v
        value[i + j] = p % m
        lines.append(f"{a}^{i + j}={u}*{v}=" + (reduce_line(p, m) if p >= m else str(p)))
    return lines


def check(problem: Problem) -> str | None:
    s = problem.spec
    if s["op"] == "mod":
        q, r = divmod(s["a"], s["m"])
        return f"{q}*{s['m']}+{r}={s['a']}"
    return None

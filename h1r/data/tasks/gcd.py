"""Greatest common divisor, e.g. `Find gcd(84,36).`

Levels are set by how many division steps Euclid's algorithm needs (1-2, 3, 4, 5, 6) and by the
size of the numbers. Different traces use Euclid's algorithm or prime factorisation.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from h1r.data.tasks.base import Problem, reduce_line

NAME = "gcd"

# level -> (largest number, allowed numbers of Euclid division steps)
LEVEL_SPECS = {1: (60, (1, 2)), 2: (150, (3,)), 3: (400, (4,)), 4: (1000, (5,)), 5: (1500, (6,))}


def euclid_lines(a: int, b: int) -> list[str]:
    a, b = max(a, b), min(a, b)
    lines = []
    while b:
        lines.append(reduce_line(a, b))
        a, b = b, a % b
    return lines


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def generate(rng: random.Random, level: int) -> Problem:
    top, n_steps = LEVEL_SPECS[level]
    while True:
        a, b = rng.randint(2, top), rng.randint(2, top)
        if a != b and len(euclid_lines(a, b)) in n_steps:
            return Problem(NAME, level, f"Find gcd({a},{b}).", str(math.gcd(a, b)), (a, b))


def solve(problem: Problem, rng: random.Random) -> list[str]:
    a, b = problem.spec
    if rng.random() < 0.5:
        return euclid_lines(a, b)
    firsts = [a, b] if rng.random() < 0.5 else [b, a]
    lines = [f"{n}={'*'.join(map(str, prime_factors(n)))}" for n in firsts]
    common = sorted((Counter(prime_factors(a)) & Counter(prime_factors(b))).elements())
    shown = "*".join(map(str, common)) + (f"={math.gcd(a, b)}" if len(common) > 1 else "")
    lines.append(f"common: {shown or 1}")
    return lines


def check(problem: Problem) -> str:
    a, b = problem.spec
    g = math.gcd(a, b)
    return f"{a}={a // g}*{g}, {b}={b // g}*{g}"

"""Base conversion with digits 0-9, e.g. `Convert 1011 from base 2 to base 10.`

Levels: base b -> 10 with 2-3 digits; base b -> 10 with 4 digits; 10 -> base 4-9 for 10..150;
10 -> base b for 100..999 (at most 6 digits); base b1 -> base b2 through base 10 (3 digits to at
most 4). Reading a number comes before writing one. Different traces read a number
by Horner's rule or by place values, and write one by repeated division or by powers of the base.
"""

from __future__ import annotations

import random

from h1r.data.tasks.base import Problem, reduce_line

NAME = "base"


def to_digits(n: int, b: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, b)
        out = str(r) + out
    return out or "0"


def _random_numeral(rng: random.Random, b: int, n_digits: int) -> str:
    return str(rng.randint(1, b - 1)) + "".join(str(rng.randint(0, b - 1)) for _ in range(n_digits - 1))


def generate(rng: random.Random, level: int) -> Problem:
    while True:
        if level in (1, 2):
            b1, b2 = rng.randint(2, 9), 10
            source = _random_numeral(rng, b1, rng.randint(2, 3) if level == 1 else 4)
        elif level in (3, 4):
            b1, b2 = 10, rng.randint(4, 9) if level == 3 else rng.randint(2, 9)
            source = str(rng.randint(10, 150) if level == 3 else rng.randint(100, 999))
        else:
            b1, b2 = rng.sample(range(3, 10), 2)
            source = _random_numeral(rng, b1, 3)
        value = int(source, b1)
        answer = to_digits(value, b2)
        if len(answer) <= (6 if level == 4 else 4 if level == 5 else 99):
            return Problem(NAME, level, f"Convert {source} from base {b1} to base {b2}.", answer,
                           (source, b1, b2))


def _read_lines(source: str, b: int, rng: random.Random) -> list[str]:
    """Base b numeral -> its value: Horner's rule or a sum of place values."""
    digits = [int(c) for c in source]
    if rng.random() < 0.5:
        lines, acc = [], digits[0]
        for d in digits[1:]:
            lines.append(f"{acc}*{b}+{d}={acc * b + d}")
            acc = acc * b + d
        return lines
    places = [d * b ** (len(digits) - 1 - i) for i, d in enumerate(digits)]
    lines = [f"{d}*{b ** (len(digits) - 1 - i)}={p}" for i, (d, p) in enumerate(zip(digits, places))]
    return lines + [f"{'+'.join(map(str, places))}={sum(places)}"]


def _write_lines(n: int, b: int, rng: random.Random) -> list[str]:
    """Value -> base b numeral: repeated division (remainders read upwards) or powers of b."""
    if rng.random() < 0.5:
        lines, q = [], n
        while q:
            lines.append(reduce_line(q, b))
            q //= b
        return lines + [f"read up: {to_digits(n, b)}"]
    lines, rest, p = [], n, b ** (len(to_digits(n, b)) - 1)
    while p:
        lines.append(f"{p}: {rest}={rest // p}*{p}+{rest % p}")
        rest, p = rest % p, p // b
    return lines + [f"read down: {to_digits(n, b)}"]


def solve(problem: Problem, rng: random.Random) -> list[str]:
    source, b1, b2 = problem.spec
    value = int(source, b1)
    lines = _read_lines(source, b1, rng) if b1 != 10 else []
    return lines + (_write_lines(value, b2, rng) if b2 != 10 else [])


def check(problem: Problem) -> None:
    return None

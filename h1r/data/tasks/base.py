"""What every task family shares: the Problem record and the step notation the teacher writes.

One notation everywhere keeps the traces regular enough for a tiny model: no spaces around
operators, a negative right operand in brackets (`5-(-7)=12`), a reduction written `81=6*13+3`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEVELS = (1, 2, 3, 4, 5)


@dataclass
class Problem:
    family: str
    level: int
    prompt: str  # the user turn; also the canonical form that decides the train/test split
    answer: str  # gold, graded with h1r.rewards.math.answers_equal
    spec: Any = field(default=None, repr=False)  # family-private structure the solver works from


def num(v: int) -> str:
    """A right operand: negatives in brackets so `5-(-7)` never reads as `5--7`."""
    return f"({v})" if v < 0 else str(v)


def op_line(a: int, op: str, b: int, result: int | str) -> str:
    return f"{a}{op}{num(b)}={result}"


def reduce_line(n: int, m: int) -> str:
    """n = q*m + r with 0 <= r < m (n >= 0)."""
    q, r = divmod(n, m)
    return f"{n}={q}*{m}+{r}"


def term(coef: int, var: str = "x") -> str:
    """3x, -3x, x, -x."""
    if coef == 1:
        return var
    if coef == -1:
        return f"-{var}"
    return f"{coef}{var}"


def signed(v: int) -> str:
    """A constant appended to a term: +5 / -5."""
    return f"+{v}" if v >= 0 else str(v)

"""Task families of the synthetic curriculum. Each module exposes:

    NAME                              the family name used in ids and on the command line
    generate(rng, level) -> Problem   one random problem at level 1 (easy) … 5 (hard)
    solve(problem, rng) -> [str]      one valid decomposition, as step lines (the rng picks which)
    check(problem) -> str | None      an optional verification line
"""

from __future__ import annotations

from types import ModuleType

from h1r.data.tasks import arith, base_convert, gcd, linear, modular
from h1r.data.tasks.base import LEVELS, Problem

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (arith, linear, modular, gcd, base_convert)}

__all__ = ["FAMILIES", "LEVELS", "Problem"]

"""Cluster distinct answer strings into math-equivalence classes, cheaply.

Calling `answers_equal` on every pair costs two math-verify parses and a sympy `verify` (~30 ms)
each: 100 distinct answers took over a minute. Instead each distinct answer is parsed once and
gets a numeric fingerprint where one exists, and answers compare by fingerprint without sympy:

- numbers (plain, fractions, or closed forms like \\sqrt{2}, \\pi): `fast_equal` itself for two
  plain numbers, else their values with its rule (integers exactly, otherwise 1e-6 relative);
- expressions in variables: their values at three fixed generic points (a polynomial-identity
  style test), compared only between expressions in the same variables;
- finite sets of numbers and intervals with numeric ends: the element values / ends and openness;
- "x = <value>": as <value>.

Anything else (text, relations, matrices, …) is `verify`-ed against at most `max_compare` earlier
classes of the same kind. Unparseable answers only match themselves (string normalisation is done
upstream).
"""

from __future__ import annotations

import cmath
import functools
import math
import threading
from dataclasses import dataclass
from typing import Any

from h1r.rewards.math import fast_equal, parse_number

REL_TOL = 1e-6  # the tolerance `fast_equal` uses for numbers


@dataclass(frozen=True)
class Signature:
    kind: str  # "num", "expr:<vars>", "set", "interval:<openness>", "raw", or a sympy type name
    key: tuple | None = None  # numeric fingerprint: equal answers have close keys
    parsed: Any = None  # math-verify parse, for verify() on kinds without a key
    exact: bool = False  # a plain number (`parse_number`): compare with `fast_equal` itself


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only works on the main thread
    return 5 if threading.current_thread() is threading.main_thread() else None


# Generic points for variables (variable i takes base + step * i): one just above 1 so that high
# powers and additive constants both stay apart (x^60 + 3 vs x^60 + 4), one inside (0, 1), one
# negative. Irrational-looking so that nothing a person writes cancels there by accident.
_POINTS = ((1.0679192642, 0.2718281828), (0.5772156649, 0.1414213562), (-1.3247179572, 0.3183098862))


def _values(expr) -> tuple[complex, ...] | None:
    """The complex values of a sympy expression (at the generic points if it has variables)."""
    try:
        symbols = sorted(expr.free_symbols, key=str)
        if not symbols:
            v = (complex(expr.evalf(20)),)
        else:
            v = tuple(
                complex(expr.evalf(20, subs={s: base + step * i for i, s in enumerate(symbols)}))
                for base, step in _POINTS
            )
    except Exception:
        return None
    return v if all(cmath.isfinite(x) for x in v) else None


def _end(x) -> float | complex | None:
    if getattr(x, "is_infinite", False):
        return math.inf if x.is_extended_positive else -math.inf
    v = _values(x)
    return v[0] if v and len(v) == 1 else None


def _fingerprint(expr) -> tuple[str, tuple] | None:
    import sympy

    if isinstance(expr, sympy.Equality) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs  # "x = 3" answers 3 (math-verify agrees)
    if isinstance(expr, sympy.Expr):
        v = _values(expr)
        if v is None:
            return None
        names = ",".join(sorted(str(s) for s in expr.free_symbols))
        return ("num" if not names else f"expr:{names}"), v
    if isinstance(expr, sympy.FiniteSet):
        values = [_end(e) if isinstance(e, sympy.Expr) else None for e in expr.args]
        if any(v is None or isinstance(v, float) for v in values):  # non-numbers or infinities
            return None
        return "set", tuple(sorted(values, key=lambda v: (round(v.real, 9), round(v.imag, 9))))
    if isinstance(expr, sympy.Interval):
        a, b = _end(expr.start), _end(expr.end)
        if a is None or b is None:
            return None
        return f"interval:{int(bool(expr.left_open))}{int(bool(expr.right_open))}", (a, b)
    return None


@functools.lru_cache(maxsize=1 << 16)
def signature(answer: str) -> Signature:
    """Cached: the online loop re-votes after every batch over mostly the same answers."""
    exact = parse_number(answer)
    if exact is not None:
        return Signature("num", (complex(float(exact)),), exact=True)
    try:
        from math_verify import parse

        parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout())
    except Exception:
        parsed = None
    if not parsed:
        return Signature("raw")
    fp = _fingerprint(parsed[0])
    if fp is not None:
        return Signature(fp[0], fp[1], parsed)
    return Signature(type(parsed[0]).__name__, None, parsed)


def _close(a: complex | float, b: complex | float) -> bool:
    if math.isinf(abs(a)) or math.isinf(abs(b)):
        return a == b
    a, b = complex(a), complex(b)
    if a.imag == b.imag == 0 and a.real.is_integer() and b.real.is_integer():
        return a == b  # two integers must match exactly, as in `fast_equal`
    return abs(a - b) <= REL_TOL * max(1.0, abs(b))


@functools.lru_cache(maxsize=1 << 16)
def equivalent(answer: str, representative: str) -> bool:
    a, b = signature(answer), signature(representative)
    if a.kind != b.kind or a.kind == "raw":
        return False
    if a.exact and b.exact:
        return bool(fast_equal(answer, representative))
    if a.key is not None or b.key is not None:
        return a.key is not None and b.key is not None and len(a.key) == len(b.key) and all(
            _close(x, y) for x, y in zip(a.key, b.key)
        )
    try:
        from math_verify import verify

        return bool(verify(b.parsed, a.parsed, timeout_seconds=_timeout()))
    except Exception:
        return False


def cluster(answers: list[str], max_compare: int = 8) -> list[int]:
    """Class index per answer (answers distinct, heaviest first). Each answer is compared with the
    first answer of every earlier class of its kind; for kinds that need sympy's `verify`, with
    at most `max_compare` of them (the heaviest), which bounds the cost."""
    sigs = [signature(a) for a in answers]
    reps: list[int] = []  # answer index representing each class
    labels: list[int] = []
    for i, sig in enumerate(sigs):
        candidates = [] if sig.kind == "raw" else [c for c, r in enumerate(reps) if sigs[r].kind == sig.kind]
        if sig.key is None:
            candidates = candidates[:max_compare]
        match = next((c for c in candidates if equivalent(answers[i], answers[reps[c]])), None)
        if match is None:
            match = len(reps)
            reps.append(i)
        labels.append(match)
    return labels

"""Linear equations in x with an integer solution, e.g. `Solve 5x+3=2x+15 for x.`

Levels: x+a=b; ax=b or x/a=b; ax+b=c; ax+b=cx+d; a(x+b)=c(x+d)+e. Different traces gather x on
the left or on the right, move x terms or constants first, expand either bracket first, and
write a computation as one line or two.
"""

from __future__ import annotations

import random

from h1r.data.tasks.base import Problem, num, op_line, signed, term

NAME = "linear"


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice([-1, 1]) * rng.randint(lo, hi)


def generate(rng: random.Random, level: int) -> Problem:
    while True:
        x = rng.randint(-15, 15) if level >= 3 else rng.randint(-20, 20)
        if level == 1:
            form, x, a = rng.choice(["x+a", "a+x", "x-a"]), rng.randint(0, 20), rng.randint(1, 20)
            b = x - a if form == "x-a" else x + a
            lhs = {"x+a": f"x+{a}", "a+x": f"{a}+x", "x-a": f"x-{a}"}[form]
            spec = dict(form=form, a=a, b=b, x=x)
            eq = f"{lhs}={b}"
        elif level == 2:
            form = rng.choice(["ax", "x/a"])
            if form == "ax":
                a = _nonzero(rng, 2, 15)
                spec, eq = dict(form=form, a=a, b=a * x, x=x), f"{a}x={a * x}"
            else:
                a = rng.randint(2, 15)
                spec, eq = dict(form=form, a=a, b=x, x=a * x), f"x/{a}={x}"
        elif level == 3:
            a, b = rng.randint(2, 12), _nonzero(rng, 1, 40)
            spec = dict(form="ax+b", a=a, b=b, c=a * x + b, x=x)
            eq = f"{term(a)}{signed(b)}={a * x + b}"
        elif level == 4:
            a, c = rng.sample(range(2, 13), 2)
            x, b = rng.randint(-12, 12), _nonzero(rng, 1, 40)
            d = (a - c) * x + b
            if d == 0 or abs(d) > 99:
                continue
            spec = dict(form="ax+b=cx+d", a=a, b=b, c=c, d=d, x=x)
            eq = f"{term(a)}{signed(b)}={term(c)}{signed(d)}"
        else:
            a, c = rng.sample(range(2, 10), 2)
            b, d = _nonzero(rng, 1, 12), _nonzero(rng, 1, 12)
            e = a * (x + b) - c * (x + d)
            if e == 0 or abs(e) > 60:
                continue
            spec = dict(form="a(x+b)=c(x+d)+e", a=a, b=b, c=c, d=d, e=e, x=x)
            eq = f"{a}(x{signed(b)})={c}(x{signed(d)}){signed(e)}"
        return Problem(NAME, level, f"Solve {eq} for x.", str(spec["x"]), spec)


def _chain(lhs: str, expr: str, value: int, rng: random.Random) -> list[str]:
    """`lhs=expr=value` on one line, or as two lines."""
    if rng.random() < 0.5:
        return [f"{lhs}={expr}={value}"]
    return [f"{lhs}={expr}", f"{lhs}={value}"]


def _gather(a: int, b: int, c: int, d: int, x: int, rng: random.Random) -> list[str]:
    """Solve ax+b=cx+d: collect x on one side, constants on the other, divide."""
    if rng.random() < 0.5:  # x on the left
        k, r = a - c, d - b
        x_line, c_line = f"{term(a)}-{term(c)}={term(k)}", op_line(d, "-", b, r)
    else:  # x on the right
        k, r = c - a, b - d
        x_line, c_line = f"{term(c)}-{term(a)}={term(k)}", op_line(b, "-", d, r)
    steps = [x_line, c_line] if rng.random() < 0.5 else [c_line, x_line]
    steps.append(f"{term(k)}={r}")
    if k != 1:
        steps.append(f"x={r}/{num(k)}={x}")
    return steps


def solve(problem: Problem, rng: random.Random) -> list[str]:
    s = problem.spec
    form, x = s["form"], s["x"]
    if form in ("x+a", "a+x"):
        return _chain("x", f"{s['b']}-{s['a']}", x, rng)
    if form == "x-a":
        return _chain("x", f"{s['b']}+{s['a']}", x, rng)
    if form == "ax":
        return _chain("x", f"{s['b']}/{num(s['a'])}", x, rng)
    if form == "x/a":
        return _chain("x", f"{s['b']}*{s['a']}", x, rng)
    if form == "ax+b":
        a, b, c = s["a"], s["b"], s["c"]
        return _chain(term(a), f"{c}-{num(b)}", c - b, rng) + [f"x={c - b}/{a}={x}"]
    if form == "ax+b=cx+d":
        return _gather(s["a"], s["b"], s["c"], s["d"], x, rng)
    a, b, c, d, e = s["a"], s["b"], s["c"], s["d"], s["e"]
    left = [f"{a}(x{signed(b)})={term(a)}{signed(a * b)}"]
    right = [f"{c}(x{signed(d)})={term(c)}{signed(c * d)}", f"{c * d}{signed(e)}={c * d + e}"]
    expand = left + right if rng.random() < 0.5 else right + left
    return expand + _gather(a, a * b, c, c * d + e, x, rng)


def check(problem: Problem) -> str:
    """Substitute the solution back."""
    s = problem.spec
    form, x = s["form"], s["x"]
    if form in ("x+a", "a+x"):
        return f"{x}+{s['a']}={s['b']}"
    if form == "x-a":
        return f"{x}-{s['a']}={s['b']}"
    if form == "ax":
        return f"{s['a']}*{num(x)}={s['b']}"
    if form == "x/a":
        return f"{x}/{s['a']}={s['b']}"
    if form == "ax+b":
        return f"{s['a']}*{num(x)}{signed(s['b'])}={s['c']}"
    if form == "ax+b=cx+d":
        a, b, c, d = s["a"], s["b"], s["c"], s["d"]
        v = a * x + b
        return f"{a}*{num(x)}{signed(b)}={v}, {c}*{num(x)}{signed(d)}={v}"
    a, b, c, d, e = s["a"], s["b"], s["c"], s["d"], s["e"]
    v = a * (x + b)
    return f"{a}*({x}{signed(b)})={v}, {c}*({x}{signed(d)}){signed(e)}={v}"

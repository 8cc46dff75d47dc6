"""Multi-step integer arithmetic with nested brackets, e.g. `Compute ((3+4)*5)-6.`

Every binary sub-expression but the outermost is bracketed, so the order of operations is never
a matter of precedence. Levels add operations, multiplication, bigger numbers, negative
intermediates and deeper nesting. Different traces evaluate independent brackets in different
orders and write + and * operands either way round.
"""

from __future__ import annotations

import random

from h1r.data.tasks.base import Problem, num, op_line

NAME = "arith"

# level -> (operations, operators, leaf range, allowed range of every intermediate value, min depth)
LEVEL_SPECS = {
    1: (1, "+-", (1, 30), (0, 99), 1),
    2: (2, "+-", (1, 30), (0, 99), 2),
    3: (3, "+-*", (1, 12), (0, 200), 2),
    4: (4, "+-*", (1, 20), (-300, 300), 3),
    5: (5, "+-*", (1, 25), (-999, 999), 3),
}

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _random_tree(rng: random.Random, n_ops: int, ops: str, lo: int, hi: int):
    """A leaf is an int, an inner node (op, left, right)."""
    if n_ops == 0:
        return rng.randint(lo, hi)
    n_left = rng.randint(0, n_ops - 1)
    return (rng.choice(ops), _random_tree(rng, n_left, ops, lo, hi),
            _random_tree(rng, n_ops - 1 - n_left, ops, lo, hi))


def _value(node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    return _APPLY[op](_value(left), _value(right))


def _inner_values(node) -> list[int]:
    if isinstance(node, int):
        return []
    return _inner_values(node[1]) + _inner_values(node[2]) + [_value(node)]


def _depth(node) -> int:
    return 0 if isinstance(node, int) else 1 + max(_depth(node[1]), _depth(node[2]))


def render(node, top: bool = True) -> str:
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    text = f"{render(left, False)}{op}{render(right, False)}"
    return text if top else f"({text})"


def generate(rng: random.Random, level: int) -> Problem:
    n_ops, ops, (lo, hi), (vmin, vmax), min_depth = LEVEL_SPECS[level]
    while True:
        tree = _random_tree(rng, n_ops, ops, lo, hi)
        if _depth(tree) >= min_depth and all(vmin <= v <= vmax for v in _inner_values(tree)):
            return Problem(NAME, level, f"Compute {render(tree)}.", str(_value(tree)), tree)


def solve(problem: Problem, rng: random.Random) -> list[str]:
    """One line per operation, in a random order that respects the brackets."""
    nodes = []  # post-order list of inner nodes: (op, left_index_or_leaf, right_index_or_leaf)

    def flatten(node):
        if isinstance(node, int):
            return ("leaf", node)
        left, right = flatten(node[1]), flatten(node[2])
        nodes.append((node[0], left, right))
        return ("node", len(nodes) - 1)

    flatten(problem.spec)
    values: dict[int, int] = {}

    def ready(i):
        return all(kind == "leaf" or ref in values for kind, ref in nodes[i][1:])

    def val(ref):
        kind, x = ref
        return x if kind == "leaf" else values[x]

    steps = []
    while len(values) < len(nodes):
        i = rng.choice([j for j in range(len(nodes)) if j not in values and ready(j)])
        op, left, right = nodes[i]
        a, b = val(left), val(right)
        values[i] = _APPLY[op](a, b)
        if op in "+*" and rng.random() < 0.5:
            a, b = b, a
        steps.append(op_line(a, op, b, values[i]))
    return steps


def check(problem: Problem) -> str | None:
    """Undo the last operation."""
    op, left, right = problem.spec
    a, b, v = _value(left), _value(right), _value(problem.spec)
    if op == "+":
        return op_line(v, "-", b, a)
    if op == "-":
        return op_line(v, "+", b, a)
    return f"{v}/{num(b)}={a}" if b != 0 else None

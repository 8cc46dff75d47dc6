"""Reward functions by name, so trainers and the evaluator pick them from a config.

Every reward has the signature `fn(responses: list[str], samples: list[dict], **kw) -> list[float]`
(one float per response). `samples[i]` is the dataset row of response i (`Problem.to_sample()`):
`answer` holds the gold, `kind` is math | choice | code, and code rows carry `tests`, `testtype`,
`fn_name`. Extra keyword options go to every reward, so each accepts `**kw` and ignores the rest.

Built-ins: `math` (1/0 correctness, parallel, hostile-safe), `choice` (option letter), `code`
(sandboxed tests), `format` (0, or -penalty when `<think> … </think> answer` is broken or the
answer lacks `\\boxed{}` / a code block), and `correct` (math, choice or code by each sample's kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from h1r.errors import ConfigError
from h1r.rewards.choice import grade_choice
from h1r.rewards.math import extract_boxed

RewardFn = Callable[..., list[float]]
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: `@register_reward("mine") def mine(responses, samples, **kw): ...`."""

    def add(fn: RewardFn) -> RewardFn:
        if name in _REWARDS and _REWARDS[name] is not fn:
            raise ValueError(f"a reward named {name!r} is already registered")
        _REWARDS[name] = fn
        return fn

    return add


def get_reward(name: str) -> RewardFn:
    try:
        return _REWARDS[name]
    except KeyError:
        raise ConfigError(f"unknown reward {name!r}; known: {', '.join(sorted(_REWARDS))}") from None


def list_rewards() -> list[str]:
    return sorted(_REWARDS)


def _check(responses: Sequence[str], samples: Sequence[dict]) -> None:
    if len(responses) != len(samples):
        raise ValueError(f"{len(responses)} responses but {len(samples)} samples")


def _golds(samples: Sequence[dict]) -> list[str]:
    golds = []
    for s in samples:
        if s.get("answer") in (None, ""):
            raise ValueError(f"sample {s.get('id', '?')} has no gold 'answer'")
        golds.append(str(s["answer"]))
    return golds


@register_reward("math")
def math_reward(responses: Sequence[str], samples: Sequence[dict], timeout: float = 5.0, **_) -> list[float]:
    """1.0 when the last \\boxed{} (after </think>) equals the gold answer, else 0.0."""
    from h1r.rewards.parallel import grade_responses

    _check(responses, samples)
    return [float(ok) for ok in grade_responses(responses, _golds(samples), timeout)]


@register_reward("choice")
def choice_reward(responses: Sequence[str], samples: Sequence[dict], **_) -> list[float]:
    """1.0 when the chosen option letter equals the gold letter (GPQA)."""
    _check(responses, samples)
    return [float(grade_choice(r, g)) for r, g in zip(responses, _golds(samples))]


@register_reward("code")
def code_reward(responses: Sequence[str], samples: Sequence[dict], **kw) -> list[float]:
    """1.0 when the last fenced code block passes every test of the sample (sandboxed)."""
    from h1r.rewards.code import code_reward as run

    _check(responses, samples)
    return run(responses, samples, **kw)


def format_ok(response: str, kind: str = "math") -> bool:
    """`[<think>] reasoning </think> answer`, one </think>, no stray <think>, non-empty parts, and the
    answer holds a \\boxed{} (math, choice) or a fenced code block (code)."""
    text = (response or "").lstrip()
    if text.startswith("<think>"):  # the prompt may already end with <think>
        text = text[len("<think>"):]
    if text.count("</think>") != 1 or "<think>" in text:
        return False
    reasoning, answer = text.split("</think>")
    if not reasoning.strip() or not answer.strip():
        return False
    if kind == "code":
        from h1r.rewards.code import extract_code

        return extract_code(answer) is not None
    return extract_boxed(answer) is not None


@register_reward("format")
def format_reward(responses: Sequence[str], samples: Sequence[dict], penalty: float = 1.0, **_) -> list[float]:
    """0.0 for well-formed output, -|penalty| otherwise."""
    _check(responses, samples)
    return [0.0 if format_ok(r, s.get("kind", "math")) else -abs(penalty) for r, s in zip(responses, samples)]


@register_reward("correct")
def correct_reward(responses: Sequence[str], samples: Sequence[dict], **kw) -> list[float]:
    """Correctness by each sample's `kind` (default math): one call for a mixed batch."""
    _check(responses, samples)
    unknown = {s.get("kind", "math") for s in samples} - {"math", "choice", "code"}
    if unknown:
        raise ValueError(f"unknown sample kind(s): {', '.join(map(str, unknown))}")
    out = [0.0] * len(responses)
    for kind in ("math", "choice", "code"):
        idx = [i for i, s in enumerate(samples) if s.get("kind", "math") == kind]
        if idx:
            scores = get_reward(kind)([responses[i] for i in idx], [samples[i] for i in idx], **kw)
            for i, v in zip(idx, scores):
                out[i] = v
    return out


def compute_rewards(
    responses: Sequence[str], samples: Sequence[dict], weights: dict[str, float],
    options: dict[str, dict] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of named rewards, e.g. {"math": 1.0, "format": 1.0}; also returns each part
    (for logging). `options[name]` holds keyword options for that reward only."""
    if not weights:
        raise ConfigError("no rewards configured")
    options = options or {}
    parts = {name: get_reward(name)(responses, samples, **options.get(name, {})) for name in weights}
    totals = [sum(weights[n] * parts[n][i] for n in weights) for i in range(len(responses))]
    return totals, parts

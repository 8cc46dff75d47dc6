"""Math answer checking: the last \\boxed{} of a response against a gold answer.

Tier 1 is a fast exact / numeric comparison; tier 2 falls back to math-verify (gold wrapped in $…$,
as the benchmark notes require). These functions run in the calling process; math-verify's own
timeouts use SIGALRM and only work on the main thread, so callers that grade many answers in
parallel or from threads use `h1r.rewards.parallel`, which runs them in killable worker processes.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces; None if there is none."""
    if not text:
        return None
    last = None
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            i += 1
        if depth == 0:
            last = text[m.end(): i - 1]
    return last.strip() if last is not None else None


def final_answer_text(response: str) -> str:
    """The part after the reasoning: text after the last </think> if present, else the whole response."""
    cut = response.rfind("</think>")
    return response[cut + len("</think>"):] if cut >= 0 else response


def extract_answer(response: str) -> str | None:
    """The answer a response commits to: the last \\boxed{} after </think>, else the last one anywhere."""
    return extract_boxed(final_answer_text(response)) or extract_boxed(response)


_STRIP_RE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\s+")
_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")


def normalize(s: str) -> str:
    """Cheap canonical form for string comparison (not a full LaTeX normaliser)."""
    s = str(s)
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^{\\circ}", "").replace("^\\circ", "")
    s = _STRIP_RE.sub("", s)
    s = s.rstrip(".")
    return s


_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH_RE = re.compile(r"^(-?\d{1,30})/(\d{1,30})$")
# A plain decimal with at most a 3-digit exponent: Fraction("1e999999999") would build a huge integer.
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?$")


def parse_number(s: str) -> Fraction | None:
    """Integers, decimals, a/b, \\frac{a}{b}, with commas as thousands separators and leading zeros.

    Bounded on purpose (length, exponent) so that a hostile answer cannot make this tier slow.
    """
    s = normalize(s)
    if not s or len(s) > 64:
        return None
    m = _FRAC_RE.match(s) or _SLASH_RE.match(s)
    if m:
        sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.re is _FRAC_RE else ("", m.group(1), m.group(2))
        if int(den) == 0:
            return None
        v = Fraction(int(num), int(den))
        return -v if sign else v
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not _NUMBER_RE.match(s):
        return None
    return Fraction(s)


def fast_equal(pred: str, gold: str) -> bool | None:
    """Tier 1: True/False when decidable cheaply (string or numeric match), None to defer to math-verify.

    Two integers must match exactly; otherwise a relative tolerance of 1e-6 (math-verify rounds to 6
    decimals), computed on exact fractions so that huge values cannot overflow.
    """
    if normalize(pred) == normalize(gold):
        return True
    a, b = parse_number(pred), parse_number(gold)
    if a is None or b is None:
        return None
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return abs(a - b) <= Fraction(1, 10**6) * max(1, abs(b))


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def math_verify_equal(pred: str, gold: str, timeout: float = 5) -> bool:
    """Tier 2: math-verify on `$gold$` vs `\\boxed{pred}`.

    Parsing and verification each get about half of `timeout` (whole seconds, SIGALRM), so on the
    main thread the total stays near `timeout`; elsewhere SIGALRM is unusable and there is no limit.
    """
    from math_verify import parse, verify

    t = max(1, int(timeout) // 2) if _on_main_thread() else None
    try:
        g = parse(f"${gold}$", parsing_timeout=t)
        p = parse(f"\\boxed{{{pred}}}", parsing_timeout=t)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=t))
    except Exception:  # a hostile or malformed answer is simply wrong
        return False


def answers_equal(pred: str | None, gold, timeout: int = 5) -> bool:
    """Is the extracted answer `pred` equivalent to `gold`?"""
    if pred is None:
        return False
    gold = str(gold).strip()
    pred = pred.strip()
    if not pred or len(pred) > 2000:
        return False
    fast = fast_equal(pred, gold)
    if fast is not None:
        return fast
    return math_verify_equal(pred, gold, timeout)


def grade_response(response: str, gold, timeout: int = 5) -> bool:
    """Binary math correctness of a full response (reasoning + boxed answer)."""
    return answers_equal(extract_answer(response), gold, timeout)

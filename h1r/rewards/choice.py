"""Multiple-choice grading (GPQA): the letter a response commits to against the gold letter.

The letter is read from the last \\boxed{} after </think> (`D`, `(D)`, `\\text{D}`, `D. 10^-4 eV`);
without a box, from the last "answer is (D)" / "Answer: D" phrase. Anything else is no answer.
"""

from __future__ import annotations

import re

from h1r.rewards.math import extract_answer, final_answer_text

_LETTER_IN_BOX = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*\(?\s*([A-Za-z])\s*\)?\s*\}?\s*(?:[.:)\s]|$)")
_ANSWER_PHRASE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*:?\s*\(?\s*\**\s*([A-J])\b")


def extract_choice(response: str, letters: str = "ABCD") -> str | None:
    """The option letter a response commits to (upper case), or None."""
    boxed = extract_answer(response or "")
    if boxed is not None:
        m = _LETTER_IN_BOX.match(boxed)
        letter = m.group(1).upper() if m else None
        return letter if letter and letter in letters else None
    found = _ANSWER_PHRASE.findall(final_answer_text(response or ""))
    if found and found[-1].upper() in letters:
        return found[-1].upper()
    return None


def gold_letter(gold) -> str:
    """`\\boxed{D}`, `(D)` or `D` -> `D`."""
    text = str(gold).strip()
    m = _LETTER_IN_BOX.match(extract_answer(text) or text)
    if not m:
        raise ValueError(f"not an option letter: {gold!r}")
    return m.group(1).upper()


def grade_choice(response: str, gold, letters: str = "ABCD") -> bool:
    return extract_choice(response, letters) == gold_letter(gold)

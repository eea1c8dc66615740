"""Scoring generated answers: normalized exact match and multiple-choice option letters.

    normalize("The Red.")            -> "red"
    normalize("three")               -> "3"
    option_letter("B. blue", opts)   -> "B"     (a letter, "(B)", "Answer: B", or the option's text)

Accuracy is reported overall and per question type, with the chance level of each type beside it.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
LETTERS = "ABCDEFGHIJ"


def normalize(text: str) -> str:
    """Lower-cases, strips punctuation and articles, maps number words to digits, folds spaces."""
    words = str(text).lower().translate(_PUNCT).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match(prediction: str, reference: str) -> bool:
    """Normalized exact match."""
    return normalize(prediction) == normalize(reference)


def option_letter(prediction: str, options: Mapping[str, str] | Sequence[str] | None = None) -> str | None:
    """The option letter a free-form answer picks, or None.

    Accepts a bare letter ("B", "b", "(B)", "B.", "Answer: B") and, when ``options`` is given, an
    answer that states exactly one option's text.
    """
    text = str(prediction).strip()
    letters = LETTERS[: len(options)] if options is not None else LETTERS
    m = re.match(
        rf"^\W*(?:answer\s*(?:is)?\s*:?\s*)?\(?([{letters}{letters.lower()}])\)?(?:[.:)\s]|$)", text, re.I
    )
    if m:
        return m.group(1).upper()
    if options is not None:
        items = options.items() if isinstance(options, Mapping) else zip(letters, options, strict=False)
        hits = [k for k, v in items if normalize(v) and normalize(v) == normalize(text)]
        if len(hits) == 1:
            return hits[0]
    return None


def is_correct(
    prediction: str, reference: str, options: Mapping[str, str] | Sequence[str] | None = None
) -> bool:
    """Option-letter match for multiple choice (reference is a letter and options are given), else exact match."""
    if options and str(reference).strip().upper() in LETTERS:
        return option_letter(prediction, options) == str(reference).strip().upper()
    return exact_match(prediction, reference)


@dataclass
class Breakdown:
    """Accuracy overall and per question type."""

    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, qtype: str, ok: bool) -> None:
        self.total[qtype] += 1
        self.correct[qtype] += int(ok)

    @property
    def overall(self) -> float:
        n = sum(self.total.values())
        return sum(self.correct.values()) / n if n else float("nan")

    def accuracy(self, qtype: str) -> float:
        return self.correct[qtype] / self.total[qtype] if self.total[qtype] else float("nan")

    def as_dict(self, chance: Mapping[str, float] | None = None) -> dict:
        chance = chance or {}
        per_type = {
            t: {"accuracy": self.accuracy(t), "n": self.total[t], "chance": chance.get(t)}
            for t in sorted(self.total)
        }
        return {"overall": self.overall, "n": sum(self.total.values()), "per_type": per_type}


def score(records: Iterable[Mapping]) -> Breakdown:
    """Scores records with ``prediction``, ``answer`` and optional ``type`` / ``options``."""
    out = Breakdown()
    for r in records:
        out.add(r.get("type") or "all", is_correct(r["prediction"], r["answer"], r.get("options")))
    return out

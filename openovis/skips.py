"""Skip accounting: bad input never kills a run and is never silently lost.

A sample that cannot be used (a missing or corrupt image, a malformed conversation, a sequence that
does not fit) raises :class:`SkipSample` with a :class:`SkipReason`. The dataset catches it and
returns a :class:`SkippedSample` in place of the sample; the collator drops those and reports them
in the batch (``batch["skipped"]``, ``batch["num_samples"]``), so the counts travel with the data
out of DataLoader worker processes. The training loop adds each batch to one :class:`SkipCounter`
(and, across ranks, merges the counters' ``state_dict()``) and logs :meth:`SkipCounter.summary`.

Configuration mistakes (a missing data file, a bad mixture spec) are not skips: they raise.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)

WARN_FIRST_N = 10
"""Log the first N skips of each reason at WARNING level, the rest at DEBUG (no log floods)."""


class SkipReason(str, Enum):
    """Why a sample was skipped; the value is the phrase used in summaries."""

    MISSING_IMAGE = "missing image"
    EMPTY_IMAGE = "empty image file"
    UNREADABLE_IMAGE = "unreadable image"
    PATH_ESCAPE = "image path outside root"
    PLACEHOLDER_MISMATCH = "placeholder mismatch"
    RESERVED_TOKEN = "reserved token in text"
    EMPTY_CONVERSATION = "empty conversation"
    MALFORMED_RECORD = "malformed record"
    UNKNOWN_ROLE = "unknown role"
    BAD_TURN_ORDER = "bad turn order"
    INVALID_TEXT = "invalid text encoding"
    IMAGES_TOO_LONG = "images exceed max length"
    TOO_LONG = "sequence too long"
    NO_SUPERVISED_TOKENS = "no supervised tokens"


class SkipSample(ValueError):
    """Raised when one sample cannot be used; the run goes on without it.

    Args:
        reason: The counted reason.
        detail: A human-readable detail for the log (a path, a role name, ...).
    """

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[SkipSample], tuple[SkipReason, str]]:
        return (SkipSample, (self.reason, self.detail))


@dataclass(frozen=True)
class SkippedSample:
    """What a dataset returns in place of a sample it had to skip (the collator drops it).

    Attributes:
        index: The dataset index that was skipped.
        reason: Why.
        detail: A human-readable detail.
    """

    index: int
    reason: SkipReason
    detail: str = ""


class SkipCounter:
    """Counts samples seen and skipped by reason; thread-safe, and mergeable across processes.

    Each DataLoader worker has its own copy of the dataset (and of any counter inside it), so the
    run-level count is built from the batches (:meth:`add_batch`) or by merging ``state_dict()``s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.reasons: Counter[str] = Counter()

    @property
    def skipped(self) -> int:
        """Number of skipped samples."""
        return sum(self.reasons.values())

    def record_ok(self, n: int = 1) -> None:
        """Counts ``n`` samples that were used."""
        with self._lock:
            self.total += n

    def record_skip(self, reason: SkipReason, detail: str = "", *, log: bool = True) -> None:
        """Counts one skipped sample and logs it (WARNING for the first few of a reason, then DEBUG)."""
        with self._lock:
            self.total += 1
            self.reasons[reason.value] += 1
            nth = self.reasons[reason.value]
        if log:
            level = logging.WARNING if nth <= WARN_FIRST_N else logging.DEBUG
            logger.log(level, "skipping sample (%s): %s", reason.value, detail)

    def add_counts(self, total: int, skipped: Mapping[str, int]) -> None:
        """Adds counts made elsewhere: ``total`` samples seen, of which ``skipped`` by reason."""
        with self._lock:
            self.total += int(total)
            self.reasons.update({str(k): int(v) for k, v in skipped.items()})

    def add_batch(self, batch: Mapping[str, Any]) -> None:
        """Adds the counts an :class:`~openovis.processing.collator.OvisCollator` batch carries."""
        self.add_counts(batch["num_samples"], batch["skipped"])

    def merge(self, others: Iterable[SkipCounter | Mapping[str, Any]]) -> SkipCounter:
        """Adds other counters (or their ``state_dict()``s, e.g. gathered from other ranks); returns self."""
        for other in others:
            state = other.state_dict() if isinstance(other, SkipCounter) else other
            self.add_counts(state["total"], state["reasons"])
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable counts: ``{"total": int, "reasons": {reason phrase: count}}``."""
        with self._lock:
            return {"total": self.total, "reasons": dict(self.reasons)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces the counts (for resuming a run)."""
        with self._lock:
            self.total = int(state["total"])
            self.reasons = Counter({str(k): int(v) for k, v in state["reasons"].items()})

    def summary(self) -> str:
        """E.g. ``"skipped 3 of 10,000: 2 unreadable image, 1 placeholder mismatch"``."""
        with self._lock:
            head = f"skipped {sum(self.reasons.values()):,} of {self.total:,}"
            if not self.reasons:
                return head
            parts = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            return head + ": " + ", ".join(f"{n:,} {reason}" for reason, n in parts)

    def __str__(self) -> str:
        return self.summary()

    def __getstate__(self) -> dict[str, Any]:
        # Locks do not pickle; DataLoader workers receive a copy of the dataset and its counter.
        return self.state_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self.total = state["total"]
        self.reasons = Counter(state["reasons"])

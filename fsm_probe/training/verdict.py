"""Did the model learn its training lengths, and how far does it carry them? One plain verdict.

In distribution first: a model below the threshold at its longest training length "did not
learn", whatever it does beyond; only a model that learned can generalise or fail to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError


def trained_length(run: Any) -> int | None:
    """The longest training length of a `Run` (None without a training record). Until 0.3; use
    `run.trained_length`."""
    from .run import record_trained_length

    return record_trained_length(getattr(run, "record", None))


THRESHOLD = 0.99


@dataclass
class LengthVerdict:
    """`status` is "generalises", "fails_beyond", "untested_beyond" (learned, but no longer length
    was tested, e.g. a Transformer whose context ends there) or "not_learned"; accuracies are
    final-position."""

    status: str
    train_max: int
    in_distribution_accuracy: float
    longest_ok: int | None
    breaks_at_length: int | None
    longest_tested: int
    threshold: float = THRESHOLD

    @property
    def learned(self) -> bool:
        return self.status != "not_learned"

    @property
    def text(self) -> str:
        if self.status == "not_learned":
            return (f"did not learn in distribution ({self.in_distribution_accuracy:.3f} at its "
                    f"training length {self.train_max}, below {self.threshold})")
        if self.status == "generalises":
            return f"learned; generalises to {self.longest_tested}"
        if self.status == "untested_beyond":
            return f"learned up to {self.train_max}; no longer length tested"
        return f"learned up to {self.longest_ok}; fails from {self.breaks_at_length}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "learned": self.learned, "text": self.text}


def length_verdict(
    accuracy: Mapping[int, Mapping[str, float]],
    train_max: int,
    *,
    threshold: float = THRESHOLD,
    key: str = "final_accuracy",
) -> LengthVerdict:
    """Verdict from `evaluate`'s report, which must include `train_max` (the longest training length).

    Lengths beyond `train_max` are read in increasing order: `breaks_at_length` is the first
    below `threshold`, `longest_ok` the longest tested length before it.
    """
    if train_max not in accuracy:
        raise InputError(f"the accuracy report has no entry for the training length {train_max}")
    lengths = sorted(int(k) for k in accuracy)
    acc = {int(k): float(v[key]) for k, v in accuracy.items()}
    base = dict(train_max=train_max, in_distribution_accuracy=acc[train_max],
                longest_tested=lengths[-1], threshold=threshold)
    if acc[train_max] < threshold:
        return LengthVerdict("not_learned", longest_ok=None, breaks_at_length=None, **base)
    if lengths[-1] <= train_max:
        return LengthVerdict("untested_beyond", longest_ok=train_max, breaks_at_length=None, **base)
    longest_ok = train_max
    for length in (x for x in lengths if x > train_max):
        if acc[length] < threshold:
            return LengthVerdict("fails_beyond", longest_ok=longest_ok, breaks_at_length=length, **base)
        longest_ok = length
    return LengthVerdict("generalises", longest_ok=longest_ok, breaks_at_length=None, **base)

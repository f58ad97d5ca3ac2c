"""Accuracy per length, including lengths far beyond training (length generalization)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from .._results import DictResult
from ..models import predict_logits
from ..tasks import Task
from ..tasks.datasets import IGNORE_INDEX, eval_set


@dataclass(frozen=True, eq=False)
class LengthAccuracy(DictResult):
    """Accuracy at one length: per labelled position, at the final position, whole sequences."""

    accuracy: float
    final_accuracy: float
    sequence_accuracy: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthAccuracy:
        """From `to_dict()`'s dict (or `accuracy_report`'s)."""
        return cls(float(d["accuracy"]), float(d["final_accuracy"]), float(d["sequence_accuracy"]))


@dataclass(frozen=True, eq=False)
class EvaluationReport(DictResult):
    """`evaluate`'s result: a `LengthAccuracy` per length (`report[40].accuracy`), in the order
    measured; `to_dict()` is `{length: {"accuracy": ..., ...}}`."""

    by_length: dict[int, LengthAccuracy]

    def _items(self) -> dict[int, LengthAccuracy]:
        return dict(self.by_length)

    @property
    def lengths(self) -> list[int]:
        """The lengths measured."""
        return list(self.by_length)

    @classmethod
    def from_dict(cls, d: Mapping[Any, Mapping[str, Any]]) -> EvaluationReport:
        """From `to_dict()`'s dict; keys may be strings (as in JSON)."""
        return cls({int(k): LengthAccuracy.from_dict(v) for k, v in d.items()})


def accuracy_report(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-position, final-position and whole-sequence accuracy; `IGNORE_INDEX` positions are skipped."""
    mask = labels != IGNORE_INDEX
    correct = (pred == labels) | ~mask
    return {
        "accuracy": float((pred == labels)[mask].mean()) if mask.any() else float("nan"),
        "final_accuracy": float((pred[:, -1] == labels[:, -1]).mean()),
        "sequence_accuracy": float(correct.all(axis=1).mean()),
    }


def evaluate(
    model: nn.Module,
    task: Task,
    lengths: Iterable[int],
    n: int = 256,
    seed: int = 12345,
    final_only: bool | None = None,
    batch_size: int = 256,
) -> EvaluationReport:
    """Accuracy of `model` on `task` at each length, on fixed evaluation sets of `n` sequences."""
    out: dict[int, LengthAccuracy] = {}
    for length in lengths:
        batch = eval_set(task, int(length), n=n, seed=seed, final_only=final_only)
        pred = predict_logits(model, batch.tokens, batch_size=batch_size).argmax(-1).numpy()
        out[int(length)] = LengthAccuracy(**accuracy_report(pred, batch.labels))
    return EvaluationReport(out)


def position_accuracy(
    model: nn.Module, task: Task, length: int, n: int = 256, seed: int = 12345, batch_size: int = 256
) -> np.ndarray:
    """Accuracy at each position `[length]` of `n` sequences of `length` (every position labelled).

    Where it drops at the first position beyond the training lengths, the failure is tied to
    position (e.g. untrained positional embeddings), not to how much input came before.
    """
    batch = eval_set(task, int(length), n=n, seed=seed, final_only=False)
    pred = predict_logits(model, batch.tokens, batch_size=batch_size).argmax(-1).numpy()
    return (pred == batch.labels).mean(axis=0)

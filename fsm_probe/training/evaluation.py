"""Accuracy per length, including lengths far beyond training (length generalization)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn

from ..models import predict_logits
from ..tasks import Task
from ..tasks.datasets import IGNORE_INDEX, eval_set


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
) -> dict[int, dict[str, float]]:
    """Accuracy of `model` on `task` at each length, on fixed evaluation sets of `n` sequences."""
    out: dict[int, dict[str, float]] = {}
    for length in lengths:
        batch = eval_set(task, int(length), n=n, seed=seed, final_only=final_only)
        pred = predict_logits(model, batch.tokens, batch_size=batch_size).argmax(-1).numpy()
        out[int(length)] = accuracy_report(pred, batch.labels)
    return out


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

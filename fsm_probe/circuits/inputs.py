"""Inputs of the patching analyses: metrics over logits, corrupted inputs, and the one
normalisation of a patched metric (0 = the corrupted run, 1 = the clean run)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..tasks.datasets import eval_set
from .engine import Metric


def normalized_effect(values: Any, clean_value: float, corrupted_value: float) -> Any:
    """`(values - corrupted) / (clean - corrupted)` (Heimersheim & Nanda), in the dtype of
    `values` (a tensor, an array or a float): 0 = the corrupted run, 1 = the clean run."""
    scale = clean_value - corrupted_value
    if scale == 0:
        raise InputError("clean and corrupted metric values coincide; nothing to normalize")
    return (values - corrupted_value) / scale


# ----- metrics -----


def _label_tensor(labels: Any) -> Tensor:
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long()


def _pick(at: Tensor, labels: Tensor) -> Tensor:
    idx = labels.to(at.device).expand(at.shape[0]) if labels.ndim == 0 else labels.to(at.device)
    return at.gather(1, idx[:, None])[:, 0]


def logit_diff(labels: Any, wrong_labels: Any, pos: int = -1) -> Metric:
    """Mean over the batch of `logit[label] - logit[wrong_label]` at `pos` (labels: int or [B])."""
    right, wrong = _label_tensor(labels), _label_tensor(wrong_labels)

    def metric(logits: Tensor) -> Tensor:
        return (_pick(logits[:, pos], right) - _pick(logits[:, pos], wrong)).mean()

    metric.positions = (pos,)
    return metric


def probability(labels: Any, pos: int = -1) -> Metric:
    """Mean over the batch of the softmax probability of `labels` at `pos`."""
    right = _label_tensor(labels)

    def metric(logits: Tensor) -> Tensor:
        return _pick(logits[:, pos].softmax(-1), right).mean()

    metric.positions = (pos,)
    return metric


def normalized(metric: Metric, clean_value: float, corrupted_value: float) -> Metric:
    """`(metric - corrupted) / (clean - corrupted)`: 0 = corrupted run, 1 = clean run."""
    clean_value, corrupted_value = float(clean_value), float(corrupted_value)
    if clean_value == corrupted_value:
        raise InputError("normalized metric needs clean_value != corrupted_value")

    def wrapped(logits: Tensor) -> Tensor:
        return normalized_effect(metric(logits), clean_value, corrupted_value)

    if hasattr(metric, "positions"):
        wrapped.positions = metric.positions
    return wrapped


# ----- corruptions -----


def pair(clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    """A user-chosen (clean, corrupted) pair as int64 `[batch, pos]` tensors of the same shape."""
    c, x = torch.as_tensor(np.asarray(clean)).long(), torch.as_tensor(np.asarray(corrupted)).long()
    c, x = (c[None] if c.ndim == 1 else c), (x[None] if x.ndim == 1 else x)
    if c.shape != x.shape or c.ndim != 2:
        raise InputError(
            f"clean and corrupted tokens must both be [batch, pos] of one shape, got "
            f"{tuple(c.shape)} and {tuple(x.shape)}"
        )
    return c, x


def symmetric_corruption(
    task_automaton: Any, tokens: Any, position: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Replace the symbol at `position` of each sequence by one that changes the final label.

    The replacement is drawn uniformly among the symbols that change the automaton's label at the
    last position; an `InputError` names the first sequence for which no symbol does.
    """
    arr = np.array(tokens.cpu().numpy() if isinstance(tokens, Tensor) else tokens, dtype=np.int64)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"tokens must be [batch, pos] with pos >= 1, got shape {arr.shape}")
    n_pos = arr.shape[1]
    if not -n_pos <= position < n_pos:
        raise InputError(f"position {position} is outside a sequence of length {n_pos}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    target = task_automaton.run_outputs(arr)[:, -1]
    out = arr.copy()
    options = []
    for sym in range(task_automaton.n_symbols):
        trial = arr.copy()
        trial[:, position] = sym
        options.append(task_automaton.run_outputs(trial)[:, -1] != target)
    changes = np.stack(options, axis=1)
    for b in range(arr.shape[0]):
        good = np.flatnonzero(changes[b])
        if good.size == 0:
            raise InputError(
                f"no symbol at position {position} changes the final label of sequence {b}"
            )
        out[b, position] = gen.choice(good)
    return out


def corruption_pairs(
    task: Any, length: int, n: int = 16, seed: int = 0, position: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Up to `n` clean sequences of `task` (seeded), their `symmetric_corruption` at one position,
    and that position.

    `position` defaults to the middle one when possible, else the nearest position at which at
    least half of `n` sequences have a symbol that changes the final label. Sequences whose label
    no single symbol at the position can change are left out.
    """
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}")
    a = task.automaton
    pool = eval_set(task, length, n=8 * n, seed=seed + 1, final_only=False).tokens
    length = pool.shape[1]  # the task's length rule may shorten the requested length
    if position is not None:
        if not -length <= position < length:
            raise InputError(f"position {position} is outside sequences of length {length}")
        position %= length
    rng = np.random.default_rng(seed)
    final = a.run_outputs(pool)[:, -1]
    candidates = [position] if position is not None else sorted(range(length), key=lambda q: (abs(q - length // 2), q))
    for p in candidates:
        ok = np.zeros(len(pool), dtype=bool)
        for sym in range(a.n_symbols):
            trial = pool.copy()
            trial[:, p] = sym
            ok |= a.run_outputs(trial)[:, -1] != final
        if ok.sum() >= (1 if position is not None else max(1, n // 2)):
            clean = pool[ok][:n]
            return clean, symmetric_corruption(a, clean, p, rng), p
    where = f"at position {position}" if position is not None else "at any position"
    raise InputError(f"no single-symbol change {where} alters this task's final label; nothing to patch")

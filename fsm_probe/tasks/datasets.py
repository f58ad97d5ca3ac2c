"""Batches of (tokens, labels, states) drawn from a task, reproducible from a seed.

Every batch has a single length (no padding). Labels follow the task's protocol: one label per
prefix, or, with `final_only`, only at the last position and `IGNORE_INDEX` elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .._validate import non_negative_int, positive_int
from ..errors import ConfigError
from .task import Task

IGNORE_INDEX = -100


@dataclass
class Batch:
    """tokens, labels and true states, all int64 `[B, T]`."""

    tokens: np.ndarray
    labels: np.ndarray
    states: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


def label_batch(task: Task, tokens: np.ndarray, final_only: bool | None = None) -> Batch:
    """Run the task's automaton over `tokens` and build the labelled batch."""
    final_only = task.final_only if final_only is None else final_only
    states = task.automaton.run(np.atleast_2d(tokens))
    labels = task.automaton.outputs[states]
    if final_only:
        masked = np.full_like(labels, IGNORE_INDEX)
        masked[:, -1] = labels[:, -1]
        labels = masked
    return Batch(tokens=np.atleast_2d(tokens).astype(np.int64), labels=labels, states=states)


def sample_batch(
    task: Task,
    batch_size: int,
    length: int,
    rng: np.random.Generator,
    final_only: bool | None = None,
) -> Batch:
    """One batch of `batch_size` sequences of `task.effective_length(length)` tokens."""
    batch_size = positive_int(batch_size, "batch_size", numpy=True)
    length = task.effective_length(positive_int(length, "length", numpy=True))
    return label_batch(task, task.sampler.sample(rng, batch_size, length), final_only)


def iterate_batches(
    task: Task,
    batch_size: int,
    lengths: tuple[int, int] | int,
    seed: int = 0,
    final_only: bool | None = None,
    mixed: float = 0.0,
) -> Iterator[Batch]:
    """Endless batches, each with a length drawn uniformly from `lengths` = (min, max) inclusive.

    A share `mixed` of the words draw their own symbol probabilities (Dirichlet(1)) instead of
    using the task's sampler: words that dwell on a few symbols reach the states that uniformly
    random words reach rarely and late (a gridworld's far end, a long run of one rotation).
    """
    if isinstance(lengths, int | np.integer):
        lengths = (int(lengths), int(lengths))
    try:
        lo, hi = lengths
    except (TypeError, ValueError):
        raise ConfigError(f"lengths must be (min, max), got {lengths!r}") from None
    lo, hi = positive_int(lo, "minimum length", numpy=True), positive_int(hi, "maximum length", numpy=True)
    if lo > hi:
        raise ConfigError(f"minimum length {lo} exceeds maximum length {hi}")
    positive_int(batch_size, "batch_size", numpy=True)
    if isinstance(mixed, bool) or not isinstance(mixed, int | float | np.integer | np.floating) or not 0 <= mixed <= 1:
        raise ConfigError(f"mixed must be a share in [0, 1], got {mixed!r}")
    return _batches(task, batch_size, lo, hi, np.random.default_rng(seed), final_only, float(mixed))


def _batches(
    task: Task, batch_size: int, lo: int, hi: int, rng: np.random.Generator, final_only: bool | None,
    mixed: float,
) -> Iterator[Batch]:
    support = sampler_support(task)
    while True:
        length = int(rng.integers(lo, hi + 1))
        if not mixed:
            yield sample_batch(task, batch_size, length, rng, final_only)
            continue
        length = task.effective_length(length)
        tokens = task.sampler.sample(rng, batch_size, length)
        own = np.flatnonzero(rng.random(batch_size) < mixed)
        tokens[own] = support[dirichlet_words(rng, len(support), len(own), length)]
        yield label_batch(task, tokens, final_only)


def sampler_support(task: Task) -> np.ndarray:
    """The symbols the task's sampler can draw (those of positive probability for a categorical
    one, else all): mixed words keep to them."""
    probs = getattr(task.sampler, "probs", None)
    return np.arange(task.automaton.n_symbols) if probs is None else np.flatnonzero(np.asarray(probs) > 0)


def dirichlet_words(rng: np.random.Generator, n_symbols: int, n: int, length: int) -> np.ndarray:
    """`[n, length]` words over `range(n_symbols)`, each i.i.d. from its own symbol probabilities
    drawn from Dirichlet(1)."""
    cdf = np.cumsum(rng.dirichlet(np.ones(n_symbols), size=n), axis=1)
    u = rng.random((n, length))
    return np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(-1), n_symbols - 1).astype(np.int64)


def eval_set(
    task: Task,
    length: int,
    n: int = 512,
    seed: int = 0,
    final_only: bool | None = None,
) -> Batch:
    """Fixed evaluation set: the same (task, length, n, seed) always gives the same data."""
    length = positive_int(length, "length", numpy=True)
    n = positive_int(n, "n", numpy=True)
    non_negative_int(seed, "seed", numpy=True)
    return sample_batch(task, n, length, np.random.default_rng([int(seed), length]), final_only)

"""Input distributions of the tasks: each draws token sequences `[batch, length]` (int64).

`Sampler.to_dict()` names the kind and its fields; `Sampler.from_dict` rebuilds any registered
kind (every subclass registers itself under its `kind`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._validate import positive_int
from ..errors import TaskError


def _check_shape(batch: int, length: int) -> None:
    positive_int(batch, "batch", numpy=True)
    positive_int(length, "length", numpy=True)


class Sampler:
    """Draws token sequences `[batch, length]` (int64) for a task."""

    kind: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Sampler]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Sampler.registry[cls.kind] = cls

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_symbols(self) -> int:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """`{"kind": ..., **fields}`, JSON-able."""
        return {"kind": self.kind, **{k: v for k, v in vars(self).items()}}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Sampler:
        """Inverse of `to_dict`."""
        if not isinstance(d, Mapping) or not isinstance(d.get("kind"), str) or d["kind"] not in Sampler.registry:
            raise TaskError(f"unknown sampler {d!r}; kinds: {sorted(Sampler.registry)}")
        fields = {k: v for k, v in d.items() if k != "kind"}
        try:
            return Sampler.registry[d["kind"]](**fields)
        except TypeError as e:
            raise TaskError(f"bad sampler fields {fields}: {e}") from None


@dataclass(frozen=True)
class UniformSampler(Sampler):
    """I.i.d. uniform symbols."""

    n: int
    kind: ClassVar[str] = "uniform"

    @property
    def n_symbols(self) -> int:
        return self.n

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        return rng.integers(0, self.n, size=(batch, length), dtype=np.int64)


@dataclass(frozen=True)
class CategoricalSampler(Sampler):
    """I.i.d. symbols with the given probabilities (in alphabet order)."""

    probs: tuple[float, ...]
    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=float)
        if p.ndim != 1 or len(p) == 0 or (p < 0).any() or not np.isfinite(p).all():
            raise TaskError(f"probabilities must be non-negative numbers, got {self.probs!r}")
        if abs(p.sum() - 1.0) > 1e-6:
            raise TaskError(f"probabilities must sum to 1, got {p.sum():.6g}")
        object.__setattr__(self, "probs", tuple(float(x) for x in p))

    @property
    def n_symbols(self) -> int:
        return len(self.probs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "probs": list(self.probs)}

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        p = np.asarray(self.probs) / sum(self.probs)
        return rng.choice(len(p), size=(batch, length), p=p).astype(np.int64)


@dataclass(frozen=True)
class FlipFlopSampler(Sampler):
    """Write (symbol 1..n, uniform) with probability p_write, else read (symbol 0)."""

    n: int = 2
    p_write: float = 0.5
    kind: ClassVar[str] = "flipflop"

    @property
    def n_symbols(self) -> int:
        return self.n + 1

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        write = rng.random((batch, length)) < self.p_write
        value = rng.integers(1, self.n + 1, size=(batch, length), dtype=np.int64)
        return np.where(write, value, 0).astype(np.int64)


@dataclass(frozen=True)
class AbabSampler(Sampler):
    """With probability p_exact the sequence 0101..., else i.i.d. Bernoulli(0.5)."""

    p_exact: float = 0.25
    kind: ClassVar[str] = "abab"

    @property
    def n_symbols(self) -> int:
        return 2

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        exact = rng.random(batch) < self.p_exact
        noise = rng.integers(0, 2, size=(batch, length), dtype=np.int64)
        pattern = np.arange(length, dtype=np.int64) % 2
        return np.where(exact[:, None], pattern[None, :], noise)


@dataclass(frozen=True)
class AdderSampler(Sampler):
    """Uniform bit columns; the last position is the all-zero pad that flushes the carry."""

    n_addends: int = 2
    kind: ClassVar[str] = "adder"

    @property
    def n_symbols(self) -> int:
        return 2**self.n_addends

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        x = rng.integers(0, self.n_symbols, size=(batch, length), dtype=np.int64)
        x[:, -1] = 0
        return x


@dataclass(frozen=True)
class ModularArithmeticSampler(Sampler):
    """Digit, operator, digit, ...: digits uniform over 0..modulus-1, operators over + - *."""

    modulus: int = 5
    kind: ClassVar[str] = "modular_arithmetic"

    @property
    def n_symbols(self) -> int:
        return self.modulus + 3

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        digits = rng.integers(0, self.modulus, size=(batch, length), dtype=np.int64)
        ops = self.modulus + rng.integers(0, 3, size=(batch, length), dtype=np.int64)
        is_digit = (np.arange(length) % 2 == 0)[None, :]
        return np.where(is_digit, digits, ops)


@dataclass(frozen=True)
class DyckSampler(Sampler):
    """Parenthesis walks: `(` or `)` with equal odds while open, at depth 0 `)` (which makes the
    word invalid from then on) with probability `p_invalid`; after that, uniform symbols."""

    p_invalid: float = 0.1
    kind: ClassVar[str] = "dyck"

    @property
    def n_symbols(self) -> int:
        return 2

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        out = np.empty((batch, length), dtype=np.int64)
        depth = np.zeros(batch, dtype=np.int64)
        u = rng.random((batch, length))
        for t in range(length):
            close = np.where(depth == 0, u[:, t] < self.p_invalid, u[:, t] < 0.5)
            out[:, t] = close
            depth = np.where(depth < 0, depth, depth + 1 - 2 * close)
        return out


@dataclass(frozen=True)
class AnbnSampler(Sampler):
    """a^n b^m with n uniform in 1..length/2 and b's to the end; with probability `p_corrupt`
    one random position is flipped."""

    p_corrupt: float = 0.3
    kind: ClassVar[str] = "anbn"

    @property
    def n_symbols(self) -> int:
        return 2

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        _check_shape(batch, length)
        n = rng.integers(1, max(1, length // 2) + 1, batch)
        out = (np.arange(length)[None, :] >= n[:, None]).astype(np.int64)
        flip = rng.random(batch) < self.p_corrupt
        pos = rng.integers(0, length, batch)
        out[flip, pos[flip]] ^= 1
        return out

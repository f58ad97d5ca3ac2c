"""The task zoo: automata from the shortcut, Tomita and Chomsky-hierarchy benchmarks.

A `Task` is an automaton plus an input sampler plus the labelling protocol of its source
(`final_only`, `length_rule`). `get_task("cyclic:n=7")` builds one from a spec string;
`task_from_file` wraps a user automaton JSON.

Sources (see `shared/references/automata_tasks.md`):
- Liu et al. 2023, "Transformers Learn Shortcuts to Automata", arXiv 2210.10749, generator
  `synthseq/automata` (Hugging Face) and its port `ClaraBing/shortcut`.
- Tomita 1982, "Dynamic construction of finite automata from examples using hill-climbing".
- Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy", arXiv 2207.02098,
  repository `google-deepmind/neural_networks_chomsky_hierarchy`, `tasks/regular/`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..automata.machine import Automaton
from ..errors import AutomatonError, ConfigError, TaskError

LIU = "Liu et al. 2023, Transformers Learn Shortcuts to Automata, arXiv 2210.10749 (synthseq/automata)"
TOMITA = "Tomita 1982, Dynamic construction of finite automata from examples using hill-climbing"
DELETANG = "Deletang et al. 2023, Neural Networks and the Chomsky Hierarchy, arXiv 2207.02098"


# ----- samplers -----


def _check_shape(batch: int, length: int) -> None:
    for what, v in (("batch", batch), ("length", length)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{what} must be a positive integer, got {v!r}")


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


# ----- task -----


@dataclass(frozen=True)
class Task:
    """An automaton, how its inputs are drawn, and how it is labelled."""

    name: str
    params: dict
    automaton: Automaton
    sampler: Sampler
    final_only: bool = False
    length_rule: str = "any"
    input_distribution: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.length_rule not in ("any", "odd"):
            raise TaskError(f"length_rule must be 'any' or 'odd', got {self.length_rule!r}")
        if self.sampler.n_symbols != self.automaton.n_symbols:
            raise TaskError(
                f"sampler draws {self.sampler.n_symbols} symbols, automaton has {self.automaton.n_symbols}"
            )

    @property
    def spec(self) -> str:
        """Spec string accepted by `get_task`, e.g. "cyclic:n=5,n_actions=2".

        A file task's spec is "file:<automaton name>", a label rather than a path: `get_task`
        cannot rebuild it (checkpoints store the whole automaton instead).
        """
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())

    @property
    def is_file_task(self) -> bool:
        return self.name.startswith("file:")

    def effective_length(self, length: int) -> int:
        """Apply `length_rule`: odd lengths are kept, even ones shortened by one (min 1)."""
        if self.length_rule == "odd" and length % 2 == 0:
            return max(1, length - 1)
        return length

    def to_dict(self) -> dict[str, Any]:
        """`{"spec": ...}` for zoo tasks; user automata carry the automaton itself."""
        if not self.is_file_task:
            return {"spec": self.spec}
        d: dict[str, Any] = {"spec": self.name, "automaton": self.automaton.to_dict()}
        if self.input_distribution is not None:
            d["input_distribution"] = dict(self.input_distribution)
        if self.final_only:
            d["final_only"] = True
        if self.length_rule != "any":
            d["length_rule"] = self.length_rule
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Task:
        """Inverse of `to_dict`."""
        if not isinstance(d, Mapping) or not isinstance(d.get("spec"), str):
            raise TaskError(f"task description must be an object with a 'spec' string, got {d!r}")
        spec = d["spec"]
        if not spec.startswith("file:"):
            extra = set(d) - {"spec"}
            if extra:
                raise TaskError(f"unknown key(s) {sorted(extra)} in zoo task description")
            return get_task(spec)
        extra = set(d) - {"spec", "automaton", "input_distribution", "final_only", "length_rule"}
        if extra:
            raise TaskError(f"unknown key(s) {sorted(extra)} in task description")
        if "automaton" not in d:
            raise TaskError(f"task {spec!r} lacks its 'automaton'")
        return task_from_automaton(
            Automaton.from_dict(d["automaton"]),
            input_distribution=d.get("input_distribution"),
            final_only=bool(d.get("final_only", False)),
            length_rule=d.get("length_rule", "any"),
        )


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def task_from_automaton(
    automaton: Automaton,
    input_distribution: Mapping[str, float] | None = None,
    final_only: bool = False,
    length_rule: str = "any",
) -> Task:
    """Wrap a user automaton: uniform inputs unless `input_distribution` (symbol -> prob) is given."""
    if input_distribution is None:
        sampler: Sampler = UniformSampler(automaton.n_symbols)
        dist = None
    else:
        if not isinstance(input_distribution, Mapping):
            raise TaskError(
                f"input_distribution must map symbols to probabilities, got {input_distribution!r}"
            )
        unknown = [a for a in input_distribution if a not in automaton.alphabet]
        if unknown:
            raise TaskError(f"input_distribution names unknown symbol(s) {unknown}")
        for a, p in input_distribution.items():
            if not isinstance(p, int | float) or isinstance(p, bool):
                raise TaskError(f"probability of {a!r} must be a number, got {p!r}")
        dist = {a: float(input_distribution.get(a, 0.0)) for a in automaton.alphabet}
        sampler = CategoricalSampler(tuple(dist.values()))
    return Task(
        name=f"file:{automaton.name}",
        params={},
        automaton=automaton,
        sampler=sampler,
        final_only=final_only,
        length_rule=length_rule,
        input_distribution=dist,
    )


def task_from_file(path: str | os.PathLike) -> Task:
    """Task for a user automaton JSON file (optionally with an "input_distribution")."""
    automaton, data = Automaton.read_json(path)
    dist = data.get("input_distribution")
    try:
        return task_from_automaton(automaton, dist)
    except TaskError as e:
        raise AutomatonError(f"{str(path)!r}: {e}") from None


# ----- zoo constructors -----


def _table(n_states: int, n_symbols: int, step: Callable[[int, int], int]) -> np.ndarray:
    return np.array(
        [[step(s, a) for a in range(n_symbols)] for s in range(n_states)], dtype=np.int64
    )


def _digits(k: int) -> list[str]:
    return [str(i) for i in range(k)]


def parity() -> Automaton:
    """Prefix parity of a bit string (Liu et al. 2023, `parity`)."""
    return Automaton(["0", "1"], ["0", "1"], 0, [[0, 1], [1, 0]], name="parity")


def cyclic(n: int = 5, n_actions: int = 2) -> Automaton:
    """Cyclic group C_n: action i adds i mod n (Liu et al. 2023, `cyclic`)."""
    return Automaton(
        _digits(n_actions),
        _digits(n),
        0,
        _table(n, n_actions, lambda s, a: (s + a) % n),
        name="cyclic",
    )


def dihedral(n: int = 4) -> Automaton:
    """Dihedral group of order 2n: 0 toggles direction, 1 moves one step (Liu et al. 2023).

    State (and label) index = n * toggle + position; toggle 1 means moving backwards.
    """

    def step(s: int, a: int) -> int:
        toggle, pos = divmod(s, n)
        if a == 0:
            return n * (1 - toggle) + pos
        return n * toggle + (pos + (1 if toggle == 0 else -1)) % n

    states = [f"t{t}p{p}" for t in range(2) for p in range(n)]
    return Automaton(["0", "1"], states, 0, _table(2 * n, 2, step), name="dihedral")


_QUAT = {  # unit product table: (sign, unit) for unit_a * unit_b, units 0=1, 1=i, 2=j, 3=k
    (0, 0): (1, 0), (0, 1): (1, 1), (0, 2): (1, 2), (0, 3): (1, 3),
    (1, 0): (1, 1), (1, 1): (-1, 0), (1, 2): (1, 3), (1, 3): (-1, 2),
    (2, 0): (1, 2), (2, 1): (-1, 3), (2, 2): (-1, 0), (2, 3): (1, 1),
    (3, 0): (1, 3), (3, 1): (1, 2), (3, 2): (-1, 1), (3, 3): (-1, 0),
}  # fmt: skip


def quaternion() -> Automaton:
    """Quaternion group Q_8 by right multiplication with 1, i, j, k (Liu et al. 2023).

    States 0-3 are +1, +i, +j, +k and 4-7 their negatives; start +1.
    """

    def step(s: int, a: int) -> int:
        neg, unit = divmod(s, 4)
        sign, prod = _QUAT[(unit, a)]
        return prod + 4 * ((neg == 1) != (sign == -1))

    units = ["1", "i", "j", "k"]
    states = [f"{sg}{u}" for sg in "+-" for u in units]
    return Automaton(units, states, 0, _table(8, 4, step), name="quaternion")


def _perm_automaton(
    name: str, perms: list[tuple[int, ...]], actions: list[tuple[int, ...]]
) -> Automaton:
    index = {p: i for i, p in enumerate(perms)}

    def step(s: int, a: int) -> int:
        p, act = perms[s], actions[a]
        return index[tuple(p[act[i]] for i in range(len(p)))]

    states = ["".join(map(str, p)) for p in perms]
    return Automaton(
        _digits(len(actions)), states, 0, _table(len(perms), len(actions), step), name=name
    )


def symmetric(n: int = 3, n_actions: int = 3) -> Automaton:
    """Symmetric group S_n (Liu et al. 2023, `symmetric`).

    Actions: identity, cyclic shift by one, swap of the first two, then further permutations in
    `itertools.permutations` order. Applying action a to arrangement p gives p[a[i]] at position i.
    State and label = index of the arrangement in `itertools.permutations` order.
    """
    perms = list(itertools.permutations(range(n)))
    ident = tuple(range(n))
    base = [ident, tuple((i + 1) % n for i in range(n)), (1, 0, *range(2, n))]
    actions = base + [p for p in perms if p not in base]
    return _perm_automaton("symmetric", perms, actions[:n_actions])


def _is_even(p: tuple[int, ...]) -> bool:
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2 == 0


def alternating(n: int = 4) -> Automaton:
    """Alternating group A_n: identity plus the 3-cycles (1 2 x), x = 3..n (Liu et al. 2023).

    State and label = index among the even permutations in `itertools.permutations` order.
    """
    perms = [p for p in itertools.permutations(range(n)) if _is_even(p)]
    actions = [tuple(range(n))]
    for x in range(2, n):
        a = list(range(n))
        a[0], a[1], a[x] = 1, x, 0
        actions.append(tuple(a))
    return _perm_automaton("alternating", perms, actions)


def flipflop(n: int = 2) -> Automaton:
    """Flip-flop with n values: 0 reads (no-op), i writes i; state 0 = nothing written yet (Liu et al. 2023)."""
    return Automaton(
        _digits(n + 1),
        _digits(n + 1),
        0,
        _table(n + 1, n + 1, lambda s, a: s if a == 0 else a),
        name="flipflop",
    )


def gridworld(n: int = 9) -> Automaton:
    """Walk on 0..n-1 with L/R moves clamped at the ends, start 0 (Liu et al. 2023, Grid_n)."""
    return Automaton(
        ["L", "R"],
        _digits(n),
        0,
        _table(n, 2, lambda s, a: max(0, s - 1) if a == 0 else min(n - 1, s + 1)),
        name="gridworld",
    )


def abab() -> Automaton:
    """Recognizer of (01)* tracking the position in the period (Liu et al. 2023, `abab`).

    States 0-3: position after the last symbol of the pattern 0101 (state 3 = on a boundary, the
    start); state 4 = absorbing failure. Label = state.
    """

    def step(s: int, a: int) -> int:
        if s == 4:
            return 4
        return (s + 1) % 4 if a == (s + 1) % 2 else 4

    return Automaton(["0", "1"], _digits(5), 3, _table(5, 2, step), name="abab")


def adder(n_addends: int = 2) -> Automaton:
    """Binary addition of n_addends numbers, LSB first, one token per bit column (Liu et al. 2023).

    Symbol c has bit j of addend j at (c >> j) & 1 (its name lists the bits, addend 0 first).
    State and label = digit + 2 * carry, where digit is the output bit of the column just read.
    """
    n_carry = n_addends

    def step(s: int, a: int) -> int:
        carry = s // 2
        total = carry + bin(a).count("1")
        return total % 2 + 2 * (total // 2)

    symbols = ["".join(str((c >> j) & 1) for j in range(n_addends)) for c in range(2**n_addends)]
    states = [f"d{d}c{c}" for c in range(n_carry) for d in range(2)]
    return Automaton(symbols, states, 0, _table(2 * n_carry, 2**n_addends, step), name="adder")


def _dfa(name: str, n: int, table: list[list[int]], accept: set[int]) -> Automaton:
    return Automaton(
        ["0", "1"],
        [f"q{i}" for i in range(n)],
        0,
        table,
        [1 if s in accept else 0 for s in range(n)],
        ["reject", "accept"],
        name=name,
    )


def tomita1() -> Automaton:
    """Tomita 1 (Tomita 1982): 1*."""
    return _dfa("tomita1", 2, [[1, 0], [1, 1]], {0})


def tomita2() -> Automaton:
    """Tomita 2 (Tomita 1982): (10)*."""
    return _dfa("tomita2", 3, [[2, 1], [0, 2], [2, 2]], {0})


def tomita3() -> Automaton:
    """Tomita 3 (Tomita 1982): no odd run of 1s immediately followed by an odd run of 0s.

    q0 safe, q1 inside an odd 1-run, q2 odd 1-run then odd 0-run, q3 ... then even 0-run, q4 dead.
    """
    return _dfa("tomita3", 5, [[0, 1], [2, 0], [3, 4], [2, 1], [4, 4]], {0, 1, 3})


def tomita4() -> Automaton:
    """Tomita 4 (Tomita 1982): no substring 000."""
    return _dfa("tomita4", 4, [[1, 0], [2, 0], [3, 0], [3, 3]], {0, 1, 2})


def tomita5() -> Automaton:
    """Tomita 5 (Tomita 1982): even number of 0s and even number of 1s."""
    return _dfa("tomita5", 4, [[s ^ 1, s ^ 2] for s in range(4)], {0})


def tomita6() -> Automaton:
    """Tomita 6 (Tomita 1982): (#0 - #1) divisible by 3."""
    return _dfa("tomita6", 3, [[(s + 1) % 3, (s - 1) % 3] for s in range(3)], {0})


def tomita7() -> Automaton:
    """Tomita 7 (Tomita 1982): 0*1*0*1*."""
    return _dfa("tomita7", 5, [[0, 1], [2, 1], [2, 3], [4, 3], [4, 4]], {0, 1, 2, 3})


def even_pairs() -> Automaton:
    """Even Pairs (Deletang et al. 2023): label = number of unequal adjacent pairs mod 2 (= first != last)."""
    states = ["start", "00", "01", "10", "11"]
    table = {"start": {"0": "00", "1": "11"}}
    for f in "01":
        for last in "01":
            table[f + last] = {b: f + b for b in "01"}
    outputs = {s: "0" if s == "start" or s[0] == s[1] else "1" for s in states}
    return Automaton(["0", "1"], states, "start", table, outputs, ["0", "1"], name="even_pairs")


def parity_check() -> Automaton:
    """Parity Check (Deletang et al. 2023): label = number of 1s mod 2."""
    return Automaton(
        ["0", "1"], ["even", "odd"], 0, [[0, 1], [1, 0]], [0, 1], ["0", "1"], name="parity_check"
    )


def cycle_navigation() -> Automaton:
    """Cycle Navigation (Deletang et al. 2023), encoding of their code: token 0 = -1, 1 = stay, 2 = +1.

    (The paper's appendix uses 0 = stay, 1 = +1, 2 = -1; the tasks are isomorphic.)
    """
    return Automaton(
        _digits(3),
        _digits(5),
        0,
        _table(5, 3, lambda s, a: (s + a - 1) % 5),
        name="cycle_navigation",
    )


def modular_arithmetic(modulus: int = 5) -> Automaton:
    """Modular Arithmetic (Simple) (Deletang et al. 2023) with standard precedence, as in their code.

    Symbols: digits "0".."m-1" (ids 0..m-1), then "+", "-", "*". `1+2*3` = 2, `1-1-1` = 4,
    `0*1+4*3-2` = 0 (mod 5). The value is acc + term where term is the current signed product.
    States after a digit are (acc, term), labelled with (acc + term) mod m. States after an operator
    (and the start) are (base, mult): the next digit d gives the value base + mult * d; they carry
    the label "op", because "value so far" is not a function of the Myhill-Nerode class there.
    Digit after digit, a leading operator and operator after operator lead to the absorbing state
    "invalid" (label "invalid"). Minimal size: 2 * m**2 valid states + the sink (50 + 1 for m=5).
    """
    m = modulus
    plus, minus, times = m, m + 1, m + 2
    digit_states = [(a, t) for a in range(m) for t in range(m)]
    states = (
        [f"v{a},{t}" for a, t in digit_states]
        + [f"o{b},{k}" for b, k in digit_states]
        + ["invalid"]
    )
    invalid = 2 * m * m

    def digit_state(a: int, t: int) -> int:
        return a * m + t

    def op_state(b: int, k: int) -> int:
        return m * m + b * m + k

    table = np.full((len(states), m + 3), invalid, dtype=np.int64)
    outputs = np.zeros(len(states), dtype=np.int64)
    for a, t in digit_states:
        s = digit_state(a, t)
        outputs[s] = (a + t) % m
        table[s, plus] = op_state((a + t) % m, 1)
        table[s, minus] = op_state((a + t) % m, m - 1)
        table[s, times] = op_state(a, t)
        o = op_state(a, t)
        outputs[o] = m
        for d in range(m):
            table[o, d] = digit_state(a, (t * d) % m)
    outputs[invalid] = m + 1
    return Automaton(
        [*_digits(m), "+", "-", "*"],
        states,
        op_state(0, 1),
        table,
        outputs,
        [*_digits(m), "op", "invalid"],
        name="modular_arithmetic",
    )


# ----- registry -----


@dataclass(frozen=True)
class Param:
    """One task parameter: default and inclusive bounds (None = unbounded)."""

    default: int | float
    lo: int | float | None = None
    hi: int | float | None = None


@dataclass(frozen=True)
class TaskInfo:
    """Registry entry shown by `list_tasks`."""

    name: str
    params: dict[str, Param]
    description: str
    source: str
    final_only: bool = False
    length_rule: str = "any"

    @property
    def defaults(self) -> dict[str, int | float]:
        return {k: p.default for k, p in self.params.items()}


@dataclass(frozen=True)
class _Entry:
    info: TaskInfo
    build: Callable[..., Automaton]
    sampler: Callable[..., Sampler]
    automaton_params: tuple[str, ...]
    check: Callable[[dict], None] | None = None


def _uniform(a: Automaton, **_: Any) -> Sampler:
    return UniformSampler(a.n_symbols)


_REGISTRY: dict[str, _Entry] = {}


def _register(
    name: str,
    build: Callable[..., Automaton],
    source: str,
    params: dict[str, Param] | None = None,
    sampler: Callable[..., Sampler] = _uniform,
    automaton_params: tuple[str, ...] | None = None,
    check: Callable[[dict], None] | None = None,
    final_only: bool = False,
    length_rule: str = "any",
) -> None:
    params = params or {}
    doc = (build.__doc__ or "").strip().splitlines()[0]
    info = TaskInfo(name, params, doc, source, final_only, length_rule)
    keys = tuple(params) if automaton_params is None else automaton_params
    _REGISTRY[name] = _Entry(info, build, sampler, keys, check)


def _check_cyclic(p: dict) -> None:
    if p["n_actions"] > p["n"]:
        raise TaskError(f"cyclic: n_actions={p['n_actions']} must be <= n={p['n']}")


def _check_symmetric(p: dict) -> None:
    if p["n_actions"] > math.factorial(p["n"]):
        raise TaskError(
            f"symmetric: n_actions={p['n_actions']} must be <= n! = {math.factorial(p['n'])}"
        )


_register("parity", parity, LIU)
_register(
    "cyclic",
    cyclic,
    LIU,
    {"n": Param(5, 2, 1000), "n_actions": Param(2, 1, 1000)},
    check=_check_cyclic,
)
_register("dihedral", dihedral, LIU, {"n": Param(4, 3, 1000)})
_register("quaternion", quaternion, LIU)
_register(
    "symmetric",
    symmetric,
    LIU,
    {"n": Param(3, 3, 6), "n_actions": Param(3, 1, 720)},
    check=_check_symmetric,
)
_register("alternating", alternating, LIU, {"n": Param(4, 3, 7)})
_register(
    "flipflop",
    flipflop,
    LIU,
    {"n": Param(2, 1, 100), "p_write": Param(0.5, 0.0, 1.0)},
    sampler=lambda a, n, p_write: FlipFlopSampler(n, p_write),
    automaton_params=("n",),
)
_register("gridworld", gridworld, LIU, {"n": Param(9, 2, 1000)})
_register(
    "abab",
    abab,
    LIU,
    {"p_exact": Param(0.25, 0.0, 1.0)},
    sampler=lambda a, p_exact: AbabSampler(p_exact),
    automaton_params=(),
)
_register(
    "adder",
    adder,
    LIU,
    {"n_addends": Param(2, 2, 8)},
    sampler=lambda a, n_addends: AdderSampler(n_addends),
)
for _i, _fn in enumerate([tomita1, tomita2, tomita3, tomita4, tomita5, tomita6, tomita7], start=1):
    _register(f"tomita{_i}", _fn, TOMITA)
_register("even_pairs", even_pairs, DELETANG, final_only=True)
_register("parity_check", parity_check, DELETANG, final_only=True)
_register("cycle_navigation", cycle_navigation, DELETANG, final_only=True)
_register(
    "modular_arithmetic",
    modular_arithmetic,
    DELETANG,
    {"modulus": Param(5, 2, 10)},
    sampler=lambda a, modulus: ModularArithmeticSampler(modulus),
    final_only=True,
    length_rule="odd",
)



def _counter_task(name: str) -> Callable[..., Automaton]:
    from ..automata.counter import COUNTER_MACHINES

    machine = COUNTER_MACHINES[name]

    def build(max_count: int = 100) -> Automaton:
        return machine().truncate(max_count).minimize()

    build.__doc__ = (
        f"{(machine.__doc__ or '').strip().splitlines()[0]} Not finite-state: the automaton is the "
        "counter machine truncated at |count| <= max_count, exact on words up to that length "
        "(fsm_probe.automata.counter)."
    )
    return build


COUNTERS = (
    "Counter languages: Suzgun et al. 2019, LSTM networks can perform dynamic counting, arXiv "
    "1906.03648; Weiss et al. 2018, On the practical computational power of finite precision RNNs, "
    "arXiv 1805.04908; Merrill 2020, arXiv 2004.06866"
)
_register(
    "dyck1",
    _counter_task("dyck1"),
    COUNTERS,
    {"max_count": Param(100, 2, 1000), "p_invalid": Param(0.1, 0.0, 1.0)},
    sampler=lambda a, max_count, p_invalid: DyckSampler(p_invalid),
    automaton_params=("max_count",),
)
_register("majority", _counter_task("majority"), COUNTERS, {"max_count": Param(100, 2, 1000)})
_register(
    "anbn",
    _counter_task("anbn"),
    COUNTERS,
    {"max_count": Param(100, 2, 1000), "p_corrupt": Param(0.3, 0.0, 1.0)},
    sampler=lambda a, max_count, p_corrupt: AnbnSampler(p_corrupt),
    automaton_params=("max_count",),
)


def list_tasks() -> list[TaskInfo]:
    """Every zoo task with its parameters, defaults, description and source."""
    return [e.info for e in _REGISTRY.values()]


def _parse_value(task: str, key: str, raw: str, param: Param) -> int | float:
    try:
        value: int | float = int(raw) if isinstance(param.default, int) else float(raw)
    except ValueError:
        kind = "an integer" if isinstance(param.default, int) else "a number"
        raise TaskError(f"{task}: parameter {key}={raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise TaskError(f"{task}: parameter {key}={raw!r} is not a finite number")
    if (param.lo is not None and value < param.lo) or (param.hi is not None and value > param.hi):
        raise TaskError(f"{task}: parameter {key}={value} outside [{param.lo}, {param.hi}]")
    return value


def get_task(spec: str) -> Task:
    """Build a task from "NAME" or "NAME:k=v,k2=v2" (or "file:PATH" for a user automaton)."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("file:"):
        return task_from_file(spec[len("file:") :])
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    accepted = entry.info.params
    params = dict(entry.info.defaults)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise TaskError(f"{name}: expected key=value, got {item!r}")
        if key not in accepted:
            ok = ", ".join(accepted) if accepted else "none"
            raise TaskError(f"{name}: unknown parameter {key!r}; accepted parameters: {ok}")
        params[key] = _parse_value(name, key, raw.strip(), accepted[key])
    if entry.check is not None:
        entry.check(params)
    automaton = entry.build(**{k: params[k] for k in entry.automaton_params})
    return Task(
        name=name,
        params=params,
        automaton=automaton,
        sampler=entry.sampler(automaton, **params),
        final_only=entry.info.final_only,
        length_rule=entry.info.length_rule,
    )

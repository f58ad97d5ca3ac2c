"""Real-time counter machines: a finite control plus integer counters, for languages that are not
regular (Dyck-1, majority, a^n b^n).

A `CounterMachine` reads one symbol per step. Symbol `a` adds `updates[a]` (a vector of integers,
one per counter) to the counters; then the control moves from `q` to `transitions[q, a, s]`,
where `s` codes the signs of the counters *after* the update (each -1, 0 or +1, see `sign_code`);
the label is `outputs[q']`. This is the real-time counter automaton of Fischer, Meyer & Rosenberg
1968 as used by Merrill 2020 ("On the linguistic capacity of real-time counter automata", arXiv
2004.06866), restricted to updates that depend on the symbol only: counters are integer
combinations of symbol counts, the integer lattice on which Michaud et al. 2024 ("Opening the AI
black box", arXiv 2402.05110) find the hidden states of counting RNNs.

`run_outputs(tokens)` behaves like `Automaton.run_outputs`. `truncate(max_count)` is the finite
automaton of the configurations with every |counter| <= max_count (counters are clamped there):
it agrees with the machine on every word of at most `max_count` symbols, which is how the zoo's
counter tasks (`dyck1`, `majority`, `anbn`) label data and train with the finite-state tooling.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import positive_int
from ..errors import AutomatonError
from ..io import atomic_write_json
from .machine import Automaton, _Sizes

SIGNS = ("-", "0", "+")


def sign_code(counts: np.ndarray) -> np.ndarray:
    """The base-3 code of the signs of the last axis (digit 0: negative, 1: zero, 2: positive;
    first counter most significant)."""
    digits = np.sign(counts).astype(np.int64) + 1
    m = digits.shape[-1]
    return (digits * (3 ** np.arange(m - 1, -1, -1))).sum(-1) if m else np.zeros(digits.shape[:-1], np.int64)


def sign_names(n_counters: int) -> list[str]:
    """Names of the sign codes, e.g. `c0>0,c1=0`."""
    rel = {"-": "<0", "0": "=0", "+": ">0"}
    return [",".join(f"c{i}{rel[s]}" for i, s in enumerate(p)) or "-" for p in itertools.product(SIGNS, repeat=n_counters)]


@dataclass
class CounterMachine(_Sizes):
    """Finite control (`states`, `start`, `transitions [n_states, n_symbols, 3**n_counters]`,
    `outputs`) and integer counters updated by `updates [n_symbols, n_counters]`."""

    alphabet: tuple[str, ...]
    labels: tuple[str, ...]
    states: tuple[str, ...]
    start: int
    transitions: np.ndarray
    outputs: np.ndarray
    updates: np.ndarray
    name: str = "counter_machine"

    def __post_init__(self) -> None:
        self.alphabet, self.labels, self.states = tuple(self.alphabet), tuple(self.labels), tuple(self.states)
        self.transitions = np.asarray(self.transitions, dtype=np.int64)
        self.outputs = np.asarray(self.outputs, dtype=np.int64)
        self.updates = np.asarray(self.updates, dtype=np.int64).reshape(len(self.alphabet), -1)
        n, k, m = len(self.states), len(self.alphabet), self.updates.shape[1]
        if self.transitions.shape != (n, k, 3**m):
            raise AutomatonError(
                f"transitions must be [n_states={n}, n_symbols={k}, 3**n_counters={3 ** m}], "
                f"got {self.transitions.shape}"
            )
        if ((self.transitions < 0) | (self.transitions >= n)).any() or not 0 <= self.start < n:
            raise AutomatonError("transitions and start must name control states")
        if self.outputs.shape != (n,) or ((self.outputs < 0) | (self.outputs >= len(self.labels))).any():
            raise AutomatonError(f"outputs must give one of {len(self.labels)} labels per control state")

    @property
    def n_counters(self) -> int:
        return int(self.updates.shape[1])

    def check_tokens(self, tokens: Any) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise AutomatonError(f"tokens must be an integer array [batch, pos], got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_symbols):
            raise AutomatonError(f"token ids must be in [0, {self.n_symbols}), got {arr.min()}..{arr.max()}")
        return arr.astype(np.int64)

    def run_counts(self, tokens: Any) -> np.ndarray:
        """Counter values `[B, T, n_counters]` after every prefix."""
        tok = self.check_tokens(tokens)
        return np.cumsum(self.updates[tok], axis=1)

    def run(self, tokens: Any) -> np.ndarray:
        """Control states `[B, T]` after every prefix."""
        tok = self.check_tokens(tokens)
        codes = sign_code(self.run_counts(tok))
        q = np.full(len(tok), self.start, dtype=np.int64)
        out = np.empty(tok.shape, dtype=np.int64)
        for t in range(tok.shape[1]):
            q = self.transitions[q, tok[:, t], codes[:, t]]
            out[:, t] = q
        return out

    def run_outputs(self, tokens: Any) -> np.ndarray:
        """Label ids `[B, T]` after every prefix, like `Automaton.run_outputs`."""
        return self.outputs[self.run(tokens)]

    def truncate(self, max_count: int, name: str | None = None) -> Automaton:
        """The finite automaton of the configurations reachable with |counters| <= `max_count`
        (clamped beyond): equal to the machine on words of at most `max_count` symbols."""
        max_count = positive_int(max_count, "max_count", error=AutomatonError, numpy=True)
        start = (self.start, (0,) * self.n_counters)
        index, order, table = {start: 0}, [start], []
        queue = deque([start])
        while queue:
            q, c = queue.popleft()
            row = []
            for a in range(self.n_symbols):
                nc = tuple(int(np.clip(x + u, -max_count, max_count)) for x, u in zip(c, self.updates[a], strict=False))
                nq = int(self.transitions[q, a, sign_code(np.array(nc))])
                key = (nq, nc)
                if key not in index:
                    index[key] = len(order)
                    order.append(key)
                    queue.append(key)
                row.append(index[key])
            table.append(row)
        names = [f"{self.states[q]}[{','.join(map(str, c))}]" for q, c in order]
        outputs = [self.labels[self.outputs[q]] for q, _ in order]
        return Automaton(self.alphabet, names, 0, table, outputs, list(self.labels), name or self.name)

    def control_automaton(self) -> Automaton:
        """The control as an `Automaton` over (symbol, signs after it) pairs, named `a|c0>0`."""
        signs = sign_names(self.n_counters)
        alphabet = [f"{a}|{s}" for a in self.alphabet for s in signs]
        table = self.transitions.reshape(self.n_states, -1)
        return Automaton(alphabet, list(self.states), self.start, table,
                         [self.labels[o] for o in self.outputs], list(self.labels), self.name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: alphabet, labels, control states, counters' updates per symbol, and the
        control's transitions per symbol and sign pattern (`sign_names`)."""
        signs = sign_names(self.n_counters)
        return {
            "name": self.name,
            "alphabet": list(self.alphabet),
            "labels": list(self.labels),
            "states": list(self.states),
            "start": self.states[self.start],
            "n_counters": self.n_counters,
            "updates": {a: self.updates[i].tolist() for i, a in enumerate(self.alphabet)},
            "outputs": {s: self.labels[self.outputs[i]] for i, s in enumerate(self.states)},
            "transitions": {
                s: {a: {sg: self.states[self.transitions[i, j, g]] for g, sg in enumerate(signs)}
                    for j, a in enumerate(self.alphabet)}
                for i, s in enumerate(self.states)
            },
        }

    @classmethod
    def from_dict(cls, d: Any) -> CounterMachine:
        """Inverse of `to_dict`."""
        try:
            alphabet, labels, states = list(d["alphabet"]), list(d["labels"]), list(d["states"])
            signs = sign_names(int(d["n_counters"]))
            table = [[[states.index(d["transitions"][s][a][g]) for g in signs] for a in alphabet] for s in states]
            return cls(
                alphabet, labels, states, states.index(d["start"]), np.array(table),
                [labels.index(d["outputs"][s]) for s in states],
                np.array([d["updates"][a] for a in alphabet]).reshape(len(alphabet), int(d["n_counters"])),
                d.get("name", "counter_machine"),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise AutomatonError(f"not a counter machine description: {e!r}") from None

    def save_json(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())


def _machine(name, alphabet, labels, states, updates, rule) -> CounterMachine:
    """Build a machine from `rule(q, a, signs) -> (q', label)` over sign tuples."""
    m = np.asarray(updates).shape[1]
    patterns = list(itertools.product((-1, 0, 1), repeat=m))
    table = np.zeros((len(states), len(alphabet), 3**m), dtype=np.int64)
    outputs = np.zeros(len(states), dtype=np.int64)
    for q in range(len(states)):
        for a in range(len(alphabet)):
            for g, signs in enumerate(patterns):
                nq, label = rule(q, a, signs)
                table[q, a, g] = nq
                outputs[nq] = labels.index(label)
    return CounterMachine(alphabet, labels, states, 0, table, outputs, updates, name)


def dyck1() -> CounterMachine:
    """Dyck-1 (balanced parentheses; Suzgun et al. 2019, "LSTM networks can perform dynamic
    counting", arXiv 1906.03648): label after each prefix `balanced` (depth 0), `open` (depth >
    0) or `invalid` (some prefix closed more than it opened; absorbing)."""
    labels = ["balanced", "open", "invalid"]
    states = ["balanced", "open", "invalid"]

    def rule(q, a, signs):
        if q == 2 or signs[0] < 0:
            return 2, "invalid"
        return (0, "balanced") if signs[0] == 0 else (1, "open")

    return _machine("dyck1", ["(", ")"], labels, states, [[1], [-1]], rule)


def majority() -> CounterMachine:
    """Majority (Merrill 2020; the counting task of Weiss et al. 2018): which of `0`/`1` occurred
    more often in the prefix, or `tie`."""
    labels = ["0", "tie", "1"]

    def rule(q, a, signs):
        return {-1: (0, "0"), 0: (1, "tie"), 1: (2, "1")}[signs[0]]

    return _machine("majority", ["0", "1"], labels, ["more0", "tie", "more1"], [[-1], [1]], rule)


def anbn() -> CounterMachine:
    """a^n b^n (Gers & Schmidhuber 2001; Weiss et al. 2018, arXiv 1805.04908): `yes` when the
    prefix is a^n b^n with n >= 1, else `no`; a control (reading a's, reading b's, dead) and the
    counter #a - #b."""
    states = ["as", "bs", "yes", "dead"]

    def rule(q, a, signs):
        if q == 3 or signs[0] < 0 or (a == 0 and q != 0):
            return 3, "no"
        if a == 0:
            return 0, "no"
        return (2, "yes") if signs[0] == 0 else (1, "no")

    return _machine("anbn", ["a", "b"], ["no", "yes"], states, [[1], [-1]], rule)


COUNTER_MACHINES = {"dyck1": dyck1, "majority": majority, "anbn": anbn}


def counter_machine_of(task: Any) -> CounterMachine | None:
    """The counter machine behind a zoo counter task (by name), else None."""
    build = COUNTER_MACHINES.get(getattr(task, "name", None))
    return build() if build else None

"""Deterministic Moore machines: the ground truth every probe and extraction is compared with.

An `Automaton` has a total transition table `transitions[state, symbol]` and one output label per
state. Labels are what a network is trained to predict after each prefix; states are what the
probes look for inside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .._validate import positive_int
from ..errors import AutomatonError, InputError


def _names(values: Any, what: str) -> tuple[str, ...]:
    """Validate a non-empty sequence of distinct strings."""
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
        raise AutomatonError(f"{what} must be a list of strings, got {values!r}")
    out = tuple(values)
    if not out:
        raise AutomatonError(f"{what} is empty")
    for v in out:
        if not isinstance(v, str) or v == "":
            raise AutomatonError(f"{what} must contain non-empty strings, got {v!r}")
    seen: set[str] = set()
    for v in out:
        if v in seen:
            raise AutomatonError(f"duplicate entry {v!r} in {what}")
        seen.add(v)
    return out


def _default_label_order(names: Sequence[str]) -> tuple[str, ...]:
    """Distinct label names: numerically sorted if all are integers, else first-appearance order."""
    uniq = list(dict.fromkeys(names))
    if all(n.lstrip("-").isdigit() for n in uniq):
        uniq.sort(key=int)
    return tuple(uniq)


MAX_SEGMENT_SYMBOLS = 2**16


def segment_alphabet(alphabet: Sequence[str], length: int) -> tuple[str, ...]:
    """Names of the words of `length` symbols, in `segment_tokens` order: the symbols joined
    (with a space unless every symbol is one character), e.g. "00", "01", "10", "11"."""
    sep = "" if all(len(a) == 1 for a in alphabet) else " "
    return tuple(sep.join(w) for w in product(alphabet, repeat=length))


def segment_tokens(tokens: Any, n_symbols: int, length: int) -> np.ndarray:
    """Token ids `[..., T]` (T a multiple of `length`) to segment ids `[..., T // length]`.

    A segment `(x_1, ..., x_L)` is the base-`n_symbols` number with `x_1` most significant, the
    order of `itertools.product` and of `segment_alphabet`.
    """
    length = positive_int(length, "segment length", error=InputError, numpy=True)
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.ndim == 0 or arr.shape[-1] % length:
        raise InputError(
            f"sequence length {arr.shape[-1] if arr.ndim else 0} is not a multiple of the segment "
            f"length {length}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= n_symbols):
        raise InputError(f"token ids must be in [0, {n_symbols})")
    words = arr.reshape(*arr.shape[:-1], arr.shape[-1] // length, length)
    return words @ (n_symbols ** np.arange(length - 1, -1, -1, dtype=np.int64))


def segment_words(segments: Any, n_symbols: int, length: int) -> np.ndarray:
    """Inverse of `segment_tokens`: segment ids `[..., S]` to token ids `[..., S * length]`."""
    length = positive_int(length, "segment length", error=InputError, numpy=True)
    arr = np.asarray(segments, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_symbols**length):
        raise InputError(f"segment ids must be in [0, {n_symbols ** length})")
    digits = arr[..., None] // (n_symbols ** np.arange(length - 1, -1, -1, dtype=np.int64)) % n_symbols
    return digits.reshape(*arr.shape[:-1], arr.shape[-1] * length) if arr.ndim else digits


class _Sizes:
    """`n_states`, `n_symbols`, `n_labels` of a machine with `states`, `alphabet` and `labels`
    (shared by `Automaton` and `CounterMachine`)."""

    states: tuple[str, ...]
    alphabet: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_symbols(self) -> int:
        return len(self.alphabet)

    @property
    def n_labels(self) -> int:
        return len(self.labels)


class Automaton(_Sizes):
    """A deterministic, complete Moore machine over a finite alphabet."""

    def __init__(
        self,
        alphabet: Sequence[str],
        states: Sequence[str],
        start: str | int,
        transitions: Any,
        outputs: Sequence[int | str] | Mapping[str, int | str] | None = None,
        labels: Sequence[str] | None = None,
        name: str = "automaton",
    ) -> None:
        if not isinstance(name, str):
            raise AutomatonError(f"automaton name must be a string, got {name!r}")
        self.name = name
        self.alphabet = _names(alphabet, "alphabet")
        self.states = _names(states, "states")
        self._state_index = {s: i for i, s in enumerate(self.states)}
        self._symbol_index = {a: i for i, a in enumerate(self.alphabet)}
        self.start = self._resolve_state(start, "start state")
        self.transitions = self._build_table(transitions)
        self.transitions.setflags(write=False)
        self.outputs, self.labels = self._build_outputs(outputs, labels)
        self.outputs.setflags(write=False)

    def _resolve_state(self, s: Any, what: str) -> int:
        if isinstance(s, str):
            if s not in self._state_index:
                raise AutomatonError(f"unknown {what} {s!r}; states are {list(self.states)}")
            return self._state_index[s]
        if isinstance(s, int | np.integer) and not isinstance(s, bool):
            if not 0 <= int(s) < len(self.states):
                raise AutomatonError(f"{what} index {s} out of range [0, {len(self.states)})")
            return int(s)
        raise AutomatonError(f"{what} must be a state name or index, got {s!r}")

    def _build_table(self, transitions: Any) -> np.ndarray:
        n, k = len(self.states), len(self.alphabet)
        if isinstance(transitions, Mapping):
            for s in transitions:
                if s not in self._state_index:
                    raise AutomatonError(f"transitions given for unknown state {s!r}")
            table = np.empty((n, k), dtype=np.int64)
            for i, s in enumerate(self.states):
                row = transitions.get(s)
                if row is None:
                    raise AutomatonError(f"no transitions for state {s!r}")
                if not isinstance(row, Mapping):
                    raise AutomatonError(
                        f"transitions of state {s!r} must be a mapping symbol -> state"
                    )
                for a in row:
                    if a not in self._symbol_index:
                        raise AutomatonError(f"transition from state {s!r} on unknown symbol {a!r}")
                for j, a in enumerate(self.alphabet):
                    if a not in row:
                        raise AutomatonError(
                            f"transition table is not total: missing ({s!r}, {a!r})"
                        )
                    table[i, j] = self._resolve_state(row[a], f"target of ({s!r}, {a!r})")
            return table
        try:
            arr = np.asarray(transitions)
        except (ValueError, TypeError) as e:
            raise AutomatonError(f"transitions are not a rectangular table: {e}") from None
        if arr.shape != (n, k):
            raise AutomatonError(f"transition table has shape {arr.shape}, expected ({n}, {k})")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise AutomatonError(f"transition table must hold state indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = np.argwhere((arr < 0) | (arr >= n))
        if len(bad):
            i, j = bad[0]
            raise AutomatonError(
                f"transition ({self.states[i]!r}, {self.alphabet[j]!r}) goes to unknown state index {arr[i, j]}"
            )
        return arr.copy()

    def _build_outputs(self, outputs: Any, labels: Any) -> tuple[np.ndarray, tuple[str, ...]]:
        n = len(self.states)
        if outputs is None:
            if labels is not None:
                raise AutomatonError("labels given without outputs")
            return np.arange(n, dtype=np.int64), self.states
        if isinstance(outputs, Mapping):
            for s in outputs:
                if s not in self._state_index:
                    raise AutomatonError(f"output given for unknown state {s!r}")
            missing = [s for s in self.states if s not in outputs]
            if missing:
                raise AutomatonError(f"no output for state(s) {missing}")
            outputs = [outputs[s] for s in self.states]
        elif isinstance(outputs, str) or not isinstance(outputs, Sequence | np.ndarray):
            raise AutomatonError(f"outputs must be a list or a mapping, got {outputs!r}")
        outputs = list(outputs)
        if len(outputs) != n:
            raise AutomatonError(f"{len(outputs)} outputs for {n} states")
        if all(isinstance(o, str) for o in outputs):
            lab = _names(labels, "labels") if labels is not None else _default_label_order(outputs)
            index = {name: i for i, name in enumerate(lab)}
            for s, o in zip(self.states, outputs, strict=True):
                if o not in index:
                    raise AutomatonError(
                        f"output {o!r} of state {s!r} is not among labels {list(lab)}"
                    )
            return np.array([index[o] for o in outputs], dtype=np.int64), lab
        if all(isinstance(o, int | np.integer) and not isinstance(o, bool) for o in outputs):
            arr = np.array(outputs, dtype=np.int64)
            if labels is None:
                if arr.min() < 0:
                    raise AutomatonError(f"negative output {arr.min()}")
                lab = tuple(str(i) for i in range(int(arr.max()) + 1))
            else:
                lab = _names(labels, "labels")
            for s, o in zip(self.states, arr, strict=True):
                if not 0 <= o < len(lab):
                    raise AutomatonError(
                        f"output {o} of state {s!r} out of range for {len(lab)} labels"
                    )
            return arr, lab
        raise AutomatonError("outputs must be all label names (str) or all label indices (int)")


    # ----- input handling -----

    def encode(self, seq: Sequence[str] | str) -> np.ndarray:
        """Symbols to token ids; a plain string is split into characters (or on whitespace)."""
        if isinstance(seq, bytes | bytearray) or not isinstance(seq, str | Sequence | np.ndarray):
            raise InputError(f"encode expects a string or a sequence of symbols, got {type(seq).__name__}")
        if isinstance(seq, np.ndarray) and seq.ndim != 1:
            raise InputError(f"encode expects a 1-D sequence of symbols, got shape {seq.shape}")
        if isinstance(seq, str):
            seq = list(seq) if all(len(a) == 1 for a in self.alphabet) else seq.split()
        out = np.empty(len(seq), dtype=np.int64)
        for i, a in enumerate(seq):
            j = self._symbol_index.get(a) if isinstance(a, str) else None
            if j is None:
                raise InputError(
                    f"symbol {a!r} at position {i} is not in the alphabet {list(self.alphabet)}"
                )
            out[i] = j
        return out

    def decode(self, tokens: Any) -> list[str]:
        """Token ids (1-D) to symbols."""
        arr = self.check_tokens(tokens)
        if arr.ndim != 1:
            raise InputError(f"decode expects a 1-D token sequence, got shape {arr.shape}")
        return [self.alphabet[t] for t in arr]

    def check_tokens(self, tokens: Any) -> np.ndarray:
        """Return `tokens` as int64, raising InputError for ids outside [0, n_symbols)."""
        arr = np.asarray(tokens)
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"tokens must be integer ids, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.n_symbols)
        if bad.any():
            pos = tuple(int(p) for p in np.argwhere(bad)[0])
            raise InputError(
                f"token id {arr[pos]} at {pos} outside [0, {self.n_symbols}) for alphabet {list(self.alphabet)}"
            )
        return arr.astype(np.int64)

    def _word_tokens(self, word: Any) -> np.ndarray:
        if isinstance(word, str) or (
            isinstance(word, Sequence) and all(isinstance(w, str) for w in word)
        ):
            return self.encode(word)
        return self.check_tokens(word).reshape(-1)

    # ----- running -----

    def run(self, tokens: Any, start: str | int | None = None) -> np.ndarray:
        """States after each prefix x[0..t]; `tokens` is [T] or [B, T], the result has its shape."""
        arr = self.check_tokens(tokens)
        if arr.ndim not in (1, 2):
            raise InputError(f"tokens must be [T] or [B, T], got shape {arr.shape}")
        x = arr[None] if arr.ndim == 1 else arr
        s0 = self.start if start is None else self._resolve_state_input(start)
        out = np.empty(x.shape, dtype=np.int64)
        state = np.full(x.shape[0], s0, dtype=np.int64)
        for t in range(x.shape[1]):
            state = self.transitions[state, x[:, t]]
            out[:, t] = state
        return out[0] if arr.ndim == 1 else out

    def _resolve_state_input(self, s: Any) -> int:
        try:
            return self._resolve_state(s, "state")
        except AutomatonError as e:
            raise InputError(str(e)) from None

    def run_outputs(self, tokens: Any, start: str | int | None = None) -> np.ndarray:
        """Label after each prefix: outputs[run(tokens)]."""
        return self.outputs[self.run(tokens, start)]

    def state_after(self, word: Any) -> int:
        """Index of the state reached after the whole (possibly empty) word."""
        state = self.start
        for t in self._word_tokens(word):
            state = int(self.transitions[state, t])
        return state

    def output_of(self, word: Any) -> int:
        """Label index after the whole (possibly empty) word."""
        return int(self.outputs[self.state_after(word)])

    # ----- algorithms (fsm_probe.automata.algorithms) -----

    def reachable(self) -> np.ndarray:
        """Reachable state indices in BFS order from start (symbols in alphabet order)."""
        return _algorithms.reachable(self)

    def trim(self) -> Automaton:
        """Copy without unreachable states (the rest keep their names and order)."""
        return _algorithms.trim(self)

    def power(self, length: int) -> Automaton:
        """The machine reading words of `length` symbols at a time, over the alphabet
        `segment_alphabet(alphabet, length)`, trimmed (what an RMT's memory can show)."""
        return _algorithms.power(self, length)

    def minimize(self) -> Automaton:
        """Minimal equivalent automaton, states named q0, q1, ... in BFS order from start."""
        return _algorithms.minimize(self)

    def is_minimal(self) -> bool:
        """True when every state is reachable and no two states are equivalent."""
        return _algorithms.is_minimal(self)

    def equivalent(self, other: Automaton) -> list[str] | None:
        """None if both map every input word to the same label sequence, else a shortest word that
        separates them (labels compared by name)."""
        return _algorithms.equivalent(self, other)

    def isomorphism(self, other: Automaton) -> dict[str, str] | None:
        """A state bijection preserving start, transitions and output labels, or None."""
        return _algorithms.isomorphism(self, other)

    def _label_names(self) -> np.ndarray:
        return np.array(self.labels, dtype=object)[self.outputs]

    def _symbol_map(self, other: Automaton) -> np.ndarray:
        if set(self.alphabet) != set(other.alphabet):
            raise AutomatonError(
                f"alphabets differ: {list(self.alphabet)} vs {list(other.alphabet)}"
            )
        return np.array([other._symbol_index[a] for a in self.alphabet], dtype=np.int64)


    def relabel_states(self, names: Sequence[str] | Mapping[str, str]) -> Automaton:
        """Same machine with new state names (a list in state order, or old -> new)."""
        if isinstance(names, Mapping):
            unknown = [s for s in names if s not in self._state_index]
            if unknown:
                raise AutomatonError(f"cannot rename unknown state(s) {unknown}")
            names = [names.get(s, s) for s in self.states]
        names = list(names)
        if len(names) != self.n_states:
            raise AutomatonError(f"{len(names)} names for {self.n_states} states")
        return Automaton(
            self.alphabet, names, self.start, self.transitions, self.outputs, self.labels, self.name
        )


    # ----- conversion (fsm_probe.automata.convert) -----

    def to_networkx(self) -> nx.MultiDiGraph:
        """States as nodes (attributes `output`, `start`), one edge per (state, symbol)."""
        return _convert.to_networkx(self)

    @classmethod
    def from_networkx(cls, g: nx.MultiDiGraph) -> Automaton:
        """Inverse of `to_networkx`; start and alphabet may come from graph or node/edge data."""
        return _convert.from_networkx(g)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (states, symbols and labels by name)."""
        return _convert.to_dict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Automaton:
        """Inverse of `to_dict`; `outputs`, `labels` and `name` are optional."""
        return _convert.from_dict(d)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` atomically."""
        return _convert.save_json(self, path)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> Automaton:
        """Read an automaton file, raising AutomatonError (naming the file) if it is unusable."""
        return _convert.load_json(path)

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> tuple[Automaton, Any]:
        """`load_json` that also returns the parsed JSON document (for extra keys in the file)."""
        return _convert.read_json(path)


    # ----- dunder -----

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Automaton):
            return NotImplemented
        return (
            self.alphabet == other.alphabet
            and self.states == other.states
            and self.start == other.start
            and self.labels == other.labels
            and np.array_equal(self.transitions, other.transitions)
            and np.array_equal(self.outputs, other.outputs)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Automaton(name={self.name!r}, n_states={self.n_states}, "
            f"alphabet={list(self.alphabet)}, n_labels={self.n_labels}, "
            f"start={self.states[self.start]!r})"
        )



# last: both modules build Automaton objects
from . import algorithms as _algorithms  # noqa: E402
from . import convert as _convert  # noqa: E402

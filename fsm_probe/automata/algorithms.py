"""Algorithms over an `Automaton`, as plain functions `f(automaton, ...)` (networkx style).

Reachability and trimming, the segment power, Moore minimization, and the two comparisons:
`equivalent` (same label sequence on every word, else a shortest separating word) and
`isomorphism` (a state bijection). The `Automaton` methods of the same names call these.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from .._validate import positive_int
from ..errors import AutomatonError, InputError
from .convert import to_networkx
from .machine import MAX_SEGMENT_SYMBOLS, Automaton, segment_alphabet


def reachable(automaton: Automaton) -> np.ndarray:
    """Reachable state indices in BFS order from start (symbols in alphabet order)."""
    seen = np.zeros(automaton.n_states, dtype=bool)
    seen[automaton.start] = True
    order = [automaton.start]
    queue = deque(order)
    while queue:
        s = queue.popleft()
        for t in automaton.transitions[s]:
            if not seen[t]:
                seen[t] = True
                order.append(int(t))
                queue.append(int(t))
    return np.array(order, dtype=np.int64)


def subset(automaton: Automaton, keep: np.ndarray, names: Sequence[str] | None = None) -> Automaton:
    """The states `keep` (closed under transitions) in that order, renamed to `names` if given."""
    a = automaton
    remap = np.full(a.n_states, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return Automaton(
        a.alphabet,
        [a.states[i] for i in keep] if names is None else names,
        int(remap[a.start]),
        remap[a.transitions[keep]],
        a.outputs[keep],
        a.labels,
        a.name,
    )


def trim(automaton: Automaton) -> Automaton:
    """Copy without unreachable states (the rest keep their names and order)."""
    return subset(automaton, np.sort(reachable(automaton)))


def power(automaton: Automaton, length: int) -> Automaton:
    """The machine reading words of `length` symbols at a time: on segment `w` it moves to
    `delta*(q, w)`, with the same outputs and start, trimmed to reachable states.

    Its alphabet is `segment_alphabet(alphabet, length)` (symbol ids as in `segment_tokens`);
    it is what a model that updates its state once per segment (an RMT's memory) can show.
    """
    a = automaton
    length = positive_int(length, "segment length", error=InputError, numpy=True)
    if a.n_symbols**length > MAX_SEGMENT_SYMBOLS:
        raise AutomatonError(
            f"{a.n_symbols}^{length} segment symbols is more than {MAX_SEGMENT_SYMBOLS}"
        )
    table = np.arange(a.n_states, dtype=np.int64)[:, None]
    for _ in range(length):
        table = a.transitions[table].reshape(a.n_states, -1)
    return trim(
        Automaton(
            segment_alphabet(a.alphabet, length),
            a.states,
            a.start,
            table,
            a.outputs,
            a.labels,
            f"{a.name}^{length}",
        )
    )


def partition(automaton: Automaton) -> np.ndarray:
    """Block id per state of the coarsest output-respecting congruence (Moore refinement)."""
    a = automaton
    block = np.unique(a.outputs, return_inverse=True)[1].reshape(-1)
    n_blocks = int(block.max()) + 1
    while True:
        sig = np.concatenate([block[:, None], block[a.transitions]], axis=1)
        new = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
        n_new = int(new.max()) + 1
        block = new
        if n_new == n_blocks:
            return block
        n_blocks = n_new


def minimize(automaton: Automaton) -> Automaton:
    """Minimal equivalent automaton, states named q0, q1, ... in BFS order from start."""
    trimmed = trim(automaton)
    block = partition(trimmed)
    n_blocks = int(block.max()) + 1
    rep = np.unique(block, return_index=True)[1]
    quotient = Automaton(
        trimmed.alphabet,
        [f"b{i}" for i in range(n_blocks)],
        int(block[trimmed.start]),
        block[trimmed.transitions[rep]],
        trimmed.outputs[rep],
        trimmed.labels,
        trimmed.name,
    )
    order = reachable(quotient)
    return subset(quotient, order, [f"q{i}" for i in range(len(order))])


def is_minimal(automaton: Automaton) -> bool:
    """True when every state is reachable and no two states are equivalent."""
    return minimize(automaton).n_states == automaton.n_states


def equivalent(automaton: Automaton, other: Automaton) -> list[str] | None:
    """None if both map every input word to the same label sequence, else a shortest word that
    separates them (labels compared by name)."""
    a = automaton
    sym = a._symbol_map(other)
    la, lb = a._label_names(), other._label_names()
    first = (a.start, other.start)
    parent: dict[tuple[int, int], tuple[tuple[int, int], int] | None] = {first: None}
    queue = deque([first])
    while queue:
        pair = queue.popleft()
        if la[pair[0]] != lb[pair[1]]:
            word: list[str] = []
            node = pair
            while parent[node] is not None:
                node, j = parent[node]
                word.append(a.alphabet[j])
            return word[::-1]
        for j in range(a.n_symbols):
            nxt = (int(a.transitions[pair[0], j]), int(other.transitions[pair[1], sym[j]]))
            if nxt not in parent:
                parent[nxt] = (pair, j)
                queue.append(nxt)
    return None


def isomorphism(automaton: Automaton, other: Automaton) -> dict[str, str] | None:
    """A state bijection preserving start, transitions and output labels, or None."""
    a = automaton
    if set(a.alphabet) != set(other.alphabet) or a.n_states != other.n_states:
        return None
    sym = a._symbol_map(other)
    la, lb = a._label_names(), other._label_names()
    mapping = {a.start: other.start}
    queue = deque([a.start])
    while queue:
        s = queue.popleft()
        t = mapping[s]
        if la[s] != lb[t]:
            return None
        for j in range(a.n_symbols):
            s2, t2 = int(a.transitions[s, j]), int(other.transitions[t, sym[j]])
            if s2 in mapping:
                if mapping[s2] != t2:
                    return None
            else:
                mapping[s2] = t2
                queue.append(s2)
    if len(set(mapping.values())) != len(mapping):
        return None
    if len(mapping) == a.n_states:
        if len(set(mapping.values())) != other.n_states:
            return None
        return {a.states[s]: other.states[t] for s, t in mapping.items()}
    return _isomorphism_nx(a, other)


def _isomorphism_nx(automaton: Automaton, other: Automaton) -> dict[str, str] | None:
    """General case with unreachable states: graph isomorphism on the labelled multigraphs."""
    from networkx.algorithms.isomorphism import MultiDiGraphMatcher

    def node_match(a: dict, b: dict) -> bool:
        return a["output"] == b["output"] and a["start"] == b["start"]

    def edge_match(a: dict, b: dict) -> bool:
        return sorted(d["symbol"] for d in a.values()) == sorted(
            d["symbol"] for d in b.values()
        )

    gm = MultiDiGraphMatcher(
        to_networkx(automaton), to_networkx(other), node_match=node_match, edge_match=edge_match
    )
    for m in gm.isomorphisms_iter():
        return dict(m)
    return None

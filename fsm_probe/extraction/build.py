"""From a partition of collected rows to a minimized automaton and an annotated networkx graph.

Transitions are keyed by (abstract state, input symbol) and decided by majority vote; state
outputs are the majority of the model's predictions. `refine_partition` splits abstract states
whose members disagree about their output or their successor, so that a coarse clustering that
mixes two true states (Tomita 6) is repaired before minimization.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from ..automata.machine import Automaton
from ..errors import InputError
from ..io import atomic_write, atomic_write_text

Completion = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 key per (a, b) pair of non-negative ints (b may be -1)."""
    return a.astype(np.int64) * (int(b.max(initial=0)) + 2) + (b.astype(np.int64) + 1)


def _relabel(keys: np.ndarray) -> np.ndarray:
    """Dense ids `0..n-1` for the distinct values of `keys`, in order of first occurrence."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _majority(keys: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None):
    """Per distinct key (non-negative ints): the most frequent value, its count and the total."""
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    packed = _pack(keys, values)
    uniq, inverse = np.unique(packed, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=weights).astype(np.int64)
    width = int(values.max(initial=0)) + 2
    k, v = uniq // width, uniq % width - 1
    order = np.lexsort((-counts, k))
    k, v, counts = k[order], v[order], counts[order]
    first = np.r_[True, k[1:] != k[:-1]]
    totals = np.add.reduceat(counts, np.flatnonzero(first))
    return k[first], v[first], counts[first], totals


def refine_partition(
    blocks: np.ndarray,
    predictions: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    x: np.ndarray | None = None,
    max_states: int = 128,
    min_count: int = 2,
    min_fraction: float = 0.01,
    max_rounds: int = 50,
    return_converged: bool = False,
) -> np.ndarray | tuple[np.ndarray, bool]:
    """Split blocks until members agree on their output and on each successor block.

    In each round a block whose members disagree (a minority seen at least `min_count` times
    and in `min_fraction` of the observations) on their output, or else on the successor for
    one symbol (the one with most disagreement), is split by that observation. Members without
    it (prediction -1, another symbol, no successor) join the nearest new part in `x` (or the
    majority part without `x`). Stops when stable (converged) or past `max_states` blocks.
    """
    blocks = _relabel(np.asarray(blocks))
    src, sym, dst = edges
    n_sym = int(sym.max(initial=0)) + 1
    n_rows = len(blocks)
    known = np.flatnonzero(predictions >= 0)
    group = np.full(n_rows, -1, dtype=np.int64)
    group[known] = predictions[known]
    tags = _tags(blocks[known], predictions[known], np.ones(len(known), bool), min_count, min_fraction)
    hot = np.unique(blocks[known][tags >= 0])
    split = _split_blocks(blocks, group, hot, x)
    converged = False
    if split is not None and split.max() + 1 <= max_states:
        blocks = split
    for _ in range(max_rounds):
        pair = blocks[src] * n_sym + sym
        tag = _tags(pair, blocks[dst], np.ones(len(pair), dtype=bool), min_count, min_fraction)
        bad = tag >= 0
        if not bad.any():
            converged = True
            break
        weight = np.bincount(pair[bad], minlength=int(blocks.max() + 1) * n_sym).reshape(-1, n_sym)
        chosen = weight.argmax(1)
        hot = np.flatnonzero(weight.max(1) > 0)
        use = chosen[blocks[src]] == sym
        group = np.full(n_rows, -1, dtype=np.int64)
        group[src[use]] = blocks[dst[use]]
        split = _split_blocks(blocks, group, hot, x)
        if split is None:
            converged = True
            break
        if split.max() + 1 > max_states:
            break
        blocks = split
    return (blocks, converged) if return_converged else blocks


def _split_blocks(
    blocks: np.ndarray, group: np.ndarray, hot: np.ndarray, x: np.ndarray | None
) -> np.ndarray | None:
    """Split each block in `hot` by `group` (-1 = undecided: nearest part in `x`, or the
    largest part); None if nothing changes."""
    key = np.full(len(blocks), -1, dtype=np.int64)
    order = np.argsort(blocks, kind="stable")
    bounds = np.searchsorted(blocks[order], np.arange(int(blocks.max()) + 2))
    for b in hot:
        rows = order[bounds[b] : bounds[b + 1]]
        g = group[rows]
        decided = g >= 0
        if not decided.any():
            continue
        parts, inv = np.unique(g[decided], return_inverse=True)
        if len(parts) < 2:
            continue
        idx = np.full(len(rows), -1, dtype=np.int64)
        idx[decided] = inv.reshape(-1)
        if (~decided).any():
            if x is None:
                idx[~decided] = np.bincount(inv.reshape(-1)).argmax()
            else:
                pts = x[rows]
                centres = np.stack([pts[idx == j].mean(0) for j in range(len(parts))])
                d = ((pts[~decided, None, :] - centres[None]) ** 2).sum(-1)
                idx[~decided] = d.argmin(1)
        key[rows] = idx
    return _split(blocks, key)


def _tags(
    keys: np.ndarray, values: np.ndarray, where: np.ndarray, min_count: int, min_fraction: float
) -> np.ndarray:
    """Per observation: its value if it is a non-majority value of its key seen at least
    `min_count` times and in `min_fraction` of the key's observations, else -1; scattered back
    to the rows selected by `where`."""
    out = np.full(len(where), -1, dtype=np.int64)
    if len(keys) == 0:
        return out
    k, best, _, total = _majority(keys, values)
    majority = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
    majority[k] = best
    totals = np.zeros(len(majority), dtype=np.int64)
    totals[k] = total
    packed = _pack(keys, values)
    _, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    c = counts[inverse.reshape(-1)]
    frequent = (c >= min_count) & (c >= min_fraction * totals[keys])
    tag = np.where((values != majority[keys]) & frequent, values, -1)
    out[np.flatnonzero(where)] = tag
    return out


def _split(blocks: np.ndarray, tag: np.ndarray) -> np.ndarray | None:
    """Dense labels of (block, tag), or None if that splits nothing."""
    new = _relabel(_pack(blocks, tag))
    return None if new.max() == blocks.max() else new


@dataclass
class BuiltAutomaton:
    """A raw automaton over abstract states, its minimization and the vote statistics."""

    raw: Automaton
    minimal: Automaton
    state_map: np.ndarray
    votes: np.ndarray
    output_votes: np.ndarray
    n_conflicts: int
    n_completed: int
    block_support: np.ndarray


def with_free_start(a: Automaton) -> tuple[Automaton, Automaton]:
    """`(a, minimal)` with the start state's label chosen to give the smallest minimal automaton,
    for when nothing observed that label (no label before the first token) and no transition
    re-enters the start; otherwise `a` unchanged."""
    minimal = a.minimize()
    if (a.transitions == a.start).any():
        return a, minimal
    for label in range(a.n_labels):
        outputs = a.outputs.copy()
        outputs[a.start] = label
        trial = Automaton(a.alphabet, a.states, a.start, a.transitions, outputs.tolist(), a.labels, a.name)
        small = trial.minimize()
        if small.n_states < minimal.n_states:
            a, minimal = trial, small
    return a, minimal


def build_automaton(
    blocks: np.ndarray,
    predictions: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    start_rows: np.ndarray,
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    complete: Completion | None = None,
    start_output: int | None = None,
    name: str = "extracted",
    n_blocks: int = 0,
) -> BuiltAutomaton:
    """Majority-vote automaton over `blocks` (one abstract state per row), then minimized.

    `votes` rows are `(source, symbol, target, count)` for every observed transition. A
    (state, symbol) pair never observed is filled by `complete(blocks, symbols) -> targets`
    (e.g. by querying the network), or as a self-loop without it. Rows with prediction -1 do
    not vote on outputs; a state without votes (the start state when the empty prefix is not
    a position) takes the label that gives the smallest minimized automaton, `start_output`
    on ties. `n_blocks` reserves states that no row falls in.
    """
    blocks = np.asarray(blocks, dtype=np.int64)
    n = max(int(blocks.max()) + 1, n_blocks)
    k = len(alphabet)
    src, sym, dst = edges
    if len(start_rows) == 0:
        raise InputError("no initial rows to anchor the start state")
    pair = blocks[src] * k + sym
    keys, best, top, totals = _majority(pair, blocks[dst])
    packed, counts = np.unique(pair * n + blocks[dst], return_counts=True)
    votes = np.stack([packed // n // k, packed // n % k, packed % n, counts], 1)
    table = np.full(n * k, -1, dtype=np.int64)
    table[keys] = best
    n_conflicts = int((totals - top).sum())
    missing = np.flatnonzero(table < 0)
    if len(missing):
        table[missing] = complete(missing // k, missing % k) if complete else missing // k
    table = table.reshape(n, k)
    known = predictions >= 0
    ob, out, _, _ = _majority(blocks[known], predictions[known])
    outputs = np.full(n, -1, dtype=np.int64)
    outputs[ob] = out
    pk, pc = np.unique(blocks[known] * len(labels) + predictions[known], return_counts=True)
    output_votes = np.stack([pk // len(labels), pk % len(labels), pc], 1)
    start = int(np.bincount(blocks[start_rows]).argmax())
    free = np.flatnonzero(outputs < 0)
    default = 0 if start_output is None or start_output < 0 else int(start_output)
    outputs[free] = default
    states = [f"s{i}" for i in range(n)]
    raw = Automaton(alphabet, states, start, table, outputs.tolist(), labels, name)
    if start in free:
        raw, minimal = with_free_start(raw)
    else:
        minimal = raw.minimize()
    return BuiltAutomaton(
        raw=raw,
        minimal=minimal,
        state_map=state_map(raw, minimal),
        votes=votes,
        output_votes=output_votes,
        n_conflicts=n_conflicts,
        n_completed=len(missing),
        block_support=np.bincount(blocks, minlength=n),
    )


def state_map(a: Automaton, b: Automaton) -> np.ndarray:
    """For each state of `a`, the state of an equivalent `b` reached by the same words (-1 if
    unreachable in `a`)."""
    sym = np.array([b.alphabet.index(x) for x in a.alphabet])
    out = np.full(a.n_states, -1, dtype=np.int64)
    out[a.start] = b.start
    queue = deque([a.start])
    while queue:
        s = queue.popleft()
        for j in range(a.n_symbols):
            t = int(a.transitions[s, j])
            if out[t] < 0:
                out[t] = int(b.transitions[out[s], sym[j]])
                queue.append(t)
    return out


def to_graph(
    built: BuiltAutomaton,
    row_blocks: np.ndarray,
    vectors: np.ndarray,
    predictions: np.ndarray,
    **graph_attrs: object,
) -> nx.MultiDiGraph:
    """The minimized automaton as a `MultiDiGraph` with the evidence behind every state and edge.

    Nodes: `output`, `start`, `support` (collected rows in the state), `output_confidence`,
    `centroid` (mean activation). Edges (key = symbol): `symbol`, `count` (observations
    agreeing with the edge), `confidence` (their share), `conflicts` (observations outvoted),
    `completed` (no observation: the target came from a completion query).
    """
    m = built.minimal
    g = m.to_networkx()
    g.graph.update(graph_attrs)
    row_state = built.state_map[row_blocks]
    k = m.n_symbols
    for i, s in enumerate(m.states):
        members = row_state == i
        support = int(members.sum())
        node = g.nodes[s]
        node["support"] = support
        node["output_confidence"] = (
            float((predictions[members] == m.outputs[i]).mean()) if support else 0.0
        )
        node["centroid"] = vectors[members].mean(0).tolist() if support else []
    v = built.votes
    mapped = np.stack([built.state_map[v[:, 0]], v[:, 1], built.state_map[v[:, 2]]], 1)
    ok = (mapped >= 0).all(1)
    agg = np.zeros((m.n_states, k, m.n_states), dtype=np.int64)
    np.add.at(agg, (mapped[ok, 0], mapped[ok, 1], mapped[ok, 2]), v[ok, 3])
    for i, s in enumerate(m.states):
        for j, a in enumerate(m.alphabet):
            t = int(m.transitions[i, j])
            total = int(agg[i, j].sum())
            count = int(agg[i, j, t])
            g.edges[s, m.states[t], a].update(
                count=count,
                confidence=count / total if total else 0.0,
                conflicts=total - count,
                completed=total == 0,
            )
    return g


def graph_to_automaton(g: nx.MultiDiGraph) -> Automaton:
    """The automaton of an extracted (or any `Automaton.to_networkx`) graph."""
    return Automaton.from_networkx(g)


def _plain(value: object) -> object:
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def write_graphml(g: nx.MultiDiGraph, path: str | os.PathLike) -> Path:
    """GraphML, atomically; list and dict attributes are stored as JSON strings."""
    h = nx.MultiDiGraph()
    h.graph.update({k: _plain(v) for k, v in g.graph.items()})
    for n, d in g.nodes(data=True):
        h.add_node(n, **{k: _plain(v) for k, v in d.items()})
    for u, v, key, d in g.edges(keys=True, data=True):
        h.add_edge(u, v, key=key, **{k: _plain(x) for k, x in d.items()})
    return atomic_write(path, lambda tmp: nx.write_graphml(h, tmp))


def _q(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: nx.MultiDiGraph) -> str:
    """Graphviz DOT text: one node per state (label "state / output"), an arrow into the start
    state, and one edge per (source, target) listing its symbols."""
    lines = [f"digraph {_q(g.graph.get('name', 'automaton'))} {{", "  rankdir=LR;"]
    lines.append('  __start__ [shape=point, label=""];')
    start = g.graph.get("start")
    for n, d in g.nodes(data=True):
        label = f"{n} / {d.get('output', '')}"
        lines.append(f"  {_q(n)} [shape=circle, label={_q(label)}];")
    if start is not None:
        lines.append(f"  __start__ -> {_q(start)};")
    grouped: dict[tuple[str, str], list[str]] = {}
    for u, v, key, d in g.edges(keys=True, data=True):
        grouped.setdefault((u, v), []).append(str(d.get("symbol", key)))
    for (u, v), symbols in grouped.items():
        lines.append(f"  {_q(u)} -> {_q(v)} [label={_q(','.join(symbols))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(g: nx.MultiDiGraph, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, to_dot(g))

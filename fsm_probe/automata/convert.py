"""Conversions of an `Automaton`: plain dicts and JSON files (the task-file format), networkx.

`to_dict` / `from_dict` name states, symbols and labels; `read_json` refuses what a user could
not type back (duplicate keys, symbols with whitespace) and names the file in every error.
GraphML and DOT files are written from the networkx graph (`fsm_probe.extraction.build`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import AutomatonError
from ..io import atomic_write_json
from .machine import Automaton

_DICT_KEYS = {"name", "alphabet", "states", "start", "transitions", "outputs", "labels"}
_REQUIRED_KEYS = ("alphabet", "states", "start", "transitions")
_IGNORED_KEYS = {"input_distribution"}


def to_networkx(automaton: Automaton) -> nx.MultiDiGraph:
    """States as nodes (attributes `output`, `start`), one edge per (state, symbol)."""
    m = automaton
    g = nx.MultiDiGraph(
        name=m.name, alphabet=list(m.alphabet), start=m.states[m.start], labels=list(m.labels)
    )
    for i, s in enumerate(m.states):
        g.add_node(s, output=m.labels[m.outputs[i]], start=i == m.start)
    for i, s in enumerate(m.states):
        for j, a in enumerate(m.alphabet):
            g.add_edge(s, m.states[m.transitions[i, j]], key=a, symbol=a)
    return g


def from_networkx(g: nx.MultiDiGraph) -> Automaton:
    """Inverse of `to_networkx`; start and alphabet may come from graph or node/edge data."""
    if not isinstance(g, nx.MultiDiGraph):
        raise AutomatonError(f"expected a networkx MultiDiGraph, got {type(g).__name__}")
    states = [str(n) if not isinstance(n, str) else n for n in g.nodes]
    if len(set(states)) != len(states):
        raise AutomatonError("node names collide when converted to strings")
    name_of = dict(zip(g.nodes, states, strict=True))
    edges = [
        (name_of[u], name_of[v], d.get("symbol", k))
        for u, v, k, d in g.edges(keys=True, data=True)
    ]
    alphabet = g.graph.get("alphabet")
    if alphabet is None:
        alphabet = list(dict.fromkeys(str(a) for _, _, a in edges))
    start = g.graph.get("start")
    if start is None:
        starts = [name_of[n] for n, d in g.nodes(data=True) if d.get("start")]
        if len(starts) != 1:
            raise AutomatonError(f"graph must mark exactly one start node, found {starts}")
        start = starts[0]
    elif start in name_of:
        start = name_of[start]
    table: dict[str, dict[str, str]] = {s: {} for s in states}
    for u, v, a in edges:
        if not isinstance(a, str):
            a = str(a)
        if a in table[u] and table[u][a] != v:
            raise AutomatonError(f"nondeterministic: state {u!r} has several edges on {a!r}")
        table[u][a] = v
    outs = [d.get("output") for _, d in g.nodes(data=True)]
    if all(o is None for o in outs):
        outputs = None
        labels = None
    elif any(o is None for o in outs):
        missing = [name_of[n] for n, d in g.nodes(data=True) if d.get("output") is None]
        raise AutomatonError(f"node(s) {missing} have no output attribute")
    else:
        outputs = [str(o) for o in outs]
        labels = g.graph.get("labels")
    return Automaton(
        alphabet, states, start, table, outputs, labels, str(g.graph.get("name", "automaton"))
    )


def to_dict(automaton: Automaton) -> dict[str, Any]:
    """JSON-able description (states, symbols and labels by name)."""
    m = automaton
    return {
        "name": m.name,
        "alphabet": list(m.alphabet),
        "states": list(m.states),
        "start": m.states[m.start],
        "transitions": {
            s: {a: m.states[m.transitions[i, j]] for j, a in enumerate(m.alphabet)}
            for i, s in enumerate(m.states)
        },
        "outputs": {s: m.labels[m.outputs[i]] for i, s in enumerate(m.states)},
        "labels": list(m.labels),
    }


def from_dict(d: Any) -> Automaton:
    """Inverse of `to_dict`; `outputs`, `labels` and `name` are optional."""
    if not isinstance(d, Mapping):
        raise AutomatonError(
            f"automaton description must be a JSON object, got {type(d).__name__}"
        )
    unknown = set(d) - _DICT_KEYS - _IGNORED_KEYS
    if unknown:
        raise AutomatonError(
            f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_DICT_KEYS | _IGNORED_KEYS)}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in d]
    if missing:
        raise AutomatonError(f"automaton description lacks key(s) {missing}")
    if not isinstance(d["start"], str):
        raise AutomatonError(f"'start' must be a state name, got {d['start']!r}")
    if not isinstance(d["transitions"], Mapping):
        raise AutomatonError("'transitions' must be an object state -> {symbol: state}")
    for s, row in d["transitions"].items():
        if isinstance(row, Mapping):
            for a, t in row.items():
                if not isinstance(t, str):
                    raise AutomatonError(
                        f"target of ({s!r}, {a!r}) must be a state name, got {t!r}"
                    )
    outputs = d.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, Mapping):
            raise AutomatonError("'outputs' must be an object state -> label")
        for s, o in outputs.items():
            if not isinstance(o, str | int) or isinstance(o, bool):
                raise AutomatonError(f"output of state {s!r} must be a label name, got {o!r}")
        outputs = {s: str(o) for s, o in outputs.items()}
    labels = d.get("labels")
    if labels is not None and outputs is None:
        raise AutomatonError("'labels' given without 'outputs'")
    return Automaton(
        d["alphabet"],
        d["states"],
        d["start"],
        d["transitions"],
        outputs,
        labels,
        d.get("name", "automaton"),
    )


def save_json(automaton: Automaton, path: str | os.PathLike) -> Path:
    """Write `to_dict()` atomically."""
    return atomic_write_json(path, to_dict(automaton))


def load_json(path: str | os.PathLike) -> Automaton:
    """Read an automaton file, raising AutomatonError (naming the file) if it is unusable."""
    return read_json(path)[0]


def read_json(path: str | os.PathLike) -> tuple[Automaton, Any]:
    """`load_json` that also returns the parsed JSON document (for extra keys in the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AutomatonError(
            f"cannot read automaton file {str(path)!r}: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError as e:
        raise AutomatonError(f"automaton file {str(path)!r} is not UTF-8 text: {e}") from None
    try:
        d = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise AutomatonError(f"automaton file {str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise AutomatonError(f"automaton file {str(path)!r} is nested too deeply to be an automaton") from None
    except ValueError as e:  # a duplicate key, or an integer beyond Python's digit limit
        raise AutomatonError(f"automaton file {str(path)!r}: {str(e).splitlines()[0][:200]}") from None
    try:
        automaton = from_dict(d)
    except AutomatonError as e:
        raise AutomatonError(f"{str(path)!r}: {e}") from None
    except RecursionError:
        raise AutomatonError(f"automaton file {str(path)!r} is nested too deeply to be an automaton") from None
    for a in automaton.alphabet:
        if a != a.strip() or not a or any(c.isspace() for c in a):
            raise AutomatonError(
                f"{str(path)!r}: symbol {a!r} is empty or contains whitespace, so it could not be "
                "typed to `fsm-probe predict` (symbols are separated by spaces)"
            )
    return automaton, d


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing duplicate keys (json's default keeps the last silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in one JSON object")
        out[k] = v
    return out

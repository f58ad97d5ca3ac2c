"""Figures for automaton extraction: PCA trajectories, the extracted graph, fidelity vs size.

Every function returns a `plotly.graph_objects.Figure`; `figures_html` joins several into one
offline HTML page (plotly.js inlined once) and `save_html` writes it atomically.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import InputError
from ..io import atomic_write_text
from .html import figure_block, page

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
)


KAMADA_KAWAI_MAX = 150  # states drawn with Kamada-Kawai; larger automata with a spring layout


def _colour(i: int) -> str:
    return PALETTE[int(i) % len(PALETTE)]


def _fitted(extractor: Any) -> None:
    if not hasattr(extractor, "automaton_"):
        raise InputError("the extractor is not fitted yet; call fit(model, task) first")


def trajectories_figure(extractor: Any, n_sequences: int = 3, max_points: int = 4000) -> go.Figure:
    """The collected states in the first two principal components, coloured by true state (when
    the task is known) and by extracted state, with a few sequences drawn as paths."""
    _fitted(extractor)
    col = extractor.collection_
    reducer = getattr(extractor, "reducer_", None)
    x = np.tanh(col.flat()) if getattr(extractor, "squash", False) else col.flat()
    if reducer is None:
        from ..extraction.abstraction import Reducer

        reducer = Reducer(2).fit(x)
    z = reducer.transform(x)
    if z.shape[1] < 2:
        z = np.concatenate([z, np.zeros((len(z), 2 - z.shape[1]))], 1)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(z), min(max_points, len(z)), replace=False)
    truth = col.flat_true_states()
    panels = [("extracted state", extractor.row_states_, extractor.automaton_.states)]
    if truth is not None:
        names = getattr(getattr(extractor, "task_automaton_", None), "states", None)
        panels.insert(0, ("true state", truth, names))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
    t1 = col.length + 1
    for c, (title, values, names) in enumerate(panels, start=1):
        for v in np.unique(values[pick]):
            sel = pick[values[pick] == v]
            label = "unassigned" if v < 0 else (names[v] if names is not None else str(v))
            fig.add_trace(
                go.Scattergl(
                    x=z[sel, 0], y=z[sel, 1], mode="markers", name=f"{title}: {label}",
                    marker={"size": 5, "color": _colour(v), "opacity": 0.6},
                    legendgroup=title,
                ),
                row=1, col=c,
            )
        for i in range(min(n_sequences, col.n_sequences)):
            path = z[i * t1 : (i + 1) * t1]
            fig.add_trace(
                go.Scatter(
                    x=path[:, 0], y=path[:, 1], mode="lines", showlegend=False,
                    line={"width": 1, "color": "rgba(0,0,0,0.35)"}, hoverinfo="skip",
                ),
                row=1, col=c,
            )
    fig.update_layout(title="Hidden-state trajectories (PCA)", height=450)
    fig.update_xaxes(title_text="PC 1")
    fig.update_yaxes(title_text="PC 2")
    return fig


def automaton_figure(graph: nx.MultiDiGraph, seed: int = 0) -> go.Figure:
    """The automaton as a node-link drawing: nodes coloured by output and sized by support,
    edges labelled with their symbols (and confidence when known), the start state outlined."""
    if not isinstance(graph, nx.MultiDiGraph):
        raise InputError(f"expected a networkx MultiDiGraph, got {type(graph).__name__}")
    if graph.number_of_nodes() == 0:
        raise InputError("the graph has no states to draw")
    simple = nx.Graph(graph.to_undirected())
    if len(simple) <= 2:
        pos = nx.circular_layout(simple)
    elif len(simple) <= KAMADA_KAWAI_MAX:
        pos = nx.kamada_kawai_layout(simple)
    else:  # Kamada-Kawai's all-pairs optimisation took minutes at 751 states
        pos = nx.spring_layout(simple, seed=seed)
    if len(simple) == 1:
        pos = {n: np.zeros(2) for n in simple}
    support = {n: float(graph.nodes[n].get("support", 1) or 1) for n in graph}
    top = max(support.values())
    size = {n: 22 + 18 * math.sqrt(support[n] / top) for n in graph}  # marker diameter, px
    fig = go.Figure()
    grouped: dict[tuple[Any, Any], list[str]] = {}
    for u, v, key, d in graph.edges(keys=True, data=True):
        text = str(d.get("symbol", key))
        if "confidence" in d and not d.get("completed", False):
            text += f" ({d['confidence']:.2f})"
        grouped.setdefault((u, v), []).append(text)
    # every edge line in one trace and the annotations set at once: a trace or annotation added
    # one at a time revalidates the figure, which took minutes at 751 states
    line_x: list[float | None] = []
    line_y: list[float | None] = []
    notes: list[dict[str, Any]] = []
    arrow = {"xref": "x", "yref": "y", "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2,
             "arrowsize": 1.2, "arrowcolor": "#888"}
    for (u, v), texts in grouped.items():
        label = ", ".join(texts)
        (x0, y0), (x1, y1) = pos[u], pos[v]
        if u == v:
            r = 0.12
            xs = [x0 + r * math.cos(a) for a in np.linspace(0, 2 * math.pi, 30)]
            ys = [y0 + r + r * math.sin(a) for a in np.linspace(0, 2 * math.pi, 30)]
            line_x += [*xs, None]
            line_y += [*ys, None]
            # the loop re-enters the node from its upper right
            notes.append({**arrow, "x": x0, "y": y0, "ax": xs[3], "ay": ys[3], "standoff": size[v] / 2 + 2})
            notes.append({"x": x0, "y": y0 + 2.2 * r, "text": label, "showarrow": False, "font": {"size": 11}})
            continue
        bend = 0.08 if (v, u) in grouped else 0.0
        mx, my = (x0 + x1) / 2 - bend * (y1 - y0), (y0 + y1) / 2 + bend * (x1 - x0)
        notes.append({**arrow, "x": x1, "y": y1, "ax": mx, "ay": my, "standoff": size[v] / 2 + 2})
        line_x += [x0, mx, None]
        line_y += [y0, my, None]
        notes.append({"x": mx, "y": my, "text": label, "showarrow": False, "font": {"size": 11},
                      "bgcolor": "rgba(255,255,255,0.7)"})
    fig.add_trace(go.Scatter(x=line_x, y=line_y, mode="lines", line={"color": "#888"},
                             hoverinfo="skip", showlegend=False))
    fig.update_layout(annotations=notes)
    outputs = [str(d.get("output", "")) for _, d in graph.nodes(data=True)]
    out_index = {o: i for i, o in enumerate(dict.fromkeys(outputs))}
    start = graph.graph.get("start")
    for out, idx in out_index.items():
        nodes = [n for n, d in graph.nodes(data=True) if str(d.get("output", "")) == out]
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
            text=[str(n) for n in nodes], textposition="middle center", name=f"output {out}",
            marker={"size": [size[n] for n in nodes], "color": _colour(idx),
                    "line": {"width": [4 if n == start else 1 for n in nodes], "color": "black"}},
            hovertext=[f"{n}: output {out}, support {graph.nodes[n].get('support', '?')}"
                       for n in nodes],
            hoverinfo="text",
        ))
    fig.update_layout(
        title=f"Extracted automaton ({graph.number_of_nodes()} states; start {start} outlined)",
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
        plot_bgcolor="white", height=500,
    )
    return fig


def fidelity_curve_figure(curve: Sequence[dict[str, Any]]) -> go.Figure:
    """Held-out fidelity and minimized state count against the abstraction size tried."""
    if not curve:
        raise InputError("the fidelity curve is empty")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for refined, dash in ((False, "solid"), (True, "dot")):
        pts = [c for c in curve if bool(c.get("refined")) == refined]
        if not pts:
            continue
        tag = "refined" if refined else "plain"
        xs = [c["size"] for c in pts]
        fig.add_trace(go.Scatter(x=xs, y=[c["fidelity"] for c in pts], mode="lines+markers",
                                 name=f"fidelity ({tag})", line={"dash": dash, "color": PALETTE[0]}),
                      secondary_y=False)
        fig.add_trace(go.Scatter(x=xs, y=[c["n_states"] for c in pts], mode="lines+markers",
                                 name=f"states after minimization ({tag})",
                                 line={"dash": dash, "color": PALETTE[1]}),
                      secondary_y=True)
    fig.update_layout(title="Fidelity vs number of abstract states", height=400)
    fig.update_xaxes(title_text="abstraction size (clusters or bins per dimension)")
    fig.update_yaxes(title_text="held-out fidelity", secondary_y=False)
    fig.update_yaxes(title_text="states", secondary_y=True)
    return fig


CAPTIONS = (
    "The extracted automaton: nodes are abstract states labelled with their output and sized by "
    "how many sampled prefixes reach them (the start state has a thick outline); arrows are the "
    "transitions on each symbol, with the share of prefixes that agree with the majority vote "
    "when it is below 1. If it matches the task's minimal automaton, the network tracks the "
    "state rather than a shortcut.",
    "Hidden states of the sampled prefixes projected on their first two principal components, "
    "coloured by the true automaton state (left) and by the extracted state (right). Separate "
    "clouds that keep their colour along a trajectory are the finite states the network keeps.",
    "Agreement with the network on held-out sequences (left axis) and states after "
    "minimization (right axis) against the abstraction size tried; the chosen size is the "
    "smallest whose automaton agrees with the network.",
    "When the network is not finite-state: the control of the fitted counter machine. Each arrow "
    "reads a symbol together with the signs of the counters after it (a|c0>0); the title gives "
    "what each symbol adds to the counters.",
)


def extraction_figures(extractor: Any) -> list[go.Figure]:
    """The standard figures of a fitted `FSMExtractor` (captions: `CAPTIONS`, same order): the
    automaton, the trajectories, the fidelity curve, and the counter machine's control when one
    was fitted."""
    _fitted(extractor)
    figs = [
        automaton_figure(extractor.graph_),
        trajectories_figure(extractor),
        fidelity_curve_figure(extractor.curve_),
    ]
    cm = getattr(extractor, "counter_machine_", None)
    if cm is not None:
        fig = automaton_figure(cm.control_automaton().to_networkx())
        updates = "; ".join(f"{a}: {cm.updates[i].tolist()}" for i, a in enumerate(cm.alphabet))
        fig.update_layout(title=f"Counter machine: control, {cm.n_counters} counter(s), updates {updates}")
        figs.append(fig)
    return figs


def figures_html(figures: Sequence[go.Figure], title: str = "fsm_probe extraction",
                 summary: str | None = None, captions: Sequence[str] = CAPTIONS) -> str:
    """One self-contained page in the report's style (plotly.js inlined once, works offline).

    `captions[i]` (HTML) goes under figure i."""
    parts = [f"<pre>{html.escape(summary)}</pre>"] if summary else []
    parts += [
        figure_block(fig, caption) for fig, caption in zip(figures, captions, strict=False)
    ]
    return page(title, "automaton extraction", [("figures", "Figures", "".join(parts))])


def save_html(figures: Sequence[go.Figure], path: str | os.PathLike, title: str = "fsm_probe extraction") -> Path:
    return atomic_write_text(path, figures_html(figures, title))

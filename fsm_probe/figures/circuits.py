"""Plotly figures for locating circuits: attention, logit lens, probes, patching, tracing, graph.

Every function returns a `plotly.graph_objects.Figure`; none of them needs a network connection
to display (the report inlines plotly.js once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_HEIGHT = 380


def attention_head_grid(
    patterns: np.ndarray, labels: Sequence[str] | None = None, title: str = "Attention patterns"
) -> go.Figure:
    """One heatmap per (layer, head) of one sequence's patterns `[layer, head, query, key]`."""
    patterns = np.asarray(patterns)
    n_layers, n_heads, n_q, _ = patterns.shape
    labels = list(labels) if labels is not None else [str(i) for i in range(n_q)]
    fig = make_subplots(
        rows=n_layers,
        cols=n_heads,
        subplot_titles=[f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)],
        horizontal_spacing=0.03,
        vertical_spacing=0.08 if n_layers > 1 else 0.1,
    )
    for layer in range(n_layers):
        for head in range(n_heads):
            fig.add_trace(
                go.Heatmap(
                    z=patterns[layer, head],
                    x=labels,
                    y=labels,
                    zmin=0,
                    zmax=1,
                    colorscale="Blues",
                    showscale=layer == 0 and head == 0,
                    colorbar={"title": "weight"},
                    hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
                ),
                row=layer + 1,
                col=head + 1,
            )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=title, height=max(_HEIGHT, 230 * n_layers), margin={"t": 70})
    return fig


def head_stats_figure(stats: Any) -> go.Figure:
    """Heatmaps layer x head of uniform distance, entropy, previous- and first-token weight."""
    panels = [
        ("uniform_distance", "distance from uniform", "Viridis_r"),
        ("entropy", "normalised entropy", "Viridis"),
        ("prev_token", "previous-token weight", "Blues"),
        ("first_token", "first-token weight", "Blues"),
    ]
    if getattr(stats, "memory_read", None) is not None:  # an RMT: key 0 is a memory slot
        panels[2:] = [("memory_read", "tokens -> read memory", "Blues"),
                      ("memory_write", "write slots -> read memory", "Blues")]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels])
    heads = [f"H{h}" for h in range(stats.n_heads)]
    layers = [f"L{i}" for i in range(stats.n_layers)]
    for i, (name, label, scale) in enumerate(panels):
        z = getattr(stats, name)
        fig.add_trace(
            go.Heatmap(
                z=z, x=heads, y=layers, zmin=0, zmax=1, colorscale=scale, showscale=False,
                text=np.round(z, 2), texttemplate="%{text}",
                hovertemplate=f"%{{y}}%{{x}}<br>{label} %{{z:.3f}}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Per-head attention statistics (length {stats.length})", height=_HEIGHT)
    return fig


def dilution_figure(dilution: Any) -> go.Figure:
    """Log-log: largest weight on one key at the last position vs length, per head, with 1/T."""
    fig = go.Figure()
    lengths = np.asarray(dilution.lengths)
    n_layers, n_heads = dilution.exponent.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            fig.add_trace(
                go.Scatter(
                    x=lengths, y=dilution.max_weight[:, layer, head], mode="lines+markers",
                    name=f"L{layer}H{head} (slope {dilution.exponent[layer, head]:.2f})",
                )
            )
    fig.add_trace(
        go.Scatter(x=lengths, y=dilution.reference, mode="lines", name="1/T (uniform)",
                   line={"dash": "dash", "color": "black"})
    )
    fig.update_xaxes(type="log", title="sequence length T")
    fig.update_yaxes(type="log", title="max weight on one token (last position)")
    fig.update_layout(title="Attention dilution", height=_HEIGHT + 40)
    return fig


def logit_lens_figure(result: Any, value: str = "accuracy") -> go.Figure:
    """Heatmap site x position of the decoded `value` (accuracy, prob or kl)."""
    z = getattr(result, value)
    scale = "Reds" if value == "kl" else "Viridis"
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=result.sites, colorscale=scale,
            zmin=0, zmax=None if value == "kl" else 1, colorbar={"title": value},
            hovertemplate=f"%{{y}} position %{{x}}<br>{value} %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="site (input at top)")
    fig.update_xaxes(title="position")
    names = {"accuracy": "accuracy of the true label", "prob": "p(true label)", "kl": "KL from the output"}
    fig.update_layout(title=f"{result.lens.capitalize()} lens: {names.get(value, value)}", height=_HEIGHT)
    return fig


def probe_figure(result: Any) -> go.Figure:
    """Probe test accuracy by site, one line per hypothesis, chance levels dotted."""
    fig = go.Figure()
    colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf",
    ]
    for j, target in enumerate(result.targets):
        color = colors[j % len(colors)]
        fig.add_trace(
            go.Scatter(x=result.sites, y=result.accuracy[:, j], mode="lines+markers", name=target,
                       line={"color": color, "width": 3 if target == "state" else 1.5},
                       legendgroup=target)
        )
        fig.add_trace(
            go.Scatter(x=result.sites, y=[result.chance[j]] * len(result.sites), mode="lines",
                       line={"color": color, "dash": "dot", "width": 1}, legendgroup=target,
                       showlegend=False, hoverinfo="skip")
        )
    fig.update_yaxes(range=[0, 1.02], title="probe test accuracy")
    fig.update_xaxes(title="site (input -> output)")
    fig.update_layout(title=f"Linear probes ({result.kind}) per site", height=_HEIGHT + 40)
    return fig


def _patch_matrix(result: Any, normalize: bool) -> tuple[np.ndarray, list[str], str]:
    values = np.asarray(result.values, dtype=np.float64)
    scale = result.clean_value - result.corrupted_value
    if normalize and scale != 0:
        z, label = (values - result.corrupted_value) / scale, "normalised (0 corrupt, 1 clean)"
    else:
        z, label = values - result.baseline, "effect on metric"
    if values.ndim == 1:  # the RMT's memory, one cell per segment
        return z[None], [result.site], label
    if tuple(getattr(result, "axes", ())) == ("segment", "slot"):
        return z.T, [f"slot {j}" for j in range(values.shape[1])], label
    if values.ndim == 3:
        n_layers, n_pos, n_heads = values.shape
        z = z.transpose(0, 2, 1).reshape(n_layers * n_heads, n_pos)
        rows = [f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)]
    else:
        rows = [f"L{i}" for i in range(values.shape[0])]
    return z, rows, label


def patching_figure(result: Any, normalize: bool = True, title: str | None = None) -> go.Figure:
    """Heatmap layer (or layer x head) x position of an activation/attribution patching result
    (an RMT's memory: one column per segment, one row, or one per memory vector)."""
    z, rows, label = _patch_matrix(result, normalize)
    unit = "segment" if tuple(getattr(result, "axes", ()))[:1] == ("segment",) else "position"
    lim = float(np.nanmax(np.abs(z))) if z.size and np.isfinite(z).any() else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=rows, colorscale="RdBu", zmid=0,
            zmin=-max(lim, 1e-9), zmax=max(lim, 1e-9), colorbar={"title": label.split(" ")[0]},
            hovertemplate=f"%{{y}} {unit} %{{x}}<br>%{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=unit)
    method = getattr(result, "method", "activation")
    fig.update_layout(
        title=title or f"{method.capitalize()} patching, {result.site}, {result.direction}: {label}",
        height=max(_HEIGHT, 18 * len(rows) + 160),
    )
    return fig


def attribution_scatter(approx: Any, exact: Any, title: str | None = None) -> go.Figure:
    """Attribution estimate vs exact patching effect, one point per cell, with the diagonal."""
    a = np.asarray(approx.effect(), dtype=np.float64).ravel()
    b = np.asarray(exact.effect(), dtype=np.float64).ravel()
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    fig = go.Figure(
        [
            go.Scatter(x=b, y=a, mode="markers", name="cells", marker={"size": 6, "opacity": 0.7}),
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                       line={"dash": "dash", "color": "black"}),
        ]
    )
    fig.update_xaxes(title="exact patching effect")
    fig.update_yaxes(title="attribution estimate")
    fig.update_layout(title=title or f"Attribution vs exact patching ({exact.site})", height=_HEIGHT)
    return fig


def tracing_figure(result: Any, labels: Sequence[str] | None = None) -> go.Figure:
    """ROME-style heatmap layer x position of p(target) after restoring each state (an RMT's
    memory: one row, one column per segment; `labels` then name the segments)."""
    scores = np.asarray(result.scores, dtype=np.float64)
    scale = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}.get(result.kind, "Purples")
    x = list(labels) if labels is not None else list(range(scores.shape[1]))
    seg = getattr(result, "segment_length", None)
    corrupt = {p // seg for p in result.corrupt_positions} if seg else set(result.corrupt_positions)
    if labels is not None:
        x = [f"{lab}*" if i in corrupt else lab for i, lab in enumerate(x)]
    rows = ["memory"] if seg else [f"L{i}" for i in range(scores.shape[0])]
    unit = "segment" if seg else "position"
    fig = go.Figure(
        go.Heatmap(
            z=scores, x=x, y=rows, colorscale=scale,
            zmin=result.low_score, zmax=max(result.high_score, result.low_score + 1e-9),
            colorbar={"title": "p(target)"},
            hovertemplate=f"%{{y}} {unit} %{{x}}<br>p(target) %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=f"{unit} (* = corrupted)" if labels is not None else unit)
    window = f", window {result.window}" if result.kind != "resid" else ""
    fig.update_layout(
        title=f"Restoring {result.kind}{window} after corrupting positions "
        f"{list(result.corrupt_positions)}",
        height=_HEIGHT,
    )
    return fig


def circuit_figure(graph: nx.DiGraph, title: str = "Circuit summary") -> go.Figure:
    """The circuit graph laid out by layer: node size = |effect|, colour = sign, edges by weight."""
    stage = {"input": 0, "resid": 1, "state": 1, "cell": 1, "head": 2, "attn": 2, "resid_mid": 2.5, "mlp": 3,
             "resid_post": 3.5}
    def column(node: str) -> float:
        d = graph.nodes[node]
        if d["kind"] == "input":
            return -1.0
        if d["kind"] == "output":
            return float(max([graph.nodes[n].get("layer", 0) for n in graph if n not in ("input", "output")] or [0]) + 1)
        return d["layer"] + 0.3 * (stage.get(d["kind"], 1) - 1)
    cols: dict[float, list[str]] = {}
    for node in graph:
        cols.setdefault(column(node), []).append(node)
    pos = {}
    for x, nodes in cols.items():
        for i, node in enumerate(sorted(nodes)):
            pos[node] = (x, i - (len(nodes) - 1) / 2)
    edge_traces = []
    max_w = max([d["weight"] for *_, d in graph.edges(data=True)] or [1.0]) or 1.0
    for a, b, d in graph.edges(data=True):
        edge_traces.append(
            go.Scatter(
                x=[pos[a][0], pos[b][0]], y=[pos[a][1], pos[b][1]], mode="lines",
                line={"width": 0.5 + 4 * d["weight"] / max_w, "color": "rgba(100,100,100,0.45)"},
                hoverinfo="text", text=f"{a} -> {b}: {d['weight']:.3f}", showlegend=False,
            )
        )
    nodes = list(graph)
    eff = [graph.nodes[n].get("effect", 0.0) for n in nodes]
    node_trace = go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
        text=nodes, textposition="top center", showlegend=False,
        marker={
            "size": [14 + 30 * min(1.0, abs(e)) for e in eff],
            "color": eff, "colorscale": "RdBu", "cmid": 0, "cmin": -1, "cmax": 1,
            "colorbar": {"title": "effect"}, "line": {"width": 1, "color": "black"},
        },
        hovertext=[f"{n}: effect {e:.3f}" for n, e in zip(nodes, eff, strict=True)],
        hoverinfo="text",
    )
    fig = go.Figure([*edge_traces, node_trace])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=_HEIGHT + 80)
    return fig


def length_figure(
    report: Mapping[int, Mapping[str, float]], train_max: int | None = None
) -> go.Figure:
    """Accuracy per length (per-position, final-position, whole sequence), training range shaded."""
    lengths = sorted(int(k) for k in report)
    fig = go.Figure()
    for key, name in (
        ("accuracy", "per-position"),
        ("final_accuracy", "final position"),
        ("sequence_accuracy", "whole sequence"),
    ):
        fig.add_trace(
            go.Scatter(x=lengths, y=[report[k][key] for k in lengths], mode="lines+markers", name=name)
        )
    if train_max:
        fig.add_vrect(x0=min(lengths + [1]), x1=train_max, fillcolor="green", opacity=0.08,
                      line_width=0, annotation_text="trained", annotation_position="top left")
    fig.update_xaxes(type="log", title="sequence length")
    fig.update_yaxes(range=[0, 1.02], title="accuracy")
    fig.update_layout(title="Length generalization", height=_HEIGHT)
    return fig


def training_figure(log: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Training loss and validation accuracy per step from `train_log.jsonl` entries."""
    steps = [e["step"] for e in log]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=steps, y=[e["loss"] for e in log], name="train loss"), secondary_y=False)
    fig.add_trace(
        go.Scatter(x=steps, y=[e["val_accuracy"] for e in log], name="validation accuracy"),
        secondary_y=True,
    )
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss", type="log", secondary_y=False)
    fig.update_yaxes(title="accuracy", range=[0, 1.02], secondary_y=True)
    fig.update_layout(title="Training", height=_HEIGHT - 60)
    return fig

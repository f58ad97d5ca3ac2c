"""Circuit summary: rank components by their patching effect and draw them as a graph.

Components are attention heads (`L0H1`), attention and MLP sublayers (`L1.attn`, `L1.mlp`),
residual-stream positions (`resid L0@3`: the stream entering block 0 at position 3; `resid_mid
L0@3` and `resid_post L0@3`: after its attention and after the whole block) and RNN states
(`L0.h@3`) and an RMT's memory (`memory@2`: the memory written by segment 2, or `memory@2[1]`:
its vector 1; `position` is the segment, `head` the vector). A component's effect is its largest
normalised patching effect over positions (1 = restores the clean behaviour, 0 = none), and the
position where it peaks is kept. The graph links each kept component to every kept component
downstream of it (later layer, and not an earlier position), weighted by the smaller of the two
effects: the paths the circuit could use, an upper bound until path patching confirms them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np

from ..errors import InputError
from .inputs import normalized_effect
from .sites import COMPONENT_KIND, stage

_SITE_KIND = COMPONENT_KIND
_STAGE = {kind: stage(site) for site, kind in COMPONENT_KIND.items()}
_STREAMS = ("resid", "resid_mid", "resid_post", "state", "cell")  # one component per position


@dataclass
class Component:
    """One ranked component: name, kind, layer, head, peak position and signed peak effect."""

    name: str
    kind: str
    layer: int
    head: int | None
    position: int | None
    effect: float
    site: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def order(self) -> tuple[int, int]:
        return (self.layer, _STAGE[self.kind])


def _effects(result: Any, normalize: bool) -> np.ndarray:
    """Denoising: how much a patch restores; noising: how much it destroys (same sign)."""
    values = np.asarray(result.values, dtype=np.float64)
    if normalize and result.clean_value != result.corrupted_value:
        share = normalized_effect(values, result.clean_value, result.corrupted_value)
        return share if result.direction == "denoise" else 1.0 - share
    return (values - result.baseline) * (1 if result.direction == "denoise" else -1)


def _components(result: Any, normalize: bool) -> list[Component]:
    site = result.site
    if site not in _SITE_KIND:
        raise InputError(f"cannot rank patching results at site {site!r}; known sites: {', '.join(_SITE_KIND)}")
    kind = _SITE_KIND[site]
    eff = _effects(result, normalize)
    if kind == "memory" and eff.ndim == 2:  # memory_slot: [segment, slot]
        return [
            Component(f"memory@{s}[{j}]", kind, 0, j, s, float(eff[s, j]), site)
            for s in range(eff.shape[0]) for j in range(eff.shape[1])
        ]
    if kind == "memory":
        return [Component(f"memory@{s}", kind, 0, None, s, float(e), site) for s, e in enumerate(eff)]
    out = []
    if kind == "head":
        for layer in range(eff.shape[0]):
            for head in range(eff.shape[2]):
                col = eff[layer, :, head]
                p = int(np.nanargmax(np.abs(col)))
                out.append(Component(f"L{layer}H{head}", kind, layer, head, p, float(col[p]), site))
        return out
    if kind in _STREAMS:
        for layer in range(eff.shape[0]):
            for p in range(eff.shape[1]):
                if kind in ("state", "cell"):
                    name = f"L{layer}.{'h' if kind == 'state' else 'c'}@{p}"
                else:
                    name = f"{kind} L{layer}@{p}"
                out.append(Component(name, kind, layer, None, p, float(eff[layer, p]), site))
        return out
    for layer in range(eff.shape[0]):
        row = eff[layer]
        p = int(np.nanargmax(np.abs(row)))
        out.append(Component(f"L{layer}.{kind}", kind, layer, None, p, float(row[p]), site))
    return out


def rank_components(
    results: Mapping[str, Any] | Iterable[Any], normalize: bool = True
) -> list[Component]:
    """Every component of the patching `results`, largest |effect| first.

    `results` are `fsm_probe.circuits.patching.PatchingResult`s (a mapping or a list). With `normalize`, an
    effect is the share of the clean-vs-corrupted metric gap that the patch moves (denoising: how
    much it restores; noising: how much it destroys), so sites and directions compare.
    """
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    comps: dict[str, Component] = {}
    for result in items:
        for c in _components(result, normalize):
            if c.name not in comps or abs(c.effect) > abs(comps[c.name].effect):
                comps[c.name] = c
    return sorted(comps.values(), key=lambda c: (-abs(c.effect), c.order, c.name))


def _downstream(a: Component, b: Component) -> bool:
    if a.kind == b.kind == "memory":
        return b.position > a.position
    if b.order <= a.order:
        return False
    if a.position is not None and b.position is not None and a.kind in _STREAMS:
        return b.position >= a.position
    return True


def circuit_graph(
    results: Mapping[str, Any] | Iterable[Any] | list[Component],
    threshold: float = 0.1,
    top_k: int | None = 12,
    normalize: bool = True,
) -> nx.DiGraph:
    """A `networkx.DiGraph` of the components whose |effect| >= `threshold` (at most `top_k`).

    Nodes carry `kind`, `layer`, `head`, `position`, `effect`, `site`; besides the components there
    are `input` and `output` nodes. Edges carry `weight`: min(|effect|) of their two ends (edges
    from `input` / to `output` carry the component's own |effect|).
    """
    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    if items and all(isinstance(c, Component) for c in items):
        ranked = sorted(items, key=lambda c: (-abs(c.effect), c.order, c.name))
    else:
        ranked = rank_components(items, normalize=normalize)
    kept = [c for c in ranked if abs(c.effect) >= threshold][: top_k if top_k is not None else None]
    g = nx.DiGraph()
    g.add_node("input", kind="input", layer=-1, effect=1.0)
    g.add_node("output", kind="output", layer=10**6, effect=1.0)
    for c in kept:
        g.add_node(c.name, **c.to_dict())
    for a in kept:
        for b in kept:
            if _downstream(a, b):
                g.add_edge(a.name, b.name, weight=min(abs(a.effect), abs(b.effect)))
    for c in kept:
        if g.in_degree(c.name) == 0:
            g.add_edge("input", c.name, weight=abs(c.effect))
        g.add_edge(c.name, "output", weight=abs(c.effect))
    if not kept:
        g.add_edge("input", "output", weight=0.0)
    return g

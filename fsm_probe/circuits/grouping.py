"""How patched runs are grouped into stacked forwards (`engine.Runner.evaluate`): how many
patches one forward holds, and which patches share one."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models.protocol import has_attention


@dataclass(frozen=True)
class Patch:
    """One patched cell: the source activation replaces the base one at `pos` in each of
    `layers` (several for a tracing window), for one head (or RMT memory vector) if `head` is
    set; at `site` if set, else at the sweep's site (the native engine takes both in one forward)."""

    layers: tuple[int, ...]
    pos: int
    head: int | None = None
    site: str | None = None


_ROW_BUDGET = 2**25
# With fewer token rows (sequences x positions) than this per stacked forward the per-call
# overhead dominates: patches at nearby positions are then grouped (recomputing a slightly longer
# suffix) to cut the number of calls.
_MIN_TOKEN_ROWS = 2048
# A layer of a stacked forward costs about as much fixed time as this many token rows (1.2 ms
# against 1.3 us per row, measured on a compiled 5-layer scan at batch 16, 1 thread).
_LAYER_ROWS = 1024


def auto_patches(model: nn.Module, cfg: Any, batch: int, n_pos: int) -> int:
    """Patches per stacked forward that keep its activations within `_ROW_BUDGET` numbers."""
    d, attention = cfg.d_hidden, has_attention(model)
    mlp = (cfg.d_mlp if cfg.d_mlp is not None else 4 * d) if attention else 0
    attn = 2 * cfg.n_heads * n_pos if attention else 0
    return max(1, _ROW_BUDGET // max(1, batch * n_pos * (8 * d + mlp + attn)))


def sweep_span(n_pos: int, batch: int, per_pos: int) -> int:
    """Positions grouped into one stacked forward: at least 1/16 of the sequence, more when the
    rows of one position's patches are too few to pay for the call."""
    return max(math.ceil(n_pos / 16), min(n_pos, math.ceil(_MIN_TOKEN_ROWS / (batch * n_pos * per_pos))))


def span_chunks(patches: list[Patch], span: int, limit: int, by_layer: bool) -> Iterator[list[int]]:
    """Indices of at most `limit` patches sharing a first layer (if `by_layer`), sorted by
    position, each group spanning fewer than `span` positions."""
    def first_layer(i: int) -> int:
        return min(patches[i].layers) if by_layer else 0

    order = sorted(range(len(patches)), key=lambda i: (first_layer(i), patches[i].pos))
    chunk: list[int] = []
    for i in order:
        if chunk:
            first = patches[chunk[0]]
            same = first_layer(chunk[0]) == first_layer(i)
            if not same or patches[i].pos - first.pos >= span or len(chunk) >= limit:
                yield chunk
                chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def scattered_chunks(patches: list[Patch], batch: int, n_pos: int, limit: int, n_layers: int = 1) -> list[list[int]]:
    """The cheapest grouping of scattered patches into stacked causal forwards. A forward runs
    from its earliest patch's layer to the last of `n_layers`, and each layer costs a fixed
    `_LAYER_ROWS` plus `batch * (n_pos - start)` token rows per patch, `start` being the
    forward's earliest position. Dynamic programming over contiguous groups (at most `limit`
    each) of two orders, by position and by (layer, position); the cheaper wins. `n_layers=1`
    groups one layer at a time (a fixed `_MIN_TOKEN_ROWS` per forward), where the position
    order is optimal."""
    def first(i: int) -> int:
        return min(patches[i].layers)

    def plan(order: list[int]) -> tuple[float, list[list[int]]]:
        n = len(order)
        best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)  # best[j]: cheapest cover of order[:j]
        for j in range(1, n + 1):
            start, layer = n_pos, n_layers
            for i in range(j - 1, max(0, j - limit) - 1, -1):
                start, layer = min(start, patches[order[i]].pos), min(layer, first(order[i]))
                depth, fixed = (n_layers - layer, _LAYER_ROWS) if n_layers > 1 else (1, _MIN_TOKEN_ROWS)
                cost = best[i] + depth * (fixed + (j - i) * batch * (n_pos - start))
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        j, groups = n, []
        while j:
            groups.append(order[cut[j]:j])
            j = cut[j]
        return best[n], list(reversed(groups))

    if n_layers <= 1:  # one layer at a time, as the patches' layers may not share a forward
        out = []
        for layer in sorted({first(i) for i in range(len(patches))}):
            idx = sorted((i for i in range(len(patches)) if first(i) == layer), key=lambda i: patches[i].pos)
            out.extend(plan(idx)[1])
        return out
    by_pos = sorted(range(len(patches)), key=lambda i: (patches[i].pos, first(i)))
    by_layer = sorted(range(len(patches)), key=lambda i: (first(i), patches[i].pos))
    return min(plan(by_pos), plan(by_layer), key=lambda c: c[0])[1]

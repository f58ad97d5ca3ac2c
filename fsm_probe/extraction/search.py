"""The search behind `FSMExtractor`: for one collection, PCA, then for each number of abstract
states (and k-means seed) an abstraction, its refinement and, above `max_states`, a capped
version; the choice among the candidates; and the completion of unobserved transitions by
stepping the network from a member's state (`fsm_probe.models.protocol`).

Sizes are tried from `CLUSTER_SIZES` and then grow by `GROWTH` while held-out fidelity improves
(see `fsm_probe.extraction.estimator`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..automata.machine import Automaton, segment_words
from ..models.protocol import initial_state, state_sites, steps_per_token
from .abstraction import MetricReducer, Reducer, _nearest, _unique_rows, make_abstraction
from .build import build_automaton, refine_partition
from .checks import agreement
from .collect import Collection, collect

if TYPE_CHECKING:
    from .estimator import FSMExtractor

CLUSTER_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)
GROWTH = 1.25
UNIQUE_MAX = 2000
PATIENCE = 4
IMPROVEMENT = 0.9
GRID_SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16)
RETRY_SIZES = (28, 36, 44, 56)
RETRY_FIT_ROWS = 8000
SENSITIVITY_HORIZON = 3
SENSITIVITY_ROWS = 2000


def state_limit(max_states: int | None, default: int = 10**9) -> int:
    return default if max_states is None else int(max_states)


def growing_sizes(start: int = 1) -> Iterator[int]:
    """Cluster counts: `CLUSTER_SIZES`, then growing by `GROWTH`, from the first above `start`."""
    for s in CLUSTER_SIZES:
        if s > start:
            yield s
    s = CLUSTER_SIZES[-1]
    while True:
        s = max(s + 1, int(round(s * GROWTH)))
        if s > start:
            yield s


def min_fidelity(a: Automaton, vals: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return min(agreement(a, tok, lab)["per_position"] for tok, lab in vals)


def select(cands: list[Candidate], target: float, tolerance: float, max_states: int) -> Candidate:
    """The smallest candidate that reaches `target` within `max_states`; else the best fidelity
    within `max_states`, or a smaller one at most `tolerance` below it; with nothing within
    `max_states`, the smallest."""
    def smallest(pool: list[Candidate]) -> Candidate:
        return min(pool, key=lambda c: (c.n, -c.fid))

    pool = [c for c in cands if c.n <= max_states]
    if not pool:
        return smallest(cands)
    hit = [c for c in pool if c.fid >= target]
    if hit:
        return smallest(hit)
    best = max(c.fid for c in pool)
    return smallest([c for c in pool if c.fid >= best - tolerance])


class Candidate:
    """One abstraction's automaton: its fidelity, size and what it was built from."""

    def __init__(
        self, fid: float, built: Any, part: np.ndarray, abstraction: Any, col: Collection,
        votes: np.ndarray, reducer: Reducer, curve: dict[str, Any],
    ) -> None:
        self.fid, self.built, self.part, self.abstraction = fid, built, part, abstraction
        self.col, self.votes, self.reducer, self.curve = col, votes, reducer, curve

    @property
    def n(self) -> int:
        return self.built.minimal.n_states


class SizeSweep:
    """Candidates from one collection: PCA, then for each size (and seed) an abstraction, its
    refinement, and for an automaton above `max_states` a capped version (the states with the
    most rows kept, the others' rows moved to the nearest kept state)."""

    def __init__(self, est: FSMExtractor, model: nn.Module, name: str, col: Collection, votes: np.ndarray) -> None:
        self.est, self.model, self.name, self.col, self.votes = est, model, name, col, votes
        x = np.tanh(col.flat()) if est.squash else col.flat()
        metric = None if est.geometry_ == "euclidean" else sensitivity_metric(
            model, col, len(est.alphabet_), seed=est.seed
        )
        self.reducer = (
            Reducer(est.n_components, seed=est.seed) if metric is None
            else MetricReducer(metric, est.n_components, seed=est.seed)
        ).fit(x)
        self.x, self.z = x, self.reducer.transform(x)
        self.complete = Completer(model, col, self.reducer, self.z, est.squash)
        self.edges = col.edges()
        self.init_rows = col.initial_rows()
        self.fit_rows = (
            np.setdiff1d(np.arange(len(self.z)), self.init_rows) if col.virtual_initial else slice(None)
        )

    def _candidate(
        self, part: np.ndarray, abstraction: Any, vals: list[tuple[np.ndarray, np.ndarray]], info: dict[str, Any]
    ) -> Candidate:
        est = self.est
        built = build_automaton(
            part, self.votes, self.edges, self.init_rows, est.alphabet_, est.labels_,
            complete=self.complete.bind(part), start_output=est.start_output_, name=self.name,
        )
        fid = min_fidelity(built.minimal, vals)
        curve = {**info, "n_states_raw": built.raw.n_states, "n_states": built.minimal.n_states,
                 "fidelity": fid, "length": self.col.length}
        return Candidate(fid, built, part, abstraction, self.col, self.votes, self.reducer, curve)

    def _cap(self, cand: Candidate) -> np.ndarray:
        rows = cand.built.state_map[cand.part]
        support = np.bincount(rows[rows >= 0], minlength=cand.n)
        keep = np.argsort(-support, kind="stable")[: self.est.max_states]
        start = cand.built.minimal.start
        if start not in keep:
            keep[-1] = start
        keep = keep[support[keep] > 0] if (support[keep] > 0).any() else keep
        kept = np.isin(rows, keep)
        centres = np.stack([self.z[rows == s].mean(0) for s in keep])
        part = rows.copy()
        part[~kept] = keep[_nearest(self.z[~kept], centres)]
        return part

    def run(
        self, sizes: Sequence[int], seeds: Sequence[int], vals: list[tuple[np.ndarray, np.ndarray]],
        deadline: float, stop: bool, refine: bool = True,
        max_fit: int | None = None, grow: bool = False,
    ) -> list[Candidate]:
        """Candidates for each seed and size; with `grow`, sizes continue past `sizes` (see
        `growing_sizes`) while fidelity improves. Sets `capped` when `max_states` or the deadline
        stopped a growth that was still improving."""
        est = self.est
        limit = state_limit(est.max_states)
        base = make_abstraction(est.method, **({"seed": est.seed} if est.method != "grid" else {}))
        out: list[Candidate] = []
        self.capped = None
        if grow and est.method == "kmeans":
            # states that repeat exactly (compiled or saturated networks): each distinct state
            # its own block, merged by minimization; one candidate, tried first
            zf = self.z[self.fit_rows]
            uniq, inverse, _ = _unique_rows(self.x[self.fit_rows], 4)  # in the input's own units
            if len(uniq) <= min(UNIQUE_MAX, len(zf) // 4) and len(uniq) <= limit * max(1, len(est.alphabet_)):
                blocks = np.full(len(self.z), -1, dtype=np.int64)
                blocks[self.fit_rows] = inverse
                if self.col.virtual_initial:
                    blocks[self.init_rows] = len(uniq)
                info = {"size": len(uniq), "seed": int(est.seed), "abstract_states": len(uniq),
                        "refined": False, "capped": False, "unique": True}
                c = self._candidate(blocks, None, vals, info)
                if c.n <= limit:
                    out.append(c)
                    if stop and c.fid >= est.fidelity_target:
                        return out
        for seed in seeds:
            best, best_plain, best_size = -1.0, -1.0, 1
            schedule = iter(sizes) if not grow else chain_sizes(sizes)
            for size in schedule:
                if grow and size > max(sizes):
                    if size >= PATIENCE * best_size:
                        break  # no improvement while k grew PATIENCE-fold: fidelity has stopped improving
                    if size > limit:
                        self.capped = {"limit": "max_states", "value": int(limit)}
                        break
                params = {} if est.method == "grid" else {"seed": seed}
                zf = self.z[self.fit_rows]
                blocks = np.full(len(self.z), -1, dtype=np.int64)
                if max_fit is not None and len(zf) > max_fit:
                    pick = np.random.default_rng(seed).choice(len(zf), max_fit, replace=False)
                    abstraction = base.with_size(size).set_params(**params).fit(zf[pick])
                    blocks[self.fit_rows] = abstraction.predict(zf)
                else:
                    abstraction = base.with_size(size).set_params(**params).fit(zf)
                    blocks[self.fit_rows] = abstraction.labels_
                if self.col.virtual_initial:
                    blocks[self.init_rows] = abstraction.n_states_
                elif est.empty_output == "free":
                    # the initial state's label is free: its own block, so that `with_free_start`
                    # can merge it with the state it behaves like (else it may keep a neighbour's label)
                    blocks[self.init_rows] = blocks.max() + 1
                info = {"size": int(size), "seed": int(seed), "abstract_states": int(abstraction.n_states_),
                        "refined": False, "capped": False}
                new = [self._candidate(blocks, abstraction, vals, info)]
                if est.refine and refine:
                    # undecided rows join the nearest part in the input's own geometry
                    cap = max(256, 4 * size) if est.max_states is None else max(128, 4 * est.max_states)
                    refined, converged = refine_partition(
                        blocks, self.votes, self.edges, self.x, max_states=cap, return_converged=True,
                    )
                    if converged and refined.max() != blocks.max():
                        new.append(self._candidate(refined, abstraction, vals, {**info, "refined": True}))
                for c in list(new):
                    if c.n > limit:
                        capped = self._cap(c)
                        new.append(self._candidate(capped, abstraction, vals, {**c.curve, "capped": True}))
                out += new
                top = max(c.fid for c in new if c.n <= limit) if any(c.n <= limit for c in new) else -1.0
                if 1 - top < IMPROVEMENT * (1 - best):  # errors fell by a tenth: still improving
                    best, best_size = top, size
                # a refinement can plateau below the target early (it converges to a local
                # partition); the growth goes on while the clustering itself still improves
                plain = new[0].fid if new[0].n <= limit else -1.0
                if 1 - plain < IMPROVEMENT * (1 - best_plain):
                    best_plain, best_size = plain, size
                if stop and any(c.fid >= est.fidelity_target and c.n <= limit for c in new):
                    return out
                if grow and getattr(abstraction, "n_unique_", size + 1) <= size:
                    break  # every distinct state has its own cluster: nothing left to split
                if time.perf_counter() > deadline:
                    if grow and best < est.fidelity_target:
                        self.capped = {"limit": "time_limit", "value": float(est.time_limit)}
                    return out
        return out


def chain_sizes(sizes: Sequence[int]) -> Iterator[int]:
    """`sizes`, then `growing_sizes` continued above their maximum."""
    yield from sizes
    yield from growing_sizes(max(sizes))


def _split_state(model: nn.Module, site: tuple[str, ...], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collected rows `[n, d]` (the sites' states side by side) as a state for `model(state=)`."""
    shapes = {name: value.shape[1:] for name, value in initial_state(model, 1).items()}
    state, start = {}, 0
    for name in site:
        size = int(np.prod(shapes[name]))
        state[name] = flat[:, start : start + size].reshape(len(flat), *shapes[name])
        start += size
    return state


def has_sensitivity(model: nn.Module, col: Collection) -> bool:
    """Whether `sensitivity_metric` applies: the collection is the full state of a model stepped
    once per token (a Transformer's residual stream cannot be stepped from; an RMT's memory reads
    segments)."""
    return bool(steps_per_token(model)) and col.site == state_sites(model)


def sensitivity_metric(
    model: nn.Module, col: Collection, n_symbols: int, *, horizon: int = SENSITIVITY_HORIZON,
    n_rows: int = SENSITIVITY_ROWS, repeats: int = 4, seed: int = 0,
) -> np.ndarray | None:
    """`E[g g^T]` over collected states, `g` the gradient with respect to the state of a random
    (label-centred) projection of the logits over the next `horizon` random symbols.

    Distances under it measure how much the network's next outputs change: directions its
    behaviour does not read (most of a large GRU's, which carry the history in ways the outputs
    ignore) get no weight, so states cluster by what they do, not by where the raw geometry puts
    them. None unless `has_sensitivity`."""
    if not has_sensitivity(model, col):
        return None
    rng = np.random.default_rng(seed)
    flat = col.flat()
    metric = np.zeros((col.dim, col.dim))
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(repeats):
                rows = rng.choice(len(flat), min(n_rows, len(flat)), replace=False)
                h = torch.as_tensor(flat[rows], device=model.device).requires_grad_(True)
                tokens = torch.as_tensor(rng.integers(0, n_symbols, (len(rows), horizon)), device=model.device)
                logits = model(tokens, state=_split_state(model, col.site, h))
                r = torch.randn(logits.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
                r = (r - r.mean(-1, keepdim=True)).to(logits)
                (g,) = torch.autograd.grad((logits * r).sum(), h)
                g = g.detach().cpu().double().numpy()
                metric += g.T @ g / len(rows)
    finally:
        model.train(was)
    metric /= repeats
    return metric if np.isfinite(metric).all() and metric.trace() > 0 else None


class Completer:
    """Fill an unobserved (abstract state, symbol) pair by asking the network: step a member's
    state (or rerun its prefix) with the symbol and take the abstract state of the nearest
    collected row."""

    def __init__(
        self, model: nn.Module, col: Collection, reducer: Reducer, z: np.ndarray, squash: bool
    ) -> None:
        self.model, self.col, self.reducer, self.z, self.squash = model, col, reducer, z, squash
        self.full_state = col.site == state_sites(model)

    @torch.no_grad()
    def step(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """The full state after reading `symbols` (a token; on an RMT a segment id) from the
        states of collected `rows`, flattened as the collection's rows."""
        flat = torch.as_tensor(self.col.flat()[rows], device=self.model.device)
        state = _split_state(self.model, self.col.site, flat)
        tokens = symbols[:, None]
        if self.col.segment_length is not None:
            tokens = segment_words(tokens, self.col.n_token_symbols, self.col.segment_length)
        _, final = self.model(tokens, state=state, return_state=True)
        return torch.cat([final[n].reshape(len(rows), -1) for n in self.col.site], -1).float().cpu().numpy()

    def _rerun(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        t1 = self.col.length + 1
        seq, pos = rows // t1, rows % t1
        out = np.empty((len(rows), self.col.dim), dtype=np.float32)
        for p in np.unique(pos):
            sel = np.flatnonzero(pos == p)
            words = np.concatenate([self.col.tokens[seq[sel], :p], symbols[sel, None]], axis=1)
            out[sel] = collect(self.model, words.astype(np.int64), self.col.site).vectors[:, -1]
        return out

    def bind(self, blocks: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def complete(block_ids: np.ndarray, symbols: np.ndarray) -> np.ndarray:
            member = np.zeros(int(blocks.max()) + 1, dtype=np.int64)
            member[blocks[::-1]] = np.arange(len(blocks))[::-1]
            rows = member[block_ids]
            step = self.step if self.full_state else self._rerun
            vec = step(rows, symbols.astype(np.int64))
            vec = np.tanh(vec) if self.squash else vec
            return blocks[_nearest(self.reducer.transform(vec), self.z)]

        return complete



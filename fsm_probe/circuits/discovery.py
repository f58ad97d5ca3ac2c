"""Circuit discovery: rank every head and MLP (RNN: every state) by its causal importance.

Pairs: clean sequences of the task and, for each, a symmetric corruption (one symbol replaced so
that the final label changes) at a position drawn per sequence, so that one batch reaches every
path from the inputs to the output. The metric is the logit difference (clean label - corrupted
label) at the last position. Methods:

- `exact`: activation patching (denoising) of every head output (`head_out`) and MLP output
  (`mlp_out`) at every position; a component's score is the sum over positions of its
  |normalised effect| (each pair's information passes a component at a position that depends on
  where the pair was corrupted, so a maximum over positions would dilute it by the number of
  positions it uses; RNN states are one position each).
- `attribution`: the same cells estimated by attribution patching (one forward per input and
  one backward), scored the same way.
- `attribution_mlp`: attribution with the patched layer's MLP recomputed exactly
  (`attribution_mlp_exact`: AtP*'s fix for saturated attention, applied to saturated MLPs).
- `atp_star`: AtP* (`attribution.atp_star`): `attribution_mlp` plus every later head's softmax
  recomputed exactly with the queries and keys a cell moves (AtP*'s QK fix).
- `verified`: `atp_star` with its gradients integrated over 4 points of the input path
  (`ig_steps`: a cell behind a lookup that is off in the corrupted run has no gradient there;
  RNNs: attribution), then exact patching of a shortlist
  (`verify_shortlist`: its top 2 * `top_k` cells, then `top_k` more at a time while the next
  ones still enter the verified top `top_k`); a component's score is its best exact effect among
  verified cells, and components without a verified cell follow, in estimate order.
- `acdc`: ACDC-style greedy pruning at the node level (Conmy et al. 2023): from the output
  backwards, each component's output is replaced by its corrupted-run value at every position on
  top of the components already pruned; it stays pruned when the metric moves by less than
  `threshold` (normalised); its score is how far it moved the metric.

`roc_auc` scores a ranking against a ground-truth component list (e.g. a compiled model's
`circuit.json`). Component names are the circuit graph's (`L0H1`, `L1.mlp`, `L0.h@3`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validate import positive_int
from ..errors import InputError
from ..models import as_tokens, model_config
from ..tasks import Task
from ..tasks.datasets import eval_set
from ..training.run import Run, as_run
from . import patching
from . import sites as S
from .attribution import atp_star, attribution_mlp_exact  # noqa: F401  (attribution_mlp_exact was defined here)
from .engine import EvalMode, Patch, Runner, Sweep, metric_value

METHODS = ("exact", "attribution", "attribution_mlp", "atp_star", "verified", "acdc")
# atp_star's integration points for `verified`: recall 1.00 of the exact top 10 on every model of
# analyses/bench_circuits.py, against 0.70 on the compiled parity scan at n_ctx 64 with 1 point.
VERIFIED_IG_STEPS = 4


@dataclass
class ComponentScore:
    """One component: its score (>= 0, larger = more important; exact and attribution: the sum
    over positions of |normalised effect|), where it peaks, and the signed effect there."""

    name: str
    kind: str
    layer: int
    head: int | None
    score: float
    position: int | None = None
    effect: float | None = None
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Discovery:
    """A ranking of every component, best first, and how it was found."""

    method: str
    components: list[ComponentScore]
    seconds: float
    n_pairs: int
    length: int
    clean_value: float
    corrupted_value: float
    threshold: float
    settings: dict[str, Any] = field(default_factory=dict)

    def circuit(self, threshold: float | None = None) -> list[str]:
        """Names of the components scoring at least `threshold` (default: the discovery's)."""
        cut = self.threshold if threshold is None else threshold
        verified = any(c.verified for c in self.components)
        return [c.name for c in self.components if c.score >= cut and (c.verified or not verified)]

    def scores(self) -> dict[str, float]:
        """Component -> a score whose order is the ranking's (verified components, ranked by
        their exact effect, come before the rest, ranked by their estimate)."""
        rest = [c.score for c in self.components if not c.verified]
        offset = 1.0 + max(rest, default=0.0)
        return {c.name: c.score + (offset if c.verified else 0.0) for c in self.components}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "components": [c.to_dict() for c in self.components],
            "circuit": self.circuit(),
            "seconds": self.seconds,
            "n_pairs": self.n_pairs,
            "length": self.length,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "threshold": self.threshold,
            "settings": self.settings,
        }


def roc_auc(scores: dict[str, float], truth: Sequence[str]) -> float:
    """ROC-AUC of `scores` (component -> score) against the components in `truth` (ties count
    one half); NaN unless both classes are present."""
    names = list(scores)
    unknown = [t for t in truth if t not in scores]
    if unknown:
        raise InputError(f"ground-truth components {unknown} are not among the ranked ones")
    pos = np.array([scores[n] for n in names if n in set(truth)], dtype=np.float64)
    neg = np.array([scores[n] for n in names if n not in set(truth)], dtype=np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


# ----- pairs -----


def mixed_corruption_pairs(
    task: Any, length: int, n: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to `n` clean sequences, their symmetric corruptions and the corrupted position of each:
    positions where some symbol changes the final label, their distances to the end spread
    evenly over log2 buckets."""
    a = task.automaton
    pool = eval_set(task, length, n=8 * n, seed=seed + 1, final_only=False).tokens.copy()
    length = pool.shape[1]
    # A third of the pool ends in a run of one symbol of random length, so that corruptions far
    # from the end can change the label too (flip-flop: a long run of reads).
    rng = np.random.default_rng([seed, length])
    for b in range(0, len(pool), 3):
        run = int(rng.integers(1, length + 1))
        pool[b, length - run :] = int(rng.integers(a.n_symbols))
    final = a.run_outputs(pool)[:, -1]
    # changes[b, p, s]: replacing x[b, p] by s changes the final label
    changes = np.zeros((len(pool), length, a.n_symbols), dtype=bool)
    for p in range(length):
        for s in range(a.n_symbols):
            trial = pool.copy()
            trial[:, p] = s
            changes[:, p, s] = a.run_outputs(trial)[:, -1] != final
    usable = changes.any(axis=2)  # [b, p]: some symbol at p changes the final label
    if not usable.any():
        raise InputError(f"no single-symbol change alters the final label of {task.spec} at length {length}")
    # Distances to the end, log-bucketed, are drawn round-robin so that long paths are reached
    # as often as short ones (layer k of a scan carries distances 2^k..2^(k+1)-1).
    bucket = np.floor(np.log2(length - np.arange(length))).astype(int)
    picked: list[tuple[int, int]] = []
    free = set(np.flatnonzero(usable.any(axis=1)).tolist())
    while len(picked) < n and free:
        before = len(picked)
        for k in range(int(bucket.max()) + 1):
            rows = sorted(b for b in free if (usable[b] & (bucket == k)).any())
            if not rows or len(picked) >= n:
                continue
            b = rows[int(rng.integers(len(rows)))]
            p = int(rng.choice(np.flatnonzero(usable[b] & (bucket == k))))
            picked.append((b, p))
            free.discard(b)
        if len(picked) == before:
            break
    clean = pool[[b for b, _ in picked]]
    corrupted = clean.copy()
    where = np.array([p for _, p in picked], dtype=np.int64)
    for row, (b, p) in enumerate(picked):
        corrupted[row, p] = int(rng.choice(np.flatnonzero(changes[b, p])))
    return clean, corrupted, where


# ----- components and cells -----


def _cell_component(site: str, idx: tuple[int, ...]) -> tuple[str, str, int, int | None, int]:
    """(name, kind, layer, head, position) of one patching cell."""
    if site == "head_out":
        li, p, h = idx
        return f"L{li}H{h}", "head", li, h, p
    if site == "mlp_out":
        li, p = idx
        return f"L{li}.mlp", "mlp", li, None, p
    li, p = idx
    part = "h" if site == "hidden" else "c"
    return f"L{li}.{part}@{p}", "state", li, None, p


def all_components(model: nn.Module, length: int) -> list[tuple[str, str, int, int | None]]:
    """Every component a discovery ranks: (name, kind, layer, head)."""
    cfg = model_config(model)
    out = []
    for li in range(cfg.n_layers):
        for site in S.component_sites(cfg):
            if site == "head_out":
                out += [(f"L{li}H{h}", "head", li, h) for h in range(cfg.n_heads)]
            elif site == "mlp_out":
                out.append((f"L{li}.mlp", "mlp", li, None))
            else:
                out += [(_cell_component(site, (li, p))[0], "state", li, None) for p in range(length)]
    return out


def _score_cells(model: nn.Module, length: int, cells: dict[str, np.ndarray]) -> list[ComponentScore]:
    """Components scored by their largest |value| over the cells of `cells` (site -> normalised
    effect array, NaN = not measured)."""
    best: dict[str, ComponentScore] = {}
    for name, kind, li, h in all_components(model, length):
        best[name] = ComponentScore(name, kind, li, h, 0.0)
    peak: dict[str, float] = {}
    for site, arr in cells.items():
        for idx in np.ndindex(*arr.shape):
            v = float(arr[idx])
            if not np.isfinite(v):
                continue
            name, kind, li, h, p = _cell_component(site, idx)
            c = best[name]
            c.score += abs(v)
            if abs(v) > peak.get(name, 0.0):
                peak[name] = abs(v)
                c.position, c.effect = p, v
    return _sorted(best.values())


def _sorted(items: Any) -> list[ComponentScore]:
    return sorted(items, key=lambda c: (-c.score, c.layer, c.kind, c.head or 0, c.name))


# ----- methods -----


def _normalise(result: patching.PatchingResult) -> np.ndarray:
    if result.clean_value == result.corrupted_value:
        raise InputError("clean and corrupted runs give the same metric; nothing to rank")
    return result.normalized().double().numpy()


def exact_cells(model, clean, corrupted, metric, sites) -> dict[str, patching.PatchingResult]:
    """Exact denoising sweep of every cell of `sites`."""
    return {s: patching.activation_patching(model, clean, corrupted, metric, site=s) for s in sites}


def verify_cells(
    model: nn.Module, clean: Any, corrupted: Any, metric: Any, cells: Sequence[tuple[str, tuple[int, ...]]]
) -> dict[tuple[str, tuple[int, ...]], float]:
    """Exact denoised metric of each (site, index) cell, patching only those cells."""
    return _Verifier(model, clean, corrupted, metric)(cells)


class _Verifier:
    """Exact patching of chosen cells, with the base and source runs cached across calls (one
    per round of `verify_shortlist`)."""

    def __init__(self, model: nn.Module, clean: Any, corrupted: Any, metric: Any) -> None:
        self.model, self.metric, self.cfg = model, metric, model_config(model)
        clean_t, corr_t = as_tokens(model, clean), as_tokens(model, corrupted)
        with EvalMode(model), torch.no_grad():
            self.runner = Runner(model)
            # The engine was checked against the bridge by the attribution that made the
            # shortlist (it runs on the same engine); skipping the check saves a bridge forward.
            self.runner.checked = self.runner.engine is not None
            self.clean_run, self.corr_run = self.runner.run(clean_t), self.runner.run(corr_t)
        self.baseline = metric_value(metric, self.corr_run["logits"])

    def __call__(self, cells: Sequence[tuple[str, tuple[int, ...]]]) -> dict[tuple[str, tuple[int, ...]], float]:
        cells = [(site, tuple(int(i) for i in idx)) for site, idx in cells]
        if not cells:
            return {}
        for site in {site for site, _ in cells}:
            S.check_site(self.cfg, site)
        # the native engine patches several sites in one forward; the other paths one site at a time
        mixed = self.runner.engine is not None and self.runner.engine.causal and not self.runner.stateful
        groups = [cells] if mixed else [[c for c in cells if c[0] == site] for site in dict.fromkeys(s for s, _ in cells)]
        out: dict[tuple[str, tuple[int, ...]], float] = {}
        with EvalMode(self.model), torch.no_grad():
            for group in groups:
                patches = [Patch((i[0],), i[1], i[2] if len(i) > 2 else None, site) for site, i in group]
                sweep = Sweep(group[0][0], patches, [(k,) for k in range(len(group))], (len(group),))
                values = self.runner.evaluate(self.corr_run, self.clean_run, sweep, self.metric, None, scattered=True)
                out.update({c: float(values[k]) for k, c in enumerate(group)})
        return out


def verify_shortlist(
    model: nn.Module, clean: Any, corrupted: Any, metric: Any, estimates: dict[str, np.ndarray], *,
    top_k: int = 10, max_cells: int | None = None, baseline: float | None = None,
) -> dict[tuple[str, tuple[int, ...]], float]:
    """Exact metric of the cells an estimate ranks first (site -> |estimate| or signed estimate
    arrays): its top 2 * `top_k` (a first-order ranking seldom holds the exact top `top_k` in its
    first `top_k`, and one round costs less than two), then rounds of `top_k` more while a round
    brings a cell into the verified top `top_k` (|exact effect| above the k-th so far), until
    `max_cells` (default: 1/8 of all cells, at least 2 * top_k); `baseline` is the corrupted
    run's metric (computed when not given). The estimate orders the search and the exact
    effects decide when to stop: a first-order estimate is no bound on the effect, so "the next
    estimate is below the k-th exact effect" would stop at the first underestimated cell."""
    order = sorted(((float(abs(v[i])), s, tuple(int(x) for x in i)) for s, v in estimates.items()
                    for i in np.ndindex(*v.shape)), key=lambda c: -c[0])
    cap = min(len(order), max(2 * top_k, len(order) // 8) if max_cells is None else max_cells)
    verify = _Verifier(model, clean, corrupted, metric)
    base = verify.baseline if baseline is None else baseline
    measured: dict[tuple[str, tuple[int, ...]], float] = {}
    while len(measured) < cap:
        kth = sorted((abs(v - base) for v in measured.values()), reverse=True)[top_k - 1] if len(measured) >= top_k else -1.0
        size = top_k if measured else 2 * top_k
        batch = [(s, i) for _, s, i in order[len(measured) : min(cap, len(measured) + size)]]
        new = verify(batch)
        measured.update(new)
        if kth >= 0 and not any(abs(v - base) > kth for v in new.values()):
            break
    return measured


def _component_hooks(cfg: Any, name: str) -> tuple[str, int | None]:
    """Hook name (and head index) whose activation is the component's output."""
    if name.endswith(".mlp"):
        return S.hook_name("mlp_out", int(name[1:-4])), None
    li, h = name[1:].split("H")
    return S.hook_name("head_out", int(li)), int(h)


def acdc_prune(
    model: nn.Module, clean: Any, corrupted: Any, metric: Any, threshold: float = 0.1
) -> tuple[list[ComponentScore], int]:
    """Greedy node pruning from the output backwards (see the module docstring); returns the
    scored components and the number of forwards run."""
    cfg = model_config(model)
    if S.family(cfg) != S.TRANSFORMER:
        raise InputError("acdc pruning is implemented for Transformers; use method='exact' for RNNs")
    clean_t, corr_t = as_tokens(model, clean), as_tokens(model, corrupted)
    comps = all_components(model, clean_t.shape[1])
    names = {n for n, *_ in comps}
    with EvalMode(model), torch.no_grad():
        hooks = sorted({_component_hooks(cfg, n)[0] for n in names})
        clean_logits = model(clean_t)
        _, cache = model.run_with_cache(corr_t, names_filter=lambda n: n in hooks)
        clean_v, corr_v = metric_value(metric, clean_logits), metric_value(metric, model(corr_t))
        scale = clean_v - corr_v
        if scale == 0:
            raise InputError("clean and corrupted runs give the same metric; nothing to prune")

        def run(pruned: set[str]) -> float:
            by_hook: dict[str, list[int | None]] = {}
            for n in pruned:
                hook, head = _component_hooks(cfg, n)
                by_hook.setdefault(hook, []).append(head)
            fwd = []
            for hook, heads in by_hook.items():
                def fn(act, hook, heads=heads, name=hook):
                    src = cache[name]
                    if heads == [None]:
                        return src
                    act = act.clone()
                    for h in heads:
                        act[:, :, h] = src[:, :, h]
                    return act
                fwd.append((hook, fn))
            with model.hooks(fwd_hooks=fwd):
                return metric_value(metric, model(clean_t))

        order = sorted(comps, key=lambda c: (-c[2], 0 if c[1] == "mlp" else 1, c[3] or 0))
        pruned: set[str] = set()
        current = clean_v
        scores = []
        forwards = 3
        for name, kind, li, h in order:
            value = run(pruned | {name})
            forwards += 1
            delta = (current - value) / scale
            if abs(delta) < threshold:
                pruned.add(name)
                current = value
            scores.append(ComponentScore(name, kind, li, h, abs(delta), None, delta))
    return _sorted(scores), forwards


def discover_circuit(
    model: nn.Module | Run,
    task: Task | None = None,
    *,
    method: str = "exact",
    length: int | None = None,
    n: int = 32,
    seed: int = 0,
    threshold: float = 0.1,
    top_k: int = 10,
) -> Discovery:
    """Rank every component of `model` by its causal importance for the task's final label.

    `model` is a `Run`, or a model with its `task`; `length` defaults to min(16, n_ctx) (compiled
    models: n_ctx,
    so that every layer of a scan is reached); `threshold` is the
    normalised score a component needs to be in the circuit (and acdc's pruning threshold);
    `top_k` is how many best cells the `verified` method looks for (`verify_shortlist`).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not threshold >= 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    positive_int(top_k, "top_k", error=InputError)
    run = as_run(model, task)
    model, task = run.model, run.task
    cfg = model_config(model)
    sites = S.component_sites(cfg)
    limit = S.max_length(cfg)
    if length is None:
        compiled = (bool(run.log.get("compiled")) or run.circuit is not None) and limit is not None
        length = cfg.n_ctx if compiled else (16 if limit is None else min(16, limit))
    if length < 2 or (limit is not None and length > limit):
        raise InputError(f"length must be in [2, n_ctx={cfg.n_ctx}], got {length}")
    clean, corrupted, where = mixed_corruption_pairs(task, length, n, seed)
    a = task.automaton
    metric = patching.logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    settings: dict[str, Any] = {"sites": sites, "corrupted_positions": sorted(set(where.tolist()))}
    t0 = time.perf_counter()
    if method == "exact":
        results = exact_cells(model, clean, corrupted, metric, sites)
        comps = _score_cells(model, clean.shape[1], {s: _normalise(r) for s, r in results.items()})
        first = next(iter(results.values()))
    elif method in ("attribution", "attribution_mlp", "atp_star", "verified"):
        if method == "attribution" or S.family(cfg) == S.RNN:
            results = patching.attribution_patching(model, clean, corrupted, metric, sites=sites)
        elif method == "attribution_mlp":
            results = attribution_mlp_exact(model, clean, corrupted, metric, sites=sites)
        else:
            results = atp_star(model, clean, corrupted, metric, sites=sites,
                               ig_steps=VERIFIED_IG_STEPS if method == "verified" else 1)
        first = next(iter(results.values()))
        approx = {s: _normalise(r) for s, r in results.items()}
        comps = _score_cells(model, clean.shape[1], approx)
        if method == "verified":
            exact = verify_shortlist(model, clean, corrupted, metric, approx, top_k=top_k,
                                     baseline=first.corrupted_value)
            measured: dict[str, np.ndarray] = {s: np.full(v.shape, np.nan) for s, v in approx.items()}
            for (s, i), value in exact.items():
                measured[s][i] = patching.normalized_effect(value, first.clean_value, first.corrupted_value)
            verified = {c.name: c for c in _score_cells(model, clean.shape[1], measured)}
            seen = {_cell_component(s, i)[0] for s, i in exact}
            comps = [replace(verified[c.name], verified=True) if c.name in seen else c for c in comps]
            comps = sorted(comps, key=lambda c: (not c.verified, -c.score, c.layer, c.kind, c.head or 0, c.name))
            settings["top_k"] = top_k
            settings["estimator"] = results[sites[0]].method
            settings["verified_cells"] = [[s, list(map(int, i))] for s, i in exact]
    else:
        comps, forwards = acdc_prune(model, clean, corrupted, metric, threshold)
        settings["forwards"] = forwards
        first = None
    seconds = time.perf_counter() - t0
    if first is not None:
        clean_v, corr_v = first.clean_value, first.corrupted_value
    else:
        with torch.no_grad():
            clean_v = metric_value(metric, model(as_tokens(model, clean)))
            corr_v = metric_value(metric, model(as_tokens(model, corrupted)))
    return Discovery(method, comps, seconds, len(clean), int(clean.shape[1]), clean_v, corr_v, threshold, settings)

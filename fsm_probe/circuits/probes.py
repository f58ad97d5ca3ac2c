"""Linear probes: which layer holds the automaton's state, and which holds a count?

For every residual-stream site (Transformer) or layer state (RNN), a scikit-learn linear classifier
is trained to read out the true state and alternative hypotheses: the prefix count of each
symbol, that count modulo small numbers, and the position. A state that is linearly decodable
where counts are not points to a state-tracking mechanism; a count that is decodable before the
state points to the "sum, then reduce" shortcut. Train and test sets are split by sequence, so
no prefix is shared between them. On an RMT the memory is probed too, at every segment end.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from ..errors import ConfigError, InputError
from ..tasks import Task
from ..tasks.datasets import Batch
from ..training.run import Run, as_run
from .lens import analysis_batch, cache_sites, site_positions, stream_sites

PROBE_KINDS = ("logistic", "ridge")


def probe_targets(
    task: Task, batch: Batch, moduli: Iterable[int] = (2, 3)
) -> dict[str, np.ndarray]:
    """Hypotheses about what a network stores after each prefix, each `[batch, pos]` int64.

    `state` (the automaton's state), `label` (only when labels are coarser than states),
    `count[a]` (how many `a` so far), `count[a] mod m`, and `position`.
    """
    a = task.automaton
    out = {"state": batch.states.astype(np.int64)}
    if len(set(a.outputs.tolist())) < a.n_states:
        out["label"] = a.outputs[batch.states].astype(np.int64)
    for i, sym in enumerate(a.alphabet):
        count = np.cumsum(batch.tokens == i, axis=1).astype(np.int64)
        out[f"count[{sym}]"] = count
        for m in moduli:
            if m < 2:
                raise ConfigError(f"moduli must be >= 2, got {m}")
            out[f"count[{sym}] mod {m}"] = count % m
    out["position"] = np.broadcast_to(np.arange(batch.length), batch.tokens.shape).astype(np.int64)
    return out


@dataclass
class ProbeFit:
    """One probe: test and train accuracy, the majority-class baseline, the fitted estimator."""

    accuracy: float
    train_accuracy: float
    chance: float
    n_classes: int
    estimator: Any = None


def _make(kind: str, seed: int) -> Any:
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))
    raise ConfigError(f"unknown probe kind {kind!r}; expected one of {', '.join(PROBE_KINDS)}")


def split_groups(groups: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """Boolean mask of test rows: a random `test_size` share of the distinct groups."""
    if not 0 < test_size < 1:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise InputError("probes need at least 2 sequences to split into train and test")
    rng = np.random.default_rng(seed)
    n_test = min(len(uniq) - 1, max(1, int(round(test_size * len(uniq)))))
    return np.isin(groups, rng.choice(uniq, size=n_test, replace=False))


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    kind: str = "logistic",
    test_size: float = 0.3,
    seed: int = 0,
) -> ProbeFit:
    """Fit a linear probe `x [n, d] -> y [n]` and score it on held-out rows (or groups)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise InputError(f"fit_probe needs x [n, d] and y [n], got {x.shape} and {y.shape}")
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    test = split_groups(groups, test_size, seed)
    x_tr, y_tr, x_te, y_te = x[~test], y[~test], x[test], y[test]
    values, counts = np.unique(y_tr, return_counts=True)
    majority = values[counts.argmax()]
    chance = float((y_te == majority).mean())
    if len(values) < 2:
        return ProbeFit(chance, 1.0, chance, 1)
    est = _make(kind, seed).fit(x_tr, y_tr)
    return ProbeFit(
        accuracy=float((est.predict(x_te) == y_te).mean()),
        train_accuracy=float((est.predict(x_tr) == y_tr).mean()),
        chance=chance,
        n_classes=int(len(values)),
        estimator=est,
    )


@dataclass
class ProbeResult:
    """Probe test accuracy per site x target, with train accuracy and per-target chance."""

    sites: list[str]
    hooks: list[str]
    targets: list[str]
    accuracy: np.ndarray
    train_accuracy: np.ndarray
    chance: np.ndarray
    n_classes: list[int]
    kind: str
    n_samples: int

    def best_site(self, target: str) -> str:
        """The site where `target` is decoded best (the earliest one on ties)."""
        j = self._target(target)
        return self.sites[int(np.argmax(self.accuracy[:, j]))]

    def first_site(self, target: str, threshold: float = 0.95) -> str | None:
        """The earliest site where `target` is decoded with at least `threshold` accuracy."""
        j = self._target(target)
        hits = np.flatnonzero(self.accuracy[:, j] >= threshold)
        return self.sites[int(hits[0])] if len(hits) else None

    def _target(self, target: str) -> int:
        if target not in self.targets:
            raise InputError(f"unknown probe target {target!r}; probed: {self.targets}")
        return self.targets.index(target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sites": list(self.sites),
            "hooks": list(self.hooks),
            "targets": list(self.targets),
            "accuracy": self.accuracy.tolist(),
            "train_accuracy": self.train_accuracy.tolist(),
            "chance": self.chance.tolist(),
            "n_classes": list(self.n_classes),
            "n_samples": self.n_samples,
        }


def probe_model(
    model: nn.Module | Run,
    task: Task | None = None,
    tokens: Any = None,
    *,
    targets: Mapping[str, Any] | None = None,
    moduli: Iterable[int] = (2, 3),
    kind: str = "logistic",
    incl_mid: bool = True,
    test_size: float = 0.3,
    max_samples: int = 3000,
    length: int = 20,
    n: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Probe every site of `model` (a `Run`, or a model with its `task`) for every target, on
    `tokens` (default: an evaluation set).

    `targets` maps names to `[batch, pos]` integer arrays; the default is `probe_targets`. At most
    `max_samples` (sequence, position) rows are used, drawn at random (an RMT's `memory` site has
    rows only at segment ends, the targets after the segment's last symbol). Fits run on one BLAS thread
    (tiny problems are many times slower with several threads on a busy machine).
    """
    if kind not in PROBE_KINDS:
        raise ConfigError(f"unknown probe kind {kind!r}; expected one of {', '.join(PROBE_KINDS)}")
    run = as_run(model, task)
    model = run.model
    batch = analysis_batch(model, run.task, tokens, length=length, n=n, seed=seed)
    if targets is None:
        targets = probe_targets(run.task, batch, moduli)
    ys = {name: np.asarray(v) for name, v in targets.items()}
    for name, v in ys.items():
        if v.shape != batch.tokens.shape:
            raise InputError(f"target {name!r} has shape {v.shape}, tokens {batch.tokens.shape}")
    sites = stream_sites(model, incl_mid=incl_mid, incl_cell=True, incl_memory=True)
    b, t = batch.tokens.shape
    sites = [s for s in sites if len(site_positions(model, s.hook, t))]  # memory: whole segments
    acts = cache_sites(model, torch.as_tensor(batch.tokens), [s.hook for s in sites])
    rows = np.random.default_rng(seed).permutation(b * t)[:max_samples]
    acc = np.zeros((len(sites), len(ys)))
    train_acc = np.zeros_like(acc)
    chance = np.zeros(len(ys))
    n_classes = [0] * len(ys)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, site in enumerate(sites):
            pos = site_positions(model, site.hook, t)
            n_rows = b * len(pos)
            picked = rows if len(pos) == t else np.random.default_rng(seed).permutation(n_rows)[:max_samples]
            groups = np.repeat(np.arange(b), len(pos))[picked]
            x = acts[site.hook].reshape(n_rows, -1).numpy()[picked]
            for j, y in enumerate(ys.values()):
                y_rows = y[:, pos].reshape(-1)[picked]
                fit = fit_probe(x, y_rows, groups, kind=kind, test_size=test_size, seed=seed)
                acc[i, j], train_acc[i, j] = fit.accuracy, fit.train_accuracy
                if len(pos) == t:  # chance of the rows every stream site shares
                    chance[j], n_classes[j] = fit.chance, fit.n_classes
    return ProbeResult(
        sites=[s.label for s in sites],
        hooks=[s.hook for s in sites],
        targets=list(ys),
        accuracy=acc,
        train_accuracy=train_acc,
        chance=chance,
        n_classes=n_classes,
        kind=kind,
        n_samples=len(rows),
    )

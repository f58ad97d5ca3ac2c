"""Distributed alignment search (DAS): in how many dimensions of a site is the automaton's state?

Geiger et al. (arXiv 2303.02536) learn a rotation R of a site's vector and swap only its first k
coordinates between a base and a source input: h' = h + R^T P_k (R h_src - R h_base) =
h + (h_src - h) Q^T Q with Q the first k rows of R. Here Q (`[k, D]`, orthonormal rows, torch's
`orthogonal` parametrization) is trained on interchange pairs with cross-entropy against the
counterfactual labels, the outputs of the automaton run from the source's state (the labels
`interchange_intervention_accuracy` scores), and then scored by that function with `basis=Q` on
its own held-out pairs, so k = D is exactly the whole-vector IIA. One Q serves every intervened
position of the site (an RNN's state, or a Transformer's residual stream at several positions).

The smallest tested k with IIA >= 0.99 is the state's dimensionality at the site. A low k is
evidence only with held-out pairs (used here) and a contrast: a random Q of the same k, or the
same search on an untrained model (in a wide site a trained subspace can also act through a
direction the model does not use otherwise; Makelov et al., arXiv 2311.17030).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from .. import _validate as _v
from ..automata.machine import Automaton
from ..errors import InputError
from ..models import as_tokens, model_config
from ..models.protocol import state_segment_length
from ..tasks import Task, UniformSampler
from ..tasks.datasets import eval_set
from ..training.verdict import THRESHOLD
from . import sites as S
from .causal_abstraction import (
    counterfactual_labels,
    interchange_intervention_accuracy,
    intervention_units,
    site_dim,
    subspace_mix,
)
from .sites import state_sites

IGNORE = -100
CONVERGED, PATIENCE = 1e-2, 5  # training stops after PATIENCE minibatches with a loss below CONVERGED


@dataclass
class DASResult:
    """Held-out IIA of a learned k-dimensional subspace of `site`, per k (rows) and intervened
    position (columns; segments on an RMT); `bases[k]` is its Q (`[k, dim]`)."""

    site: str
    hooks: list[str]
    dim: int
    ks: list[int]
    positions: list[int]
    unit: str
    length: int
    local: bool
    iia: np.ndarray
    iia_local: np.ndarray
    n_pairs: np.ndarray
    whole: float | None
    bases: dict[int, np.ndarray]
    train_loss: list[float]
    n_train: int
    steps: int
    seconds: float = 0.0
    threshold: float = THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict)

    def score(self) -> dict[int, float | None]:
        """Mean IIA per k over the positions, on the measure trained for (`local`: the output at
        the intervened position; otherwise every output from it on)."""
        table = self.iia_local if self.local else self.iia
        out = {}
        for k, row in zip(self.ks, table, strict=True):
            out[k] = float(np.nanmean(row)) if np.isfinite(row).any() else None
        return out

    @property
    def dimension(self) -> int | None:
        """The smallest k whose IIA reaches `threshold` (None: none did)."""
        return next((k for k, v in self.score().items() if v is not None and v >= self.threshold), None)

    def to_dict(self) -> dict[str, Any]:
        def rows(table: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(v) else float(v) for v in row] for row in table]

        return {
            "site": self.site, "hooks": self.hooks, "dim": self.dim, "ks": self.ks,
            "positions": self.positions, "unit": self.unit, "length": self.length, "local": self.local,
            "iia": rows(self.iia), "iia_local": rows(self.iia_local), "n_pairs": self.n_pairs.tolist(),
            "whole": self.whole, "score": {str(k): v for k, v in self.score().items()},
            "dimension": self.dimension, "threshold": self.threshold,
            "bases": {str(k): q.tolist() for k, q in self.bases.items()},
            "train_loss": self.train_loss, "n_train": self.n_train, "steps": self.steps,
            "seconds": self.seconds, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DASResult:
        def table(rows: list[list[float | None]]) -> np.ndarray:
            return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(
                len(data["ks"]), len(data["positions"]))

        keep = {k: data[k] for k in ("site", "hooks", "dim", "ks", "positions", "unit", "length", "local",
                                     "whole", "train_loss", "n_train", "steps", "seconds", "threshold", "extra")}
        return cls(**keep, iia=table(data["iia"]), iia_local=table(data["iia_local"]),
                   n_pairs=np.asarray(data["n_pairs"], dtype=np.int64),
                   bases={int(k): np.asarray(q, dtype=np.float32) for k, q in data["bases"].items()})


def default_ks(n_states: int, dim: int) -> list[int]:
    """1, ceil(log2 n), that + 1 and n (the minimal automaton's states), within 1..dim."""
    c = max(1, math.ceil(math.log2(max(n_states, 1))))
    return sorted(k for k in {1, c, c + 1, n_states} if 1 <= k <= dim)


def das(
    model: nn.Module,
    task: Task | Automaton,
    *,
    site: str | None = None,
    k: int | Sequence[int] | None = None,
    length: int | None = None,
    n_train: int = 256,
    n_test: int = 128,
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 2e-2,
    max_positions: int = 12,
    local: bool | None = None,
    final_only: bool | None = None,
    seed: int = 0,
) -> DASResult:
    """Learn a k-dimensional subspace of `site` (default: the site of best whole-vector IIA) for
    each `k` (default `default_ks`) on `n_train` pairs of `length` tokens, and score it on the
    `n_test` held-out pairs of `interchange_intervention_accuracy` (same positions, `seed`).

    `local` (default: on models that carry no state, i.e. Transformers, as `explain` judges them)
    trains and judges on the output at the intervened position only; `steps=0` scores the
    random initial subspaces."""
    started = time.perf_counter()
    task = _as_task(task)
    cfg = model_config(model)
    for value, name in ((n_train, "n_train"), (n_test, "n_test"), (batch_size, "batch_size"),
                        (max_positions, "max_positions")):
        _v.positive_int(value, name, error=InputError, numpy=True)
    _v.non_negative_int(steps, "steps", error=InputError, numpy=True)
    lr = _v.finite_float(lr, "lr", low=0.0, low_open=True)
    seed = _v.seed(seed)
    available = state_sites(model)
    if not available:
        raise InputError(f"a {cfg.n_layers}-block Transformer has no site for DAS: its output is a "
                         "position-wise function of the last block's stream")
    fam = S.family(cfg)
    local = fam == S.TRANSFORMER if local is None else bool(local)
    length = _default_length(model, cfg) if length is None else int(length)
    if site is not None and site not in available:
        raise InputError(f"unknown DAS site {site!r}; this model has {list(available)}")
    whole = interchange_intervention_accuracy(model, task, length, n=n_test, sites=None if site is None else [site],
                                              max_positions=max_positions, final_only=final_only, seed=seed)
    site = whole.best(local=local)[0] if site is None else site
    hooks = list(available[site])
    dim = site_dim(model, hooks)
    n_states = task.automaton.minimize().n_states
    ks = default_ks(n_states, dim) if k is None else sorted({int(x) for x in np.atleast_1d(k)})
    bad = [x for x in ks if not 1 <= x <= dim]
    if bad or not ks:
        raise InputError(f"k must lie in 1..{dim} (the size of site {site}), got {ks}")

    data = _training_pairs(model, task, hooks, length, n_train, max_positions, final_only, local, seed)
    bases, losses, iia, iia_local = {}, [], [], []
    was_training = model.training
    model.eval()
    try:
        for j, kk in enumerate(ks):
            q, loss = _fit(model, data, dim, kk, steps=0 if kk == dim else steps, batch_size=batch_size,
                           lr=lr, seed=seed + 7919 * j)
            res = interchange_intervention_accuracy(model, task, length, n=n_test, sites=[site],
                                                    max_positions=max_positions, final_only=final_only,
                                                    seed=seed, basis=q)
            bases[kk], losses = q.numpy(), losses + [loss]
            iia.append(res.iia[0])
            iia_local.append(res.iia_local[0])
    finally:
        model.train(was_training)
    whole_value = whole.site_mean(local=local)[site]
    return DASResult(
        site=site, hooks=hooks, dim=dim, ks=ks, positions=whole.positions, unit=whole.unit,
        length=whole.length, local=local, iia=np.array(iia), iia_local=np.array(iia_local),
        n_pairs=whole.n_pairs[whole.sites.index(site)], whole=None if np.isnan(whole_value) else whole_value, bases=bases,
        train_loss=losses, n_train=int(data["pairs"].shape[0]), steps=steps,
        seconds=round(time.perf_counter() - started, 3),
    )


def _as_task(task: Task | Automaton) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, Automaton):
        return Task(name=getattr(task, "name", None) or "automaton", params={}, automaton=task,
                    sampler=UniformSampler(task.n_symbols))
    raise InputError(f"das needs a Task or an Automaton, got {type(task).__name__}")


def _default_length(model: nn.Module, cfg: Any) -> int:
    """12 tokens, at least two whole segments on a segment memory model, within the model's context."""
    segment = state_segment_length(model)
    length = 12 if segment is None else max(12, 2 * segment)
    return min(length, cfg.max_length) if cfg.max_length else length


def _training_pairs(model: nn.Module, task: Task, hooks: list[str], length: int, n: int, max_positions: int,
                    final_only: bool | None, local: bool, seed: int) -> dict[str, Any]:
    """Base/source pairs (other seeds than the evaluation's), the site's values at each unit on
    both, and the counterfactual labels `[n, units, T]` (IGNORE where not scored)."""
    a = task.automaton
    base = eval_set(task, length, n=n, seed=seed + 303, final_only=False).tokens
    source = eval_set(task, length, n=n, seed=seed + 404, final_only=False).tokens
    length = base.shape[1]
    units, ends, scored, segment = intervention_units(model, task, length, max_positions=max_positions,
                                                      final_only=final_only)
    base_t = as_tokens(model, base)
    with torch.no_grad():
        _, cb = model.run_with_cache(base_t, names_filter=hooks)
        _, cs = model.run_with_cache(as_tokens(model, source), names_filter=hooks)
    base_states, source_states = a.run(base), a.run(source)
    labels = np.full((len(base), len(units), length), IGNORE, dtype=np.int64)
    for j, end in enumerate(ends):
        first = end + 1 if segment is not None else end
        cf = counterfactual_labels(a, source_states[:, end], base[:, end + 1 :])[:, first - end :]
        cf[:, ~scored[first:]] = IGNORE
        if local:
            cf[:, 1:] = IGNORE
        labels[:, j, first:] = cf
    differ = source_states[:, ends] != base_states[:, ends]
    pairs = np.argwhere(differ & (labels != IGNORE).any(-1))
    if not len(pairs):
        raise InputError(f"no training pair at length {length} changes the automaton's state at an "
                         "intervened position")
    return {
        "tokens": base_t, "units": torch.as_tensor(units), "pairs": pairs,
        "base": [cb[h][:, units] for h in hooks], "source": [cs[h][:, units] for h in hooks],
        "hooks": hooks, "labels": torch.as_tensor(labels),
        "per_step": S.family(model_config(model)) != S.TRANSFORMER,
    }


def _fit(model: nn.Module, data: dict[str, Any], dim: int, k: int, *, steps: int, batch_size: int, lr: float,
         seed: int) -> tuple[torch.Tensor, float | None]:
    """Q `[k, dim]` trained by Adam on random minibatches of the training pairs (until the loss
    has stayed below CONVERGED for PATIENCE steps); the last loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rotation = parametrizations.orthogonal(nn.Linear(dim, k, bias=False))
    rng = np.random.default_rng(seed)
    params = list(rotation.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    pairs, loss_value, calm = data["pairs"], None, 0
    for _ in range(steps):
        rows = pairs[rng.integers(0, len(pairs), size=min(batch_size, len(pairs)))]
        i, j = torch.as_tensor(rows[:, 0]), torch.as_tensor(rows[:, 1])
        mixed = subspace_mix([b[i, j] for b in data["base"]], [s[i, j] for s in data["source"]], rotation.weight)
        units = data["units"][j]
        hooks = [(h, _row_swap(v, units, data["per_step"])) for h, v in zip(data["hooks"], mixed, strict=True)]
        logits = model.run_with_hooks(data["tokens"][i], fwd_hooks=hooks)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), data["labels"][i, j].flatten(), ignore_index=IGNORE)
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        loss_value = float(loss.detach())
        calm = calm + 1 if loss_value < CONVERGED else 0
        if calm >= PATIENCE:
            break
    with torch.no_grad():
        return rotation.weight.detach().clone(), loss_value


def _row_swap(value: torch.Tensor, units: torch.Tensor, per_step: bool):
    """A hook that replaces, in each row, the activation at that row's unit with `value`'s row
    (a batch of pairs intervened at different positions)."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if per_step:
            rows = units == hook.pos
            if not bool(rows.any()):
                return act
            return torch.where(rows.view(-1, *([1] * (act.ndim - 1))), value.to(act.dtype), act)
        at = torch.arange(act.shape[1], device=act.device)[None] == units[:, None]
        return torch.where(at[..., None], value[:, None].to(act.dtype), act)

    return hook

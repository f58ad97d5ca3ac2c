"""Is the automaton's state represented *causally* at a site? Interchange intervention accuracy.

Causal abstraction (Geiger et al. 2021; distributed alignment search, arXiv 2303.02536) asks
whether a high-level model, here the automaton, is an abstraction of the network: swap the
network's representation at a site between two inputs, and the network's later outputs must
follow the automaton run from the swapped-in state. For a base input b and a source input s,
both of length T, and a site at position t:

- the network runs on b with the activation at (site, t) replaced by its value on s at t;
- the automaton is put in the state it reaches on s[0..t] and then reads b[t+1..];
- IIA at (site, t) is the share of the outputs at positions t..T-1 that the patched network gets
  right under that counterfactual, over pairs whose automaton states after t differ: does the
  network carry the swapped-in state forward? `iia_local` scores the output at t alone: is the
  state at t represented there (what a Transformer, which recomputes its answer from the whole
  prefix at every position, can show at most)?

Sites are the recurrent state of each layer (RNN; both h and c on an LSTM; every layer at once
as `layers` when there are several), the residual stream of a Transformer where a swap is not a
tautology, and the memory written by each segment (RMT: the counterfactual state is the one after
the segment, and the outputs scored are those of later segments). On a Transformer the output
at t is a position-wise function of the last block's `resid_mid` and `resid_post` at t, so
swapping those returns the source's own output (IIA would only measure accuracy); the sites are
therefore `resid_pre` of blocks 1.. and `resid_mid` of every block but the last, and position 0
(whose residual stream depends on the first token alone) is not intervened on. A one-block
Transformer has no such site. On tasks trained on the final position only, only positions that
end a valid training sequence are scored. The whole vector is swapped, or with `basis` (orthonormal
rows `[k, D]` over the site's hooks flattened and concatenated) only its component in that
subspace: h' = h + (h_src - h) Q^T Q, the intervention of distributed alignment search, whose
learned rotation `circuits.das` trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..models import as_tokens, model_config
from ..models.protocol import initial_state, is_stateful, state_segment_length
from ..tasks import Task
from ..tasks.datasets import eval_set
from . import sites as S
from .sites import state_sites


@dataclass
class IIAResult:
    """IIA per site (rows) and intervened position (columns; segments on an RMT)."""

    sites: list[str]
    positions: list[int]
    iia: np.ndarray
    iia_local: np.ndarray
    n_pairs: np.ndarray
    length: int
    unit: str = "position"

    def site_mean(self, local: bool = False) -> dict[str, float]:
        """IIA of each site averaged over the intervened positions (nan where none was scored)."""
        table = self.iia_local if local else self.iia
        return {s: _nanmean(table[i]) for i, s in enumerate(self.sites)}

    def best(self, local: bool = False) -> tuple[str, float | None]:
        """The site with the highest mean IIA (ties: the earlier site); None where nothing was scored."""
        means = self.site_mean(local)
        site = max(means, key=lambda k: (-1.0 if np.isnan(means[k]) else means[k], -self.sites.index(k)))
        return site, None if np.isnan(means[site]) else means[site]

    def to_dict(self) -> dict[str, Any]:
        def rows(table: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(v) else float(v) for v in row] for row in table]

        return {
            "length": self.length, "unit": self.unit, "sites": self.sites, "positions": self.positions,
            "iia": rows(self.iia), "iia_local": rows(self.iia_local), "n_pairs": self.n_pairs.tolist(),
            "site_mean": self.site_mean(), "site_mean_local": self.site_mean(local=True),
        }


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _positions(length: int, max_positions: int) -> list[int]:
    if length <= max_positions:
        return list(range(length))
    return sorted({int(round(x)) for x in np.linspace(0, length - 1, max_positions)})


def interchange_intervention_accuracy(
    model: nn.Module,
    task: Task,
    length: int,
    *,
    n: int = 128,
    sites: Sequence[str] | None = None,
    max_positions: int = 12,
    final_only: bool | None = None,
    seed: int = 0,
    basis: np.ndarray | torch.Tensor | None = None,
) -> IIAResult:
    """IIA of the automaton's state at each site of `model` (`state_sites`) on `n` base/source
    pairs of `task` of `length` tokens, at up to `max_positions` intervened positions.

    `final_only` (default: the task's) scores only the positions that end a valid sequence.
    `basis` (one site only) swaps the subspace its rows span instead of the whole vector."""
    cfg = model_config(model)
    available = state_sites(model)
    if not available:
        raise InputError(f"a {cfg.n_layers}-block Transformer has no residual site where swapping the "
                         "state is not a tautology (its output is a position-wise function of the last "
                         "block's stream)")
    chosen = list(available) if sites is None else list(sites)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise InputError(f"unknown IIA site(s) {unknown}; this model has {list(available)}")
    if length < 2:
        raise InputError(f"IIA needs sequences of at least 2 tokens, got length {length}")
    if basis is not None:
        if len(chosen) != 1:
            raise InputError(f"a subspace basis applies to one site, got sites {chosen}")
        basis = check_basis(basis, site_dim(model, available[chosen[0]]))
    a = task.automaton
    base = eval_set(task, length, n=n, seed=seed + 101, final_only=False).tokens
    source = eval_set(task, length, n=n, seed=seed + 202, final_only=False).tokens
    length = base.shape[1]
    fam = S.family(cfg)
    units, ends, scored, segment = intervention_units(model, task, length, max_positions=max_positions,
                                                      final_only=final_only)
    source_states = a.run(source)  # [n, T]: state after each token
    base_states = a.run(base)
    names = sorted({h for s in chosen for h in available[s]})
    was_training = model.training
    model.eval()
    iia = np.full((len(chosen), len(units)), np.nan)
    local = np.full((len(chosen), len(units)), np.nan)
    counts = np.zeros((len(chosen), len(units)), dtype=np.int64)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(as_tokens(model, source), names_filter=names)
            base_t = as_tokens(model, base)
            if basis is not None:
                _, base_cache = model.run_with_cache(base_t, names_filter=names)
            for j, (unit, end) in enumerate(zip(units, ends, strict=True)):
                keep = source_states[:, end] != base_states[:, end]
                if not keep.any():
                    continue
                cf = counterfactual_labels(a, source_states[keep, end], base[keep, end + 1 :])
                first = end + 1 if segment is not None else end
                rows = torch.as_tensor(keep)
                for i, site in enumerate(chosen):
                    donors = [cache[h][rows][:, unit] for h in available[site]]
                    if basis is not None:
                        donors = subspace_mix([base_cache[h][rows][:, unit] for h in available[site]],
                                              donors, basis)
                    hooks = [(h, _swap(v, unit, fam != S.TRANSFORMER))
                             for h, v in zip(available[site], donors, strict=True)]
                    logits = model.run_with_hooks(base_t[torch.as_tensor(keep)], fwd_hooks=hooks)
                    right = logits.argmax(-1).cpu().numpy()[:, first:] == cf[:, first - end :]
                    right = right[:, scored[first:]]
                    if right.size:
                        iia[i, j], local[i, j] = right.mean(), right[:, 0].mean()
                    counts[i, j] = int(keep.sum())
    finally:
        model.train(was_training)
    return IIAResult(chosen, units, iia, local, counts, length, unit="segment" if segment else "position")


def intervention_units(
    model: nn.Module, task: Task, length: int, *, max_positions: int = 12, final_only: bool | None = None,
) -> tuple[list[int], list[int], np.ndarray, int | None]:
    """Where IIA intervenes: the units (positions; segments on an RMT), the last token of each,
    which positions are scored (`final_only`, default the task's: those ending a valid
    sequence) and the RMT's segment length (None elsewhere)."""
    cfg = model_config(model)
    fam = S.family(cfg)
    # positions whose label training supervised: all, or on final-only tasks those ending a valid sequence
    final_only = task.final_only if final_only is None else final_only
    scored = np.array([not final_only or task.effective_length(p + 1) == p + 1 for p in range(length)])
    segment = state_segment_length(model)
    if segment is not None:
        n_units = length // segment  # whole segments whose memory a later segment reads
        if n_units < 2:
            raise InputError(f"IIA on a {cfg.arch} needs at least 2 whole segments, got length {length}")
        units = _positions(n_units - 1, max_positions)
        return units, [(u + 1) * segment - 1 for u in units], scored, segment  # ends: last token of the segment
    first_unit = 0 if fam == S.RNN else 1
    candidates = [t for t in range(first_unit, length) if scored[t]]
    units = [candidates[i] for i in _positions(len(candidates), max_positions)] if candidates else []
    return units, units, scored, None


def counterfactual_labels(automaton: Any, start_states: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Labels `[m, 1 + len(rest)]`: the output of each start state, then of the run on `rest`."""
    out = np.empty((len(start_states), 1 + rest.shape[1]), dtype=np.int64)
    state = start_states.copy()
    out[:, 0] = automaton.outputs[state]
    for k in range(rest.shape[1]):
        state = automaton.transitions[state, rest[:, k]]
        out[:, k + 1] = automaton.outputs[state]
    return out


def site_dim(model: nn.Module, hooks: Sequence[str]) -> int:
    """D, the size of a site's vector: its hooks' activations at one unit, flattened and concatenated."""
    if is_stateful(model):  # the state's own shapes: an RMT's M vectors, a Compressive Transformer's M + C
        init = initial_state(model, 1)
        return sum(int(init[h][0].numel()) for h in hooks)
    return model_config(model).d_hidden * len(hooks)


def check_basis(basis: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """`basis` as float32 `[k, dim]` with orthonormal rows, or `InputError`."""
    q = torch.as_tensor(basis, dtype=torch.float32).detach()
    if q.ndim != 2 or q.shape[1] != dim or not 1 <= q.shape[0] <= dim:
        raise InputError(f"a subspace basis must be [k, {dim}] with 1 <= k <= {dim}, got {tuple(q.shape)}")
    if not torch.allclose(q @ q.T, torch.eye(q.shape[0]), atol=1e-4):
        raise InputError("the rows of a subspace basis must be orthonormal")
    return q


def subspace_mix(base: Sequence[torch.Tensor], source: Sequence[torch.Tensor], basis: torch.Tensor) -> list[torch.Tensor]:
    """The base values with their component in the row space of `basis` taken from the source:
    b + (s - b) Q^T Q over the hooks' values `[m, ...]` flattened and concatenated."""
    flat_b = torch.cat([b.flatten(1) for b in base], dim=1)
    flat_s = torch.cat([s.flatten(1) for s in source], dim=1)
    mixed = flat_b + (flat_s - flat_b) @ basis.T @ basis
    parts = mixed.split([b[0].numel() for b in base], dim=1)
    return [p.reshape(b.shape) for p, b in zip(parts, base, strict=True)]


def _swap(value: torch.Tensor, unit: int, per_step: bool):
    """A hook that replaces the activation at `unit` with `value`: per-step hook points (RNN
    states, the RMT memory) fire once per step with `hook.pos`; Transformer hooks hold every
    position at once."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if per_step:
            return value.to(act.dtype) if hook.pos == unit else act
        act = act.clone()
        act[:, unit] = value
        return act

    return hook

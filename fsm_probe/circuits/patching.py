"""Activation patching and attribution patching for fsm_probe Transformers, RNNs and RMTs.

`activation_patching` gives the same numbers as TransformerLens's `get_act_patch_*` loops but
puts many patches into one forward and recomputes only what a patch can change (see
`fsm_probe.circuits.engine`). A metric that declares the logit positions it reads (`metric.positions`,
set by `logit_diff`/`probability`) also lets the last layer skip every other query. An RMT
has two sites: `"memory"`, the memory written by each segment (`hook_memory`, all M vectors at
once), and `"memory_slot"`, one of those vectors at a time. Sites are those of
`fsm_probe.circuits.sites`; metrics and corruptions live in `fsm_probe.circuits.inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._validate import positive_int
from ..errors import InputError
from ..models import as_tokens, model_config
from . import sites as S
from .engine import (
    EvalMode,
    Metric,
    Patch,
    Runner,
    Sweep,
    TransformerEngine,
    metric_value,
    needed_positions,
)
from .inputs import (  # noqa: F401  (the names patching has always exported)
    corruption_pairs,
    logit_diff,
    normalized,
    normalized_effect,
    pair,
    probability,
    symmetric_corruption,
)
from .sites import RMT_SITES, RNN_SITES, TRANSFORMER_SITES, check_site  # noqa: F401

DIRECTIONS = ("denoise", "noise")
default_sites = S.patch_sites


# ----- results -----


@dataclass(frozen=True)
class Cell:
    """One patched cell: where (`site`, `index` along `axes`), the patched metric `value`, its
    change from the run patched into (`effect`) and `normalized` (0 corrupted, 1 clean; None
    when the clean and corrupted runs give the same metric)."""

    site: str
    index: tuple[int, ...]
    axes: tuple[str, ...]
    value: float
    effect: float
    normalized: float | None

    def label(self) -> str:
        """`layer=0 pos=3 head=1`."""
        return " ".join(f"{a}={i}" for a, i in zip(self.axes, self.index, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"site": self.site, "index": list(self.index), "axes": list(self.axes), "value": self.value,
                "effect": self.effect, "normalized": self.normalized}


@dataclass
class PatchingResult:
    """Metric value after each patch, with the unpatched clean and corrupted values.

    `values` has one axis per entry of `axes` (`layer`, `pos`, `head`). For attribution patching
    the values are the first-order estimates of the patched metric.
    """

    values: Tensor
    axes: tuple[str, ...]
    site: str
    direction: str
    clean_value: float
    corrupted_value: float
    method: str = "activation"

    @property
    def baseline(self) -> float:
        """The metric of the run that is patched into (corrupted when denoising)."""
        return self.corrupted_value if self.direction == "denoise" else self.clean_value

    def effect(self) -> Tensor:
        """Change each patch makes to the metric of the run it patches."""
        return self.values - self.baseline

    def normalized(self) -> Tensor:
        """`(value - corrupted) / (clean - corrupted)` (Heimersheim & Nanda): 0 corrupted, 1 clean."""
        return normalized_effect(self.values, self.clean_value, self.corrupted_value)

    def top_cells(self, k: int | None = None) -> list[Cell]:
        """The `k` cells (all by default) with the largest |effect|, ties in index order."""
        return [cell for _, cell in self._ranked()[:k]]

    def _ranked(self) -> list[tuple[float, Cell]]:
        """(|effect| in the dtype of `values`, cell) for every cell, largest first."""
        size = self.effect().abs().detach().cpu().numpy()
        values = self.values.detach().cpu().numpy()
        gap = self.clean_value != self.corrupted_value
        out = []
        for idx in np.ndindex(*values.shape):
            value = float(values[idx])
            norm = float(normalized_effect(value, self.clean_value, self.corrupted_value)) if gap else None
            cell = Cell(self.site, tuple(int(i) for i in idx), tuple(self.axes), value, value - self.baseline, norm)
            out.append((float(size[idx]), cell))
        return sorted(out, key=lambda c: -c[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "method": self.method,
            "site": self.site,
            "direction": self.direction,
            "axes": list(self.axes),
            "shape": list(self.values.shape),
            "values": self.values.tolist(),
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
        }


def top_cells(results: Mapping[str, PatchingResult] | Sequence[PatchingResult], k: int | None = None) -> list[Cell]:
    """The `k` cells with the largest |effect| over several sites' results (ties: site order,
    then index order)."""
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    ranked = sorted((c for r in items for c in r._ranked()), key=lambda c: -c[0])
    return [cell for _, cell in ranked[:k]]


# ----- sweeps -----


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def _sweep_for(cfg: Any, site: str, n_pos: int) -> Sweep:
    check_site(cfg, site)
    axes = S.axes(site)
    if site in RMT_SITES:
        n_seg = cfg.n_segments(n_pos)
        slots = range(cfg.n_memory) if site == "memory_slot" else [None]
        cells = [(seg, j) for seg in range(n_seg) for j in slots]
        patches = [Patch((0,), seg, j) for seg, j in cells]
        shape = (n_seg, cfg.n_memory) if site == "memory_slot" else (n_seg,)
        return Sweep(site, patches, [c[: len(shape)] for c in cells], shape, {"axes": axes})
    heads = range(cfg.n_heads) if site == "head_out" else [None]
    cells = [(li, p, h) for li in range(cfg.n_layers) for p in range(n_pos) for h in heads]
    patches = [Patch((li,), p, h) for li, p, h in cells]
    shape = (cfg.n_layers, n_pos, cfg.n_heads) if site == "head_out" else (cfg.n_layers, n_pos)
    return Sweep(site, patches, [c[: len(shape)] for c in cells], shape, {"axes": axes})


# ----- public entry points -----


def activation_patching(
    model: nn.Module,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    site: str = "resid_pre",
    direction: str = "denoise",
    batch_patches: int | None = None,
    engine: str = "auto",
) -> PatchingResult:
    """Patch every (layer, pos[, head]) activation at `site` and evaluate `metric` on each run.

    Denoising runs the corrupted input and patches in clean activations; noising runs the clean
    input and patches in corrupted ones. `metric` maps the patched logits `[batch, pos, vocab]`
    to a scalar, exactly as in TransformerLens. Sites: Transformer `resid_pre`, `resid_mid`,
    `resid_post`, `attn_out`, `mlp_out` ([layer, pos]), `head_out` ([layer, pos, head], the
    per-head `z`); RNN `hidden`, `cell` ([layer, pos]); RMT `memory` ([segment]: all M memory
    vectors written by segment s at once, the state the next segment reads; the last segment's
    cell has no effect) and `memory_slot` ([segment, slot]: one of those vectors at a time).
    `batch_patches` bounds the patches per forward; `engine="hooks"` uses the bridge's hook
    points (slower reference path).
    """
    _check_direction(direction)
    clean, corrupted = pair(clean_tokens, corrupted_tokens)
    clean, corrupted = as_tokens(model, clean), as_tokens(model, corrupted)
    sweep = _sweep_for(model_config(model), site, clean.shape[1])
    with EvalMode(model), torch.no_grad():
        runner = Runner(model, engine)
        clean_run, corr_run = runner.run(clean), runner.run(corrupted)
        clean_value = metric_value(metric, clean_run["logits"])
        corr_value = metric_value(metric, corr_run["logits"])
        if direction == "denoise":
            values = runner.evaluate(corr_run, clean_run, sweep, metric, batch_patches)
        else:
            values = runner.evaluate(clean_run, corr_run, sweep, metric, batch_patches)
    return PatchingResult(values, sweep.extra["axes"], site, direction, clean_value, corr_value)


def _step_gradients(
    model: nn.Module, tokens: Tensor, metric: Metric, names: list[str], per_segment: bool,
    embed: Tensor | None = None,
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Metric and, per hook name, the activations and gradients stacked over steps (RNN steps or,
    `per_segment`, RMT segments); `embed` replaces `hook_embed` (RMT: per segment,
    `[batch, n_segments, S, d]`)."""
    acts: dict[str, list[Tensor]] = {name: [] for name in names}

    def keep(act: Tensor, hook: Any) -> Tensor:
        act = act if act.requires_grad else act.detach().requires_grad_(True)
        acts[hook.name].append(act)
        return act

    def replace_embed(act: Tensor, hook: Any) -> Tensor:
        return embed[:, hook.segment] if per_segment else embed

    hooks = [] if embed is None else [(S.hook_name("embed"), replace_embed)]
    hooks += [(name, keep) for name in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(tokens) if per_segment else model(tokens, stepwise=True))
        flat = [a for name in names for a in acts[name]]
        grads = iter(torch.autograd.grad(value, flat, allow_unused=True))
    out = {}
    for name in names:
        g = [next(grads) for _ in acts[name]]
        g = [torch.zeros_like(a) if gi is None else gi for a, gi in zip(acts[name], g, strict=True)]
        out[name] = (torch.stack([a.detach() for a in acts[name]], 1), torch.stack(g, 1))
    return value.detach(), out


def _alphas(steps: int) -> list[float]:
    positive_int(steps, "steps", error=InputError)
    return [k / steps for k in range(steps)]


def _embed(model: nn.Module, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=S.hook_name("embed"))
    return cache[S.hook_name("embed")]


def _state_attribution(
    model: nn.Module, cfg: Any, sites: list[str], base_tokens: Tensor, src_tokens: Tensor, metric: Metric,
    alphas: list[float],
) -> tuple[Tensor, float, dict[str, Tensor]]:
    """Base metric, source metric and, per site, the estimate per step (RNN step or RMT
    segment) of patching that state: (source - base) . mean gradient over `alphas`, summed over
    the batch and the model dimension (`memory_slot` keeps the RMT's M vectors: `[segment, M]`)."""
    per_segment = sites[0] in RMT_SITES
    layer_hooks = {site: S.layer_hooks(cfg, site) for site in sites}
    names = sorted({h for hooks in layer_hooks.values() for h in hooks})
    stepwise = {} if per_segment else {"stepwise": True}
    with torch.no_grad():
        src_logits, src_cache = model.run_with_cache(src_tokens, names_filter=names, **stepwise)
    other = metric_value(metric, src_logits)
    value, grads = _step_gradients(model, base_tokens, metric, names, per_segment)
    if len(alphas) > 1:
        e0, e1 = _embed(model, base_tokens), _embed(model, src_tokens)
        for a in alphas[1:]:
            _, more = _step_gradients(model, base_tokens, metric, names, per_segment, e0 + a * (e1 - e0))
            grads = {n: (grads[n][0], grads[n][1] + more[n][1]) for n in names}
    per_hook = {
        n: ((src_cache[n] - act) * grad / len(alphas)).sum(-1).sum(0)
        for n, (act, grad) in grads.items()
    }
    deltas = {}
    for site, hooks in layer_hooks.items():
        if site in RMT_SITES:
            # memory: every hook of the state (a Compressive Transformer's memory and compressed memory)
            deltas[site] = per_hook[hooks[0]] if site == "memory_slot" else sum(per_hook[h].sum(-1) for h in hooks)
        else:
            deltas[site] = torch.stack([per_hook[h] for h in hooks])
    return value, other, deltas


def _transformer_attribution(
    model: nn.Module, cfg: Any, sites: list[str], base_tokens: Tensor, src_tokens: Tensor, metric: Metric,
    alphas: list[float],
) -> tuple[Tensor, float, dict[str, Tensor]]:
    """`_state_attribution` for a Transformer, on the fast engine: the source runs without a
    graph (a backward through its rows would cost as much as the base's); the base and the
    integrated-gradient points run as one stacked batch."""
    steps = len(alphas)
    engine = TransformerEngine(model, fused_norm=True)
    needed = needed_positions(metric, base_tokens.shape[1])
    batch = base_tokens.shape[0]
    with torch.no_grad():
        resid0 = TransformerEngine.resid0(model, torch.cat([src_tokens, base_tokens]))
        src_resid0, base_resid0 = resid0[:batch], resid0[batch:]
        src = engine.full(src_resid0, needed)
        paths = [base_resid0 + a * (src_resid0 - base_resid0) for a in alphas[1:]]
    with torch.enable_grad():
        run = engine.full(torch.cat([base_resid0, *paths]), needed, grad=True)
        parts = [metric(run["logits"][k * batch : (k + 1) * batch]) for k in range(steps)]
        value, total = parts[0], torch.stack(parts).sum()
        flat = [run[site][li] for site in sites for li in range(cfg.n_layers)]
        grads = iter(torch.autograd.grad(total, flat, allow_unused=True))
    other = metric_value(metric, src["logits"])
    value = value.detach()
    n_pos = base_tokens.shape[1]
    deltas = {}
    with torch.no_grad():
        for site in sites:
            rows = []
            for li in range(cfg.n_layers):
                act, grad = run[site][li][:batch].detach(), next(grads)
                if grad is not None and steps > 1:
                    grad = grad.view(steps, *act.shape).mean(0)
                cell = act.new_zeros((n_pos, *act.shape[2:-1]))
                if grad is not None:
                    d = ((src[site][li] - act) * grad).sum(-1).sum(0)
                    cell = d if act.shape[1] == n_pos else cell.index_copy(0, run["cols"], d)
                rows.append(cell)
            deltas[site] = torch.stack(rows)
    return value, other, deltas


def attribution_patching(
    model: nn.Module,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    sites: Sequence[str] | None = None,
    direction: str = "denoise",
    steps: int = 1,
) -> dict[str, PatchingResult]:
    """First-order estimate of `activation_patching` for every site from a forward of each input
    and one backward.

    Estimate = metric(base) + (source act - base act) . d metric / d act at the base run, summed
    over the model dimension (per head over `d_head` for `head_out`; over all M vectors for the
    RMT's `memory`, per vector for `memory_slot`). `sites` defaults to the model's
    `default_sites` (`sites.patch_sites`: (Transformer resid_pre, attn_out, mlp_out if it has MLPs, head_out; RNN
    hidden, and cell on an LSTM; RMT memory, and memory_slot when n_memory > 1)). Transformers
    need a natively built model without hooks attached (the engine of the fast patching path).

    `steps > 1` is the integrated-gradients variant of EAP-IG (Hanna et al. 2024): the gradient
    is averaged over `steps` runs whose input embeddings (`blocks.0.hook_resid_pre`, or the
    RNN's and RMT's `hook_embed`) lie at `alpha = k / steps`, k = 0..steps-1, on the line from
    the base to the source input (left Riemann sum, so `steps=1` is plain attribution patching);
    the multiplier is still (source act - base act). The Transformer runs the source without a
    graph, then the base and all steps as one stacked forward + backward. A site whose patch is
    the same as moving the whole input (e.g. the embedding at the only position where the inputs differ) converges
    to exact patching. The estimate is first order: where one patch flips a saturated decision
    (parity), magnitudes and small cells' signs can be far off; rank by |effect| and confirm the
    top cells with `activation_patching`.
    """
    _check_direction(direction)
    alphas = _alphas(steps)
    clean, corrupted = pair(clean_tokens, corrupted_tokens)
    clean, corrupted = as_tokens(model, clean), as_tokens(model, corrupted)
    cfg = model_config(model)
    sites = default_sites(cfg) if sites is None else [sites] if isinstance(sites, str) else list(sites)
    if not sites:
        raise InputError("sites names no site to attribute")
    for site in sites:
        check_site(cfg, site)
    base_tokens, src_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    attribute = _transformer_attribution if S.family(cfg) == S.TRANSFORMER else _state_attribution
    with EvalMode(model):
        value, other, deltas = attribute(model, cfg, sites, base_tokens, src_tokens, metric, alphas)
    base_value = float(value)
    clean_value, corr_value = (other, base_value) if direction == "denoise" else (base_value, other)
    return {
        site: PatchingResult(
            delta.detach() + base_value, S.axes(site), site, direction, clean_value, corr_value, "attribution"
        )
        for site, delta in deltas.items()
    }


def compare(approx: PatchingResult | Tensor, exact: PatchingResult | Tensor, k: int = 10) -> dict[str, float]:
    """Agreement of two patching maps: Spearman and Pearson of the signed effects, Spearman of
    |effect| (the order in which a circuit search would rank components), and top-`k` overlap."""
    from scipy.stats import pearsonr, spearmanr

    a = (approx.effect() if isinstance(approx, PatchingResult) else torch.as_tensor(approx)).flatten()
    b = (exact.effect() if isinstance(exact, PatchingResult) else torch.as_tensor(exact)).flatten()
    if a.shape != b.shape:
        raise InputError(f"cannot compare maps of {a.numel()} and {b.numel()} cells")
    a64, b64 = a.double().numpy(), b.double().numpy()
    k = min(k, a.numel())
    top_a = set(np.argsort(-np.abs(a64))[:k].tolist())
    top_b = set(np.argsort(-np.abs(b64))[:k].tolist())
    return {
        "spearman": float(spearmanr(a64, b64).statistic),
        "spearman_abs": float(spearmanr(np.abs(a64), np.abs(b64)).statistic),
        "pearson": float(pearsonr(a64, b64).statistic),
        "topk_agreement": len(top_a & top_b) / k if k else float("nan"),
    }

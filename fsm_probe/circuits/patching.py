"""Activation patching and attribution patching for fsm_probe Transformers, RNNs and RMTs.

`activation_patching` gives the same numbers as TransformerLens's `get_act_patch_*` loops but
puts many patches into one forward and recomputes only what a patch can change (see
`fsm_probe.circuits.engine`). A metric that declares the logit positions it reads (`metric.positions`,
set by `logit_diff`/`probability`) also lets the last layer skip every other query. An RMT
(`arch="rmt"`) has two sites: `"memory"`, the memory written by each segment (`hook_memory`,
all M vectors at once), and `"memory_slot"`, one of those vectors at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._validate import positive_int
from ..errors import InputError
from ..models import as_tokens, model_config
from ..models.config import MEMORY_ARCHS
from ..models.rmt import MEMORY_HOOK
from ..tasks.datasets import eval_set
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

TRANSFORMER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
RNN_SITES = ("hidden", "cell")
RMT_SITES = ("memory", "memory_slot")
DIRECTIONS = ("denoise", "noise")
_AXES = {"head_out": ("layer", "pos", "head"), "memory": ("segment",), "memory_slot": ("segment", "slot")}


def default_sites(cfg: Any) -> list[str]:
    """The sites the report and `fsm-probe patch` sweep for a model of config `cfg`."""
    if cfg.arch == "rmt":
        return ["memory"] + (["memory_slot"] if cfg.n_memory > 1 else [])
    if cfg.is_rnn:
        return ["hidden"] + (["cell"] if cfg.arch == "lstm" else [])
    return ["resid_pre", "attn_out"] + (["mlp_out"] if cfg.d_mlp != 0 else []) + ["head_out"]


# ----- metrics -----


def _label_tensor(labels: Any) -> Tensor:
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long()


def _pick(at: Tensor, labels: Tensor) -> Tensor:
    idx = labels.to(at.device).expand(at.shape[0]) if labels.ndim == 0 else labels.to(at.device)
    return at.gather(1, idx[:, None])[:, 0]


def logit_diff(labels: Any, wrong_labels: Any, pos: int = -1) -> Metric:
    """Mean over the batch of `logit[label] - logit[wrong_label]` at `pos` (labels: int or [B])."""
    right, wrong = _label_tensor(labels), _label_tensor(wrong_labels)

    def metric(logits: Tensor) -> Tensor:
        return (_pick(logits[:, pos], right) - _pick(logits[:, pos], wrong)).mean()

    metric.positions = (pos,)
    return metric


def probability(labels: Any, pos: int = -1) -> Metric:
    """Mean over the batch of the softmax probability of `labels` at `pos`."""
    right = _label_tensor(labels)

    def metric(logits: Tensor) -> Tensor:
        return _pick(logits[:, pos].softmax(-1), right).mean()

    metric.positions = (pos,)
    return metric


def normalized(metric: Metric, clean_value: float, corrupted_value: float) -> Metric:
    """`(metric - corrupted) / (clean - corrupted)`: 0 = corrupted run, 1 = clean run."""
    scale = float(clean_value) - float(corrupted_value)
    if scale == 0:
        raise InputError("normalized metric needs clean_value != corrupted_value")

    def wrapped(logits: Tensor) -> Tensor:
        return (metric(logits) - float(corrupted_value)) / scale

    if hasattr(metric, "positions"):
        wrapped.positions = metric.positions
    return wrapped


# ----- corruptions -----


def pair(clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    """A user-chosen (clean, corrupted) pair as int64 `[batch, pos]` tensors of the same shape."""
    c, x = torch.as_tensor(np.asarray(clean)).long(), torch.as_tensor(np.asarray(corrupted)).long()
    c, x = (c[None] if c.ndim == 1 else c), (x[None] if x.ndim == 1 else x)
    if c.shape != x.shape or c.ndim != 2:
        raise InputError(
            f"clean and corrupted tokens must both be [batch, pos] of one shape, got "
            f"{tuple(c.shape)} and {tuple(x.shape)}"
        )
    return c, x


def symmetric_corruption(
    task_automaton: Any, tokens: Any, position: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Replace the symbol at `position` of each sequence by one that changes the final label.

    The replacement is drawn uniformly among the symbols that change the automaton's label at the
    last position; an `InputError` names the first sequence for which no symbol does.
    """
    arr = np.array(tokens.cpu().numpy() if isinstance(tokens, Tensor) else tokens, dtype=np.int64)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"tokens must be [batch, pos] with pos >= 1, got shape {arr.shape}")
    n_pos = arr.shape[1]
    if not -n_pos <= position < n_pos:
        raise InputError(f"position {position} is outside a sequence of length {n_pos}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    target = task_automaton.run_outputs(arr)[:, -1]
    out = arr.copy()
    options = []
    for sym in range(task_automaton.n_symbols):
        trial = arr.copy()
        trial[:, position] = sym
        options.append(task_automaton.run_outputs(trial)[:, -1] != target)
    changes = np.stack(options, axis=1)
    for b in range(arr.shape[0]):
        good = np.flatnonzero(changes[b])
        if good.size == 0:
            raise InputError(
                f"no symbol at position {position} changes the final label of sequence {b}"
            )
        out[b, position] = gen.choice(good)
    return out


def corruption_pairs(
    task: Any, length: int, n: int = 16, seed: int = 0, position: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Up to `n` clean sequences of `task` (seeded), their `symmetric_corruption` at one position,
    and that position.

    `position` defaults to the middle one when possible, else the nearest position at which at
    least half of `n` sequences have a symbol that changes the final label. Sequences whose label
    no single symbol at the position can change are left out.
    """
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}")
    a = task.automaton
    pool = eval_set(task, length, n=8 * n, seed=seed + 1, final_only=False).tokens
    length = pool.shape[1]  # the task's length rule may shorten the requested length
    if position is not None:
        if not -length <= position < length:
            raise InputError(f"position {position} is outside sequences of length {length}")
        position %= length
    rng = np.random.default_rng(seed)
    final = a.run_outputs(pool)[:, -1]
    candidates = [position] if position is not None else sorted(range(length), key=lambda q: (abs(q - length // 2), q))
    for p in candidates:
        ok = np.zeros(len(pool), dtype=bool)
        for sym in range(a.n_symbols):
            trial = pool.copy()
            trial[:, p] = sym
            ok |= a.run_outputs(trial)[:, -1] != final
        if ok.sum() >= (1 if position is not None else max(1, n // 2)):
            clean = pool[ok][:n]
            return clean, symmetric_corruption(a, clean, p, rng), p
    where = f"at position {position}" if position is not None else "at any position"
    raise InputError(f"no single-symbol change {where} alters this task's final label; nothing to patch")


# ----- results -----


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
        scale = self.clean_value - self.corrupted_value
        if scale == 0:
            raise InputError("clean and corrupted metric values coincide; nothing to normalize")
        return (self.values - self.corrupted_value) / scale

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


# ----- sites -----


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def check_site(cfg: Any, site: str) -> None:
    """Raise `InputError` unless `site` can be patched in a model of config `cfg`."""
    if cfg.arch == "rmt":
        if site not in RMT_SITES:
            raise InputError(
                "RMT patching sites are 'memory' (the memory each segment writes, hook_memory) and "
                f"'memory_slot' (one of its n_memory vectors at a time), got {site!r}"
            )
        return
    if cfg.arch in MEMORY_ARCHS:
        raise InputError(
            f"patching and tracing support rnn, gru, lstm, transformer and rmt, not {cfg.arch!r}: its "
            "working memory is generated tokens, with no hook_memory to patch"
        )
    if cfg.is_rnn:
        if site not in RNN_SITES:
            raise InputError(f"RNN patching sites are {', '.join(RNN_SITES)}, got {site!r}")
        if site == "cell" and cfg.arch != "lstm":
            raise InputError(f"site 'cell' needs an LSTM, this model is {cfg.arch!r}")
    elif site not in TRANSFORMER_SITES:
        raise InputError(f"Transformer patching sites are {', '.join(TRANSFORMER_SITES)}, got {site!r}")
    elif site in ("resid_mid", "mlp_out") and cfg.d_mlp == 0:
        raise InputError(f"site {site!r} does not exist in an attention-only Transformer")


def _sweep_for(cfg: Any, site: str, n_pos: int) -> Sweep:
    check_site(cfg, site)
    axes = _AXES.get(site, ("layer", "pos"))
    if cfg.arch == "rmt":
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
    cell has no effect) and `memory_slot` ([segment, slot]: one of those vectors at a time). `batch_patches` bounds the patches per forward; `engine="hooks"` uses the
    bridge's hook points (slower reference path).
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
    model: nn.Module, tokens: Tensor, metric: Metric, names: list[str], embed: Tensor | None = None
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Metric and, per hook name, the activations and gradients stacked over steps (RNN steps or
    RMT segments); `embed` replaces `hook_embed` (RMT: per segment, `[batch, n_segments, S, d]`)."""
    acts: dict[str, list[Tensor]] = {name: [] for name in names}
    rmt = model_config(model).arch == "rmt"

    def keep(act: Tensor, hook: Any) -> Tensor:
        act = act if act.requires_grad else act.detach().requires_grad_(True)
        acts[hook.name].append(act)
        return act

    def replace_embed(act: Tensor, hook: Any) -> Tensor:
        return embed[:, hook.segment] if rmt else embed

    hooks = [] if embed is None else [("hook_embed", replace_embed)]
    hooks += [(name, keep) for name in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(tokens) if rmt else model(tokens, stepwise=True))
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


def _rnn_embed(model: nn.Module, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    return cache["hook_embed"]


def _step_attribution(
    model: nn.Module, base_tokens: Tensor, src_tokens: Tensor, metric: Metric, names: list[str],
    alphas: list[float],
) -> tuple[Tensor, float, dict[str, Tensor]]:
    """Base metric, source metric and, per hook name, the estimate per step (RNN step or RMT
    segment) of patching that state: (source - base) . mean gradient over `alphas`, summed over
    the batch and the model dimension (an RMT memory keeps its M slots: `[segment, M]`)."""
    stepwise = {} if model_config(model).arch == "rmt" else {"stepwise": True}
    with torch.no_grad():
        src_logits, src_cache = model.run_with_cache(src_tokens, names_filter=names, **stepwise)
    other = metric_value(metric, src_logits)
    value, grads = _step_gradients(model, base_tokens, metric, names)
    if len(alphas) > 1:
        e0, e1 = _rnn_embed(model, base_tokens), _rnn_embed(model, src_tokens)
        for a in alphas[1:]:
            _, more = _step_gradients(model, base_tokens, metric, names, e0 + a * (e1 - e0))
            grads = {n: (grads[n][0], grads[n][1] + more[n][1]) for n in names}
    deltas = {
        n: ((src_cache[n] - act) * grad / len(alphas)).sum(-1).sum(0)
        for n, (act, grad) in grads.items()
    }
    return value, other, deltas


def attribution_patching(
    model: nn.Module,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    sites: Sequence[str] | None = None,
    direction: str = "denoise",
    steps: int = 1,
) -> dict[str, PatchingResult]:
    """First-order estimate of `activation_patching` for every site from a forward of each input
    and one backward.

    Estimate = metric(base) + (source act - base act) . d metric / d act at the base run, summed
    over the model dimension (per head over `d_head` for `head_out`; over all M vectors for the
    RMT's `memory`, per vector for `memory_slot`). `sites` defaults to the model's
    `default_sites` (Transformer resid_pre, attn_out, mlp_out if it has MLPs, head_out; RNN
    hidden, and cell on an LSTM; RMT memory, and memory_slot when n_memory > 1). Transformers
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
    deltas: dict[str, Tensor] = {}
    with EvalMode(model):
        if cfg.arch == "rmt":
            value, other, per_hook = _step_attribution(model, base_tokens, src_tokens, metric, [MEMORY_HOOK], alphas)
            for site in sites:
                deltas[site] = per_hook[MEMORY_HOOK] if site == "memory_slot" else per_hook[MEMORY_HOOK].sum(-1)
        elif cfg.is_rnn:
            def hook(site: str, li: int) -> str:
                return f"layers.{li}.hook_{'h' if site == 'hidden' else 'c'}"

            names = sorted({hook(site, li) for site in sites for li in range(cfg.n_layers)})
            value, other, per_hook = _step_attribution(model, base_tokens, src_tokens, metric, names, alphas)
            for site in sites:
                deltas[site] = torch.stack([per_hook[hook(site, li)] for li in range(cfg.n_layers)])
        else:
            engine = TransformerEngine(model, fused_norm=True)
            needed = needed_positions(metric, base_tokens.shape[1])
            batch = base_tokens.shape[0]
            with torch.no_grad():
                resid0 = TransformerEngine.resid0(model, torch.cat([src_tokens, base_tokens]))
                src_resid0, base_resid0 = resid0[:batch], resid0[batch:]
                src = engine.full(src_resid0, needed)
                paths = [base_resid0 + a * (src_resid0 - base_resid0) for a in alphas[1:]]
            # The source runs without a graph (a backward through its rows would cost as much as
            # the base's); the base and the integrated-gradient points run as one stacked batch.
            with torch.enable_grad():
                run = engine.full(torch.cat([base_resid0, *paths]), needed, grad=True)
                parts = [metric(run["logits"][k * batch : (k + 1) * batch]) for k in range(steps)]
                value, total = parts[0], torch.stack(parts).sum()
                flat = [run[site][li] for site in sites for li in range(cfg.n_layers)]
                grads = iter(torch.autograd.grad(total, flat, allow_unused=True))
            other = metric_value(metric, src["logits"])
            value = value.detach()
            n_pos = base_tokens.shape[1]
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
    base_value = float(value)
    clean_value, corr_value = (other, base_value) if direction == "denoise" else (base_value, other)
    return {
        site: PatchingResult(
            delta.detach() + base_value,
            _AXES.get(site, ("layer", "pos")),
            site, direction, clean_value, corr_value, "attribution",
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

"""Patched runs: the forward passes behind `fsm_probe.circuits.patching` and `fsm_probe.circuits.tracing`.

A `Runner` caches a model's base and source runs and evaluates a metric on batches of patched runs,
each a copy of the base run with one cell (`Patch`: layers, position, head, and its site when it
differs from the sweep's) taken from the source.
Many patches go into one forward, stacked along the batch, and only what a patch can change is
recomputed: nothing before the patched layer and, under causal attention, nothing before the patched
position (cached keys/values stand in for the prefix). Transformers built by fsm_probe use
`TransformerEngine`, which runs the native model's layers from any stage; other Transformers go
through the bridge's hook points. RNN sweeps restart the recurrence from the cached state before the
patched step, RMT sweeps from the cached memory (`fsm_probe.models.protocol`). Internal to fsm_probe: the public API is in
`fsm_probe.circuits.patching`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import InputError
from ..models import model_config
from ..models.native import STAGES, NativeTransformer
from ..models.protocol import (
    is_stateful,
    state_segment_length,
    state_sites,
    steps_per_token,
)
from . import sites as S
from .grouping import Patch, auto_patches, scattered_chunks, span_chunks, sweep_span

Metric = Callable[[Tensor], Tensor]
@dataclass
class Sweep:
    """Cells to patch; `slots[i]` is where patch i's value goes in the output."""

    site: str
    patches: list[Patch]
    slots: list[tuple[int, ...]]
    shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def metric_value(metric: Metric, logits: Tensor) -> float:
    out = torch.as_tensor(metric(logits))
    if out.numel() != 1:
        raise InputError(f"the metric must return a scalar, got shape {tuple(out.shape)}")
    return float(out)


def needed_positions(metric: Metric, n_pos: int) -> list[int] | None:
    declared = getattr(metric, "positions", None)
    if declared is None:
        return None
    return sorted({int(p) % n_pos for p in declared})


# ----- Transformer engine -----


class TransformerEngine(NativeTransformer):
    """Patched forward passes of a natively built TransformerBridge (`fsm_probe.models.native`).

    It calls the torch layers directly, so it refuses a model with hooks, which it would skip.
    """

    def __init__(self, model: nn.Module, *, fused_norm: bool = False) -> None:
        super().__init__(model, fused_norm=fused_norm)
        if has_hooks(model):
            raise InputError(
                "the model has hooks attached, which the fast Transformer engine would skip; "
                "remove them first (model.reset_hooks())"
            )

    def patched_logits(
        self,
        base: dict[str, Any],
        src: dict[str, Any],
        site: str,
        patches: list[Patch],
        needed: list[int] | None,
    ) -> Tensor:
        """Logits `[n_patches * batch, pos, vocab]` of every patched run, patch-major; `site` is
        where patches without their own `site` apply."""
        n = len(patches)
        batch, n_pos = base["logits"].shape[:2]
        first = min(min(p.layers) for p in patches)
        s = min(p.pos for p in patches) if self.causal else 0
        dev = base["logits"].device
        logits = base["logits"].repeat(n, 1, 1)
        if needed is not None:
            cols = torch.tensor([p - s for p in needed if p >= s], dtype=torch.long, device=dev)
            if cols.numel() == 0:
                return logits
            logits[:, s:] = float("nan")
        else:
            cols = None
        suffix = torch.arange(s, n_pos, device=dev)
        col_pos = torch.zeros(n, n_pos - s, dtype=torch.bool, device=dev)
        heads = torch.zeros(n, dtype=torch.long, device=dev)
        hit: dict[str, Tensor] = {}  # stage -> [patch, layer]: where each patch applies
        for i, p in enumerate(patches):
            col_pos[i, p.pos - s] = True
            stage = p.site or site
            if stage not in hit:
                hit[stage] = torch.zeros(n, self.n_layers, dtype=torch.bool, device=dev)
            hit[stage][i, list(p.layers)] = True
            heads[i] = 0 if p.head is None else p.head

        def expand(t: Tensor, keep: Tensor | None) -> Tensor:
            t = t[:, s:] if keep is None else t[:, s:][:, keep]
            return t.repeat(n, *([1] * (t.ndim - 1)))

        def patch(li: int, stage: str, val: Tensor, keep: Tensor | None) -> Tensor:
            if stage not in hit or not bool(hit[stage][:, li].any()):
                return val
            mask = (col_pos if keep is None else col_pos[:, keep]) & hit[stage][:, li, None]
            new = src[stage][li][:, s:] if keep is None else src[stage][li][:, s:][:, keep]
            shaped = val.view(n, batch, *val.shape[1:])
            if stage == "head_out":
                head_mask = F.one_hot(heads, self.layers[li].attn.n_heads).bool()
                m = (mask[:, :, None] & head_mask[:, None, :])[:, None, :, :, None]
            else:
                m = mask[:, None, :, None]
            return torch.where(m, new[None], shaped).view(val.shape)

        entry = min(STAGES.index(p.site or site) for p in patches if min(p.layers) == first)
        x = z = a = None
        for li in range(first, self.n_layers):
            skip = entry if li == first else 0
            keep = cols if (needed is not None and li == self.n_layers - 1) else None
            qpos = suffix if keep is None else suffix[keep]
            if skip <= 0:
                if li == first:
                    x = expand(base["resid_pre"][li], None)
                x = patch(li, "resid_pre", x, None)
            if skip <= 1:
                if skip == 1:
                    z = expand(base["head_out"][li], keep)
                else:
                    q, k, v = self.qkv(li, self.ln1[li](x), suffix)
                    if s:
                        k = torch.cat([base["k"][li][:, :, :s].repeat(n, 1, 1, 1), k], dim=2)
                        v = torch.cat([base["v"][li][:, :, :s].repeat(n, 1, 1, 1), v], dim=2)
                    z = self.attend(li, q if keep is None else q[:, :, keep], k, v, qpos)
                z = patch(li, "head_out", z, keep)
            if skip <= 2:
                a = expand(base["attn_out"][li], keep) if skip == 2 else self.o_proj(li, z)
                a = patch(li, "attn_out", a, keep)
            if skip <= 3:
                if skip == 3:
                    mid = expand(base["resid_mid"][li], keep)
                else:
                    resid = x if skip == 0 else expand(base["resid_pre"][li], None)
                    mid = (resid if keep is None else resid[:, keep]) + a
                x = patch(li, "resid_mid", mid, keep)
            if not self.attn_only:
                if skip <= 4:
                    if skip == 4:
                        x = expand(base["resid_mid"][li], keep)
                    m = expand(base["mlp_out"][li], keep) if skip == 4 else self.mlp[li](self.ln2[li](x))
                    x = x + patch(li, "mlp_out", m, keep)
                else:
                    x = expand(base["resid_post"][li], keep)
            elif skip == 5:
                x = expand(base["resid_post"][li], keep)
            x = patch(li, "resid_post", x, keep)
        out = self.unembed(x)
        if needed is None:
            logits[:, s:] = out
        else:
            logits[:, s + cols] = out
        return logits


# ----- generic hook-based Transformer path -----


def _hook_patched_logits(
    model: nn.Module, tokens: Tensor, base: dict[str, Any], src: dict[str, Any], site: str,
    patches: list[Patch],
) -> Tensor:
    """Reference path through the bridge's hook points: all `patches` in one stacked forward."""
    batch = tokens.shape[0]
    n = len(patches)
    hooks = []
    if base.get("_resid0") is not None:
        resid0 = base["_resid0"].repeat(n, 1, 1)
        hooks.append(("blocks.0.hook_resid_pre", lambda act, hook: resid0))
    for li in sorted({li for p in patches for li in p.layers}):
        if site == "resid_mid":
            name = S.hook_name("attn_out", li)
            new = src[S.hook_name("resid_mid", li)] - base[S.hook_name("resid_pre", li)]
        else:
            name = S.hook_name(site, li)
            new = src[name]
        hit = [i for i, p in enumerate(patches) if li in p.layers]

        def hook(act: Tensor, hook: Any, hit: list[int] = hit, new: Tensor = new) -> Tensor:
            act = act.clone().view(n, batch, *act.shape[1:])
            for i in hit:
                p = patches[i]
                idx = (p.pos,) if p.head is None else (p.pos, p.head)
                act[(i, slice(None), *idx)] = new[(slice(None), *idx)]
            return act.view(n * batch, *act.shape[2:])

        hooks.append((name, hook))
    return model.run_with_hooks(tokens.repeat(n, 1), fwd_hooks=hooks)


# ----- stateful models (fsm_probe.models.protocol) -----

_RNN_STATES = {"hidden": ("h",), "cell": ("c",), "state": ("h", "c")}


def _patch_sites(model: nn.Module, site: str, patch: Patch) -> tuple[str, ...]:
    """The state hooks a patch replaces: an RNN site (`hidden` = `hook_h`, `cell` = `hook_c`,
    `state` = both, as causal tracing restores it) in each of its layers, else the whole state."""
    if site not in _RNN_STATES:
        return state_sites(model)
    return tuple(f"layers.{li}.hook_{x}" for li in patch.layers for x in _RNN_STATES[site])


def _state_patched_logits(
    model: nn.Module, tokens: Tensor, base: dict[str, Any], src: dict[str, Any], site: str,
    patches: list[Patch],
) -> Tensor:
    """Runs in which each patch's state written at step `p.pos` (a token; an RMT's segment) is
    the source's (only vector `p.head` of it when set), patch-major.

    Logits before the first step a patch changes are the base run's; the rest is one stacked
    forward restarted from the cached state: before the earliest patched step `t0` when a step's
    readout reads its own state (an RNN), else after `t0`, from its state with its patches
    applied (an RMT's memory). Hooks swap in the source state at the later patched steps.
    """
    n, batch = len(patches), tokens.shape[0]
    per_token = steps_per_token(model)
    r = min(p.pos for p in patches) + (0 if per_token else 1)
    start = r * (state_segment_length(model) or 1)
    logits = base["logits"].repeat(n, 1, 1)
    if start >= tokens.shape[1]:
        return logits
    hit = [set(_patch_sites(model, site, p)) & set(src) for p in patches]

    def patched(value: Tensor, p: Patch, new: Tensor) -> Tensor:
        if p.head is None:
            return new
        value = value.clone()
        value[:, p.head] = new[:, p.head]
        return value

    init = None
    if r:
        init = {
            name: torch.cat([
                patched(base[name][:, r - 1], p, src[name][:, r - 1])
                if p.pos == r - 1 and name in hit[i] else base[name][:, r - 1]
                for i, p in enumerate(patches)
            ])
            for name in state_sites(model)
        }
    hooks = []
    if base.get("_embed") is not None:
        emb = base["_embed"][:, r:]
        emb = emb.repeat(n, *([1] * (emb.ndim - 1)))
        hooks.append(("hook_embed", (lambda act, hook: emb) if per_token else (lambda act, hook: emb[:, hook.segment])))
    for name in sorted(set().union(*hit), key=list(model.hook_dict).index):
        by_step: dict[int, list[int]] = {}
        for i, p in enumerate(patches):
            if name in hit[i] and p.pos >= r:
                by_step.setdefault(p.pos - r, []).append(i)

        def swap(act: Tensor, hook: Any, by_step: dict = by_step, new: Tensor = src[name]) -> Tensor | None:
            rows = by_step.get(hook.pos)
            if rows is None:
                return None
            act = act.clone().view(n, batch, *act.shape[1:])
            if all(patches[i].head is None for i in rows):
                act[rows] = new[:, r + hook.pos]
            else:
                for i in rows:
                    act[i] = patched(act[i], patches[i], new[:, r + hook.pos])
            return act.view(n * batch, *act.shape[2:])

        if by_step:
            hooks.append((name, swap))
    stepwise = {"stepwise": True} if per_token else {}
    with model.hooks(fwd_hooks=hooks):
        logits[:, start:] = model(tokens[:, start:].repeat(n, 1), state=init, **stepwise)
    return logits


# ----- driver -----


class Runner:
    """Base and source runs of one model and the metric of batches of patched runs.

    Transformers use `TransformerEngine` when it reproduces the bridge's logits (checked on the
    first run), else the bridge's hook points; stateful models (RNNs, the RMT) restart from a
    cached state and use their state hook points.
    """

    def __init__(self, model: nn.Module, engine: str = "auto") -> None:
        if engine not in ("auto", "fast", "hooks"):
            raise InputError(f"engine must be auto, fast or hooks, got {engine!r}")
        self.model = model
        self.cfg = model_config(model)
        self.mode = engine
        self.engine: TransformerEngine | None = None
        self.stateful = is_stateful(model)
        if not self.stateful and engine != "hooks":
            try:
                self.engine = TransformerEngine(model)
            except InputError:
                if engine == "fast":
                    raise
        self.checked = False

    def run(self, tokens: Tensor, resid0: Tensor | None = None, embed: Tensor | None = None) -> dict[str, Any]:
        """Cached activations and logits of `tokens` (kept as `"_tokens"`: a patched run of this
        base replays them); `resid0`/`embed` replace the Transformer's
        `blocks.0.hook_resid_pre` / the RNN's `hook_embed` (RMT: `hook_embed` stacked per
        segment, `[batch, n_segments, S, d]`)."""
        return {**self._run(tokens, resid0, embed), "_tokens": tokens}

    def _run(self, tokens: Tensor, resid0: Tensor | None, embed: Tensor | None) -> dict[str, Any]:
        model = self.model
        if self.stateful:
            per_token = steps_per_token(model)
            replace = (lambda act, hook: embed) if per_token else (lambda act, hook: embed[:, hook.segment])
            hooks = [] if embed is None else [("hook_embed", replace)]
            stepwise = {"stepwise": True} if per_token else {}
            with model.hooks(fwd_hooks=hooks):
                logits, cache = model.run_with_cache(tokens, names_filter=list(state_sites(model)), **stepwise)
            return {**cache.cache_dict, "logits": logits, "_embed": embed}
        if self.engine is not None:
            r0 = TransformerEngine.resid0(model, tokens) if resid0 is None else resid0
            out = self.engine.full(r0)
            if not self.checked and resid0 is None:
                self.checked = True
                if not torch.allclose(out["logits"], model(tokens), atol=1e-4, rtol=1e-4):
                    if self.mode == "fast":
                        raise InputError("fast patching does not reproduce this model's logits")
                    self.engine = None
                    return self._run(tokens, None, None)
            return out
        hooks = [] if resid0 is None else [("blocks.0.hook_resid_pre", lambda act, hook: resid0)]
        with model.hooks(fwd_hooks=hooks):
            logits, cache = model.run_with_cache(tokens)
        return {**cache.cache_dict, "logits": logits, "_resid0": resid0}

    def evaluate(
        self, base: dict[str, Any], src: dict[str, Any], sweep: Sweep, metric: Metric,
        batch_patches: int | None, *, scattered: bool = False,
    ) -> Tensor:
        """Metric of every patched run of `sweep`, shaped `sweep.shape`: the base run's input
        (its tokens, and its replaced embedding if any) with one cell of `src` patched in.
        `scattered`: a few cells spread over layers and positions (a shortlist), grouped by
        `grouping.scattered_chunks`'s cost model instead of the sweep's position spans."""
        tokens = base["_tokens"]
        if src["_tokens"].shape != tokens.shape:
            raise InputError(
                f"base and source runs need one shape, got {tuple(tokens.shape)} and "
                f"{tuple(src['_tokens'].shape)}"
            )
        batch, n_pos = tokens.shape
        limit = batch_patches or auto_patches(self.model, self.cfg, batch, n_pos)
        fast = self.engine is not None
        if any(p.site not in (None, sweep.site) for p in sweep.patches) and (self.stateful or not fast):
            raise InputError("patches at several sites in one sweep need the native Transformer engine")
        causal = fast and self.engine.causal
        if scattered and causal:
            chunks = scattered_chunks(sweep.patches, batch, n_pos, limit, self.cfg.n_layers)
        else:
            span = sweep_span(n_pos, batch, max(1, len(sweep.patches) // (n_pos * self.cfg.n_layers))) if causal else n_pos
            chunks = span_chunks(sweep.patches, span, limit, by_layer=fast)
        needed = needed_positions(metric, n_pos) if fast else None
        out = torch.full(sweep.shape, float("nan"))
        for chunk in chunks:
            patches = [sweep.patches[i] for i in chunk]
            if self.stateful:
                logits = _state_patched_logits(self.model, tokens, base, src, sweep.site, patches)
            elif fast:
                logits = self.engine.patched_logits(base, src, sweep.site, patches, needed)
            else:
                logits = _hook_patched_logits(self.model, tokens, base, src, sweep.site, patches)
            for j, i in enumerate(chunk):
                out[sweep.slots[i]] = metric_value(metric, logits[j * batch : (j + 1) * batch])
        return out


_SUBMODULES: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()


def submodules(model: nn.Module) -> list[nn.Module]:
    """`list(model.modules())`, walked once per model (about 1 ms on a bridge) and cached by weak
    reference; a module added after the first walk is not seen."""
    refs = _SUBMODULES.get(model)
    mods = [] if refs is None else [r() for r in refs]
    if not mods or any(m is None for m in mods):
        mods = list(model.modules())
        _SUBMODULES[model] = [weakref.ref(m) for m in mods]
    return mods


def has_hooks(model: nn.Module) -> bool:
    """Whether a hook point of `model` has hooks (TransformerLens's `add_hook`, `hooks`,
    `run_with_hooks`; the bridge's own capture hooks on other modules do not count)."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in submodules(model)
        if isinstance(m, HookPoint)
    )


class EvalMode:
    """Context in which the model is in eval mode, restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        # Module.eval() on a TransformerBridge costs tens of ms: skip it when nothing is training.
        self.was = self.model.training
        self.changed = any(m.training for m in submodules(self.model))
        if self.changed:
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.changed:
            self.model.train(self.was)

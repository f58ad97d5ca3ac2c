"""Patched runs: the forward passes behind `fsm_probe.circuits.patching` and `fsm_probe.circuits.tracing`.

A `Runner` caches a model's base and source runs and evaluates a metric on batches of patched runs,
each a copy of the base run with one cell (`Patch`: layers, position, head) taken from the source.
Many patches go into one forward, stacked along the batch, and only what a patch can change is
recomputed: nothing before the patched layer and, under causal attention, nothing before the patched
position (cached keys/values stand in for the prefix). Transformers built by fsm_probe use
`TransformerEngine`, which runs the native model's layers from any stage; other Transformers go
through the bridge's hook points. RNN sweeps restart the recurrence from the cached state before the
patched step, RMT sweeps from the cached memory. Internal to fsm_probe: the public API is in
`fsm_probe.circuits.patching`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import apply_softcap

from ..errors import InputError
from ..models import model_config
from ..models.rmt import MEMORY_HOOK

Metric = Callable[[Tensor], Tensor]
STAGES = ("resid_pre", "head_out", "attn_out", "resid_mid", "mlp_out", "resid_post")
_HOOK_NAMES = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "head_out": "attn.hook_z",
}
_ROW_BUDGET = 2**25
# With fewer token rows (sequences x positions) than this per stacked forward the per-call
# overhead dominates: patches at nearby positions are then grouped (recomputing a slightly longer
# suffix) to cut the number of calls.
_MIN_TOKEN_ROWS = 2048


@dataclass(frozen=True)
class Patch:
    """One patched cell: the source activation replaces the base one at `pos` in each of
    `layers` (several for a tracing window), for one head (or RMT memory vector) if `head` is
    set."""

    layers: tuple[int, ...]
    pos: int
    head: int | None = None


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


def _chunks(patches: list[Patch], span: int, limit: int, by_layer: bool) -> Iterator[list[int]]:
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


# ----- Transformer engine -----


def _plain(module: nn.Module) -> nn.Module:
    """The plain torch layer (Linear, Embedding) a bridge component wraps, else the component."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, (nn.Linear, nn.Embedding)) else module


def _norm(module: nn.Module, fused: bool = False) -> Callable[[Tensor], Tensor]:
    """The bridge's LayerNorm/RMSNorm without its hook dispatch. By default in the bridge's own
    operations: `F.layer_norm`'s rounding depends on the batch shape, and with these a patch that
    changes nothing reproduces the unpatched run bit for bit. `fused` takes the torch module's
    fused kernel (faster, equal to about 1e-7)."""
    inner = getattr(module, "original_component", None)
    cfg = getattr(module, "config", None)
    if fused and isinstance(inner, (nn.LayerNorm, nn.RMSNorm)):
        return inner
    if (
        not isinstance(getattr(inner, "weight", None), Tensor)
        or getattr(module, "use_native_layernorm_autograd", True)
        or getattr(cfg, "layer_norm_folding", False)
        or module.uses_weight_offset
    ):
        return module
    rms, eps = module.uses_rms_norm, getattr(cfg, "eps", 1e-5)
    weight, bias = inner.weight, None if rms else getattr(inner, "bias", None)

    def norm(x: Tensor) -> Tensor:
        if x.dtype not in (torch.float32, torch.float64):
            return module(x)
        if not rms:
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight
        return x if bias is None else x + bias

    return norm


def _plain_mlp(mlp: nn.Module) -> Callable[[Tensor], Tensor]:
    inner = getattr(mlp, "original_component", None)
    if type(inner).__name__ != "NativeMLP" or getattr(inner, "ln", None) is not None:
        return mlp
    fc_in, fc_out, act = _plain(inner.fc_in), _plain(inner.fc_out), inner.act
    return lambda x: fc_out(act(fc_in(x)))


def _fused_qkv(attn: nn.Module) -> tuple[Tensor, Tensor | None]:
    """q, k and v projections stacked into one weight (and bias), detached from the model."""
    layers = [_plain(getattr(attn, name)) for name in "qkv"]
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in layers])
        biases = [layer.bias for layer in layers]
        if all(b is None for b in biases):
            return weight, None
        bias = torch.cat([torch.zeros(layer.out_features, device=weight.device, dtype=weight.dtype)
                          if b is None else b for layer, b in zip(layers, biases, strict=True)])
    return weight, bias


class TransformerEngine:
    """Forward passes of a natively built TransformerBridge that start anywhere inside it.

    It reads the q/k/v weights when built (build one per call, not across training steps) and
    calls the torch layers directly, so it refuses a model with hooks, which it would skip.
    """

    def __init__(self, model: nn.Module, fused_norm: bool = False) -> None:
        net = getattr(model, "original_model", None)
        if net is None or not hasattr(net, "layers") or not hasattr(net, "ln_out"):
            raise InputError("fast patching needs a Transformer built by fsm_probe (boot_native)")
        if has_hooks(model):
            raise InputError(
                "the model has hooks attached, which the fast Transformer engine would skip; "
                "remove them first (model.reset_hooks())"
            )
        self.model = model
        self.net = net
        self.layers = list(net.layers)
        self.n_layers = len(self.layers)
        self.attn_only = not hasattr(self.layers[0], "mlp")
        self.causal = all(blk.attn.causal for blk in self.layers)
        # The torch modules inside the bridge's wrappers compute the same functions without the
        # per-call hook dispatch, which dominates at these sizes; q, k and v become one matmul.
        self.ln1 = [_norm(blk.ln1, fused_norm) for blk in self.layers]
        self.ln2 = [_norm(blk.ln2, fused_norm) for blk in self.layers] if not self.attn_only else []
        self.mlp = [_plain_mlp(blk.mlp) for blk in self.layers] if not self.attn_only else []
        self.qkv = [_fused_qkv(blk.attn) for blk in self.layers]
        self.o = [_plain(blk.attn.o) for blk in self.layers]
        self.ln_out, self.head = _norm(net.ln_out, fused_norm), _plain(net.head)

    @staticmethod
    def resid0(model: nn.Module, tokens: Tensor) -> Tensor:
        """`blocks.0.hook_resid_pre`: token (+ learned position) embedding, as the native model
        computes it, without running the blocks."""
        net = getattr(model, "original_model", None)
        if net is None or not hasattr(net, "tok_embed"):
            _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
            return cache["blocks.0.hook_resid_pre"]
        if tokens.shape[1] > net.cfg.n_ctx:
            raise InputError(f"input length {tokens.shape[1]} exceeds n_ctx={net.cfg.n_ctx}")
        x = _plain(net.tok_embed)(tokens)
        pos = None if net.pos is None else _plain(net.pos)
        if isinstance(pos, nn.Embedding):
            x = x + pos.weight[: tokens.shape[1]]
        elif pos is not None:
            x = x + pos(torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1))
        return x

    def _qkv(self, li: int, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.layers[li].attn
        n, s, _ = h.shape
        weight, bias = self.qkv[li]
        d_q, d_kv = attn.n_heads * attn.d_head, attn.n_kv_heads * attn.d_head
        q, k, v = F.linear(h, weight, bias).split((d_q, d_kv, d_kv), dim=-1)
        q = q.view(n, s, attn.n_heads, attn.d_head).transpose(1, 2)
        k = k.view(n, s, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        v = v.view(n, s, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        if attn.rotary is not None:
            q, k = attn.rotary.apply_rope(q, k, position_ids=positions[None].expand(n, -1))
        return q, k, v

    def _attend(self, li: int, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor) -> Tensor:
        attn = self.layers[li].attn
        if attn.kv_repeats > 1:
            k = k.repeat_interleave(attn.kv_repeats, dim=1)
            v = v.repeat_interleave(attn.kv_repeats, dim=1)
        scores = apply_softcap(torch.matmul(q, k.transpose(-2, -1)) / attn.scale, attn.attn_scores_soft_cap)
        if attn.causal:
            mask = torch.arange(k.shape[2], device=q.device)[None, :] > qpos[:, None]
            pattern = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        else:
            pattern = F.softmax(scores, dim=-1)
        return torch.matmul(pattern, v).transpose(1, 2)

    def _o(self, li: int, z: Tensor) -> Tensor:
        return self.o[li](z.reshape(*z.shape[:2], -1))

    def _unembed(self, x: Tensor) -> Tensor:
        return apply_softcap(self.head(self.ln_out(x)), self.net.output_logits_soft_cap)

    def full(self, resid0: Tensor, needed: list[int] | None = None, grad: bool = False) -> dict[str, Any]:
        """Every stage of every layer for the run whose `blocks.0.hook_resid_pre` is `resid0`.

        With `needed` (the logit positions a metric reads), the last layer attends and runs its
        MLP only for those queries: its post-attention stages hold just those positions
        (`run["cols"]`) and the other logits are NaN. `grad` builds the autograd graph from a
        fresh leaf `resid0`, so the metric can be differentiated with respect to every stage.
        """
        batch, n_pos = resid0.shape[:2]
        pos = torch.arange(n_pos, device=resid0.device)
        cols = pos if needed is None else torch.tensor(needed, dtype=torch.long, device=resid0.device)
        run: dict[str, Any] = {s: [] for s in (*STAGES, "k", "v")}
        x = resid0.detach().requires_grad_(True) if grad else resid0
        for li in range(self.n_layers):
            run["resid_pre"].append(x)
            q, k, v = self._qkv(li, self.ln1[li](x), pos)
            run["k"].append(k)
            run["v"].append(v)
            qpos = pos
            if needed is not None and li == self.n_layers - 1:
                q, x, qpos = q[:, :, cols], x[:, cols], cols
            z = self._attend(li, q, k, v, qpos)
            a = self._o(li, z)
            mid = x + a
            run["head_out"].append(z)
            run["attn_out"].append(a)
            run["resid_mid"].append(mid)
            if self.attn_only:
                x = mid
            else:
                m = self.mlp[li](self.ln2[li](mid))
                run["mlp_out"].append(m)
                x = mid + m
            run["resid_post"].append(x)
        out = self._unembed(x)
        if needed is not None:
            out = out.new_full((batch, n_pos, out.shape[-1]), float("nan")).index_copy(1, cols, out)
        run["logits"] = out
        run["cols"] = cols
        return run

    def patched_logits(
        self,
        base: dict[str, Any],
        src: dict[str, Any],
        site: str,
        patches: list[Patch],
        needed: list[int] | None,
    ) -> Tensor:
        """Logits `[n_patches * batch, pos, vocab]` of every patched run, patch-major."""
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
        layer_hit = torch.zeros(n, self.n_layers, dtype=torch.bool, device=dev)
        heads = torch.zeros(n, dtype=torch.long, device=dev)
        for i, p in enumerate(patches):
            col_pos[i, p.pos - s] = True
            layer_hit[i, list(p.layers)] = True
            heads[i] = 0 if p.head is None else p.head

        def expand(t: Tensor, keep: Tensor | None) -> Tensor:
            t = t[:, s:] if keep is None else t[:, s:][:, keep]
            return t.repeat(n, *([1] * (t.ndim - 1)))

        def patch(li: int, stage: str, val: Tensor, keep: Tensor | None) -> Tensor:
            if stage != site or not bool(layer_hit[:, li].any()):
                return val
            mask = (col_pos if keep is None else col_pos[:, keep]) & layer_hit[:, li, None]
            new = src[stage][li][:, s:] if keep is None else src[stage][li][:, s:][:, keep]
            shaped = val.view(n, batch, *val.shape[1:])
            if stage == "head_out":
                head_mask = F.one_hot(heads, self.layers[li].attn.n_heads).bool()
                m = (mask[:, :, None] & head_mask[:, None, :])[:, None, :, :, None]
            else:
                m = mask[:, None, :, None]
            return torch.where(m, new[None], shaped).view(val.shape)

        entry = STAGES.index(site)
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
                    q, k, v = self._qkv(li, self.ln1[li](x), suffix)
                    if s:
                        k = torch.cat([base["k"][li][:, :, :s].repeat(n, 1, 1, 1), k], dim=2)
                        v = torch.cat([base["v"][li][:, :, :s].repeat(n, 1, 1, 1), v], dim=2)
                    z = self._attend(li, q if keep is None else q[:, :, keep], k, v, qpos)
                z = patch(li, "head_out", z, keep)
            if skip <= 2:
                a = expand(base["attn_out"][li], keep) if skip == 2 else self._o(li, z)
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
        out = self._unembed(x)
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
            name = f"blocks.{li}.hook_attn_out"
            new = src[f"blocks.{li}.hook_resid_mid"] - base[f"blocks.{li}.hook_resid_pre"]
        else:
            name = f"blocks.{li}.{_HOOK_NAMES[site]}"
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


# ----- RNN engine -----


def _rnn_patched_logits(
    model: nn.Module, tokens: Tensor, base: dict[str, Any], src: dict[str, Any], site: str,
    patches: list[Patch],
) -> Tensor:
    """Patched runs restarted from the cached state just before the earliest patched step.

    `site` is `hidden` (`hook_h`), `cell` (`hook_c`) or `state` (every state of the layer: `h`,
    and `c` on an LSTM, as causal tracing restores it)."""
    n = len(patches)
    batch = tokens.shape[0]
    t0 = min(p.pos for p in patches)
    states = {"hidden": ("h",), "cell": ("c",), "state": ("h", "c")}[site]
    init = {name: base[name][:, t0 - 1].repeat(n, 1) for name in model.state_names} if t0 else None
    hooks = []
    if base.get("_embed") is not None:
        emb = base["_embed"][:, t0:].repeat(n, 1, 1)
        hooks.append(("hook_embed", lambda act, hook: emb))
    layers = sorted({li for p in patches for li in p.layers})
    for li, name in [(li, f"layers.{li}.hook_{x}") for li in layers for x in states]:
        if name not in src:
            continue
        by_step: dict[int, list[int]] = {}
        for i, p in enumerate(patches):
            if li in p.layers:
                by_step.setdefault(p.pos - t0, []).append(i)

        def hook(act: Tensor, hook: Any, by_step: dict = by_step, new: Tensor = src[name]) -> Tensor | None:
            rows = by_step.get(hook.pos)
            if rows is None:
                return None
            act = act.clone().view(n, batch, -1)
            act[rows] = new[:, t0 + hook.pos]
            return act.view(n * batch, -1)

        hooks.append((name, hook))
    with model.hooks(fwd_hooks=hooks):
        out = model(tokens[:, t0:].repeat(n, 1), initial_state=init, stepwise=True)
    return torch.cat([base["logits"][:, :t0].repeat(n, 1, 1), out], dim=1)


def _state_hooks(model: nn.Module) -> list[str]:
    return [name for name in model.hook_dict if name.endswith(("hook_h", "hook_c"))]


# ----- RMT engine -----


def _rmt_patched_logits(
    model: nn.Module, tokens: Tensor, base: dict[str, Any], src: dict[str, Any], patches: list[Patch],
) -> Tensor:
    """Runs whose memory written by segment `p.pos` is the source's (only vector `p.head` of it
    when set), patch-major.

    Logits up to the end of the earliest patched segment `t0` are the base run's; the rest is one
    stacked forward from `t0`'s written memory (the source's for patches at `t0`), with
    `hook_memory` swapping in the source memory of later patched segments.
    """
    n, batch = len(patches), tokens.shape[0]
    S = model_config(model).segment_length
    t0 = min(p.pos for p in patches)
    start = (t0 + 1) * S
    logits = base["logits"].repeat(n, 1, 1)
    if start >= tokens.shape[1]:
        return logits
    base_mem, src_mem = base[MEMORY_HOOK], src[MEMORY_HOOK]

    def patched(mem: Tensor, p: Patch, seg: int) -> Tensor:
        if p.head is None:
            return src_mem[:, seg]
        mem = mem.clone()
        mem[:, p.head] = src_mem[:, seg, p.head]
        return mem

    memory = torch.cat([patched(base_mem[:, t0], p, t0) if p.pos == t0 else base_mem[:, t0] for p in patches])
    by_segment: dict[int, list[int]] = {}
    for i, p in enumerate(patches):
        if p.pos > t0:
            by_segment.setdefault(p.pos - t0 - 1, []).append(i)

    def swap(act: Tensor, hook: Any) -> Tensor | None:
        rows = by_segment.get(hook.pos)
        if rows is None:
            return None
        act = act.clone().view(n, batch, *act.shape[1:])
        for i in rows:
            act[i] = patched(act[i], patches[i], t0 + 1 + hook.pos)
        return act.view(n * batch, *act.shape[2:])

    hooks = [(MEMORY_HOOK, swap)] if by_segment else []
    if base.get("_embed") is not None:
        emb = base["_embed"][:, t0 + 1 :].repeat(n, 1, 1, 1)
        hooks.append(("hook_embed", lambda act, hook: emb[:, hook.segment]))
    with model.hooks(fwd_hooks=hooks):
        logits[:, start:] = model(tokens[:, start:].repeat(n, 1), memory=memory)
    return logits


# ----- driver -----


def _auto_patches(cfg: Any, batch: int, n_pos: int) -> int:
    d = cfg.d_hidden
    mlp = 0 if cfg.is_rnn else (cfg.d_mlp if cfg.d_mlp is not None else 4 * d)
    attn = 0 if cfg.is_rnn else 2 * cfg.n_heads * n_pos
    return max(1, _ROW_BUDGET // max(1, batch * n_pos * (8 * d + mlp + attn)))


def _span(n_pos: int, batch: int, per_pos: int) -> int:
    """Positions grouped into one stacked forward: at least 1/16 of the sequence, more when the
    rows of one position's patches are too few to pay for the call."""
    return max(math.ceil(n_pos / 16), min(n_pos, math.ceil(_MIN_TOKEN_ROWS / (batch * n_pos * per_pos))))


class Runner:
    """Base and source runs of one model and the metric of batches of patched runs.

    Transformers use `TransformerEngine` when it reproduces the bridge's logits (checked on the
    first run), else the bridge's hook points; RNNs use their per-step hook points.
    """

    def __init__(self, model: nn.Module, engine: str = "auto") -> None:
        if engine not in ("auto", "fast", "hooks"):
            raise InputError(f"engine must be auto, fast or hooks, got {engine!r}")
        self.model = model
        self.cfg = model_config(model)
        self.mode = engine
        self.engine: TransformerEngine | None = None
        self.rmt = self.cfg.arch == "rmt"
        if not self.cfg.is_rnn and not self.rmt and engine != "hooks":
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
        if self.rmt:
            hooks = [] if embed is None else [("hook_embed", lambda act, hook: embed[:, hook.segment])]
            with model.hooks(fwd_hooks=hooks):
                logits, cache = model.run_with_cache(tokens, names_filter=MEMORY_HOOK)
            return {MEMORY_HOOK: cache[MEMORY_HOOK], "logits": logits, "_embed": embed}
        if self.cfg.is_rnn:
            hooks = [] if embed is None else [("hook_embed", lambda act, hook: embed)]
            with model.hooks(fwd_hooks=hooks):
                logits, cache = model.run_with_cache(tokens, names_filter=_state_hooks(model), stepwise=True)
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
        batch_patches: int | None,
    ) -> Tensor:
        """Metric of every patched run of `sweep`, shaped `sweep.shape`: the base run's input
        (its tokens, and its replaced embedding if any) with one cell of `src` patched in."""
        tokens = base["_tokens"]
        if src["_tokens"].shape != tokens.shape:
            raise InputError(
                f"base and source runs need one shape, got {tuple(tokens.shape)} and "
                f"{tuple(src['_tokens'].shape)}"
            )
        batch, n_pos = tokens.shape
        limit = batch_patches or _auto_patches(self.cfg, batch, n_pos)
        fast = self.engine is not None
        span = n_pos
        if fast and self.engine.causal:
            span = _span(n_pos, batch, max(1, len(sweep.patches) // (n_pos * self.cfg.n_layers)))
        needed = needed_positions(metric, n_pos) if fast else None
        out = torch.full(sweep.shape, float("nan"))
        for chunk in _chunks(sweep.patches, span, limit, by_layer=fast):
            patches = [sweep.patches[i] for i in chunk]
            if self.rmt:
                logits = _rmt_patched_logits(self.model, tokens, base, src, patches)
            elif self.cfg.is_rnn:
                logits = _rnn_patched_logits(self.model, tokens, base, src, sweep.site, patches)
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

"""The one place that reads TransformerLens-4 bridge internals.

A `TransformerBridge` built by `boot_native` wraps plain torch layers (`original_model`:
`tok_embed`, `pos`, `layers[i].ln1/attn/ln2/mlp`, `ln_out`, `head`). Two ways to run them:

- `NativeTransformer`: the plain layers without the bridge's hook dispatch, bit-exact with the
  bridge (its norms in the bridge's own operations), from any stage (`full`, the stage
  functions) and one position at a time over a key/value cache (`step`). `step` fires no hook;
  the stage functions fall back to a bridge norm where only it is bit-exact (RMSNorm), so a
  caller that must not skip hooks refuses a hooked model (the patching engine does). Used by
  the fast patching engine (`fsm_probe.circuits.engine`) and the scratchpad's generation.
- `run_blocks`: the bridge's own components on a residual stream built outside
  it (every hook point fires), for wrappers that feed the bridge vectors of their own: the RMT's
  memory slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.utilities.activation_functions import apply_softcap

from ..errors import InputError

STAGES = ("resid_pre", "head_out", "attn_out", "resid_mid", "mlp_out", "resid_post")


def plain(module: nn.Module) -> nn.Module:
    """The plain torch layer (Linear, Embedding) a bridge component wraps, else the component."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, (nn.Linear, nn.Embedding)) else module


def norm_function(module: nn.Module, *, fused: bool = False) -> Callable[[Tensor], Tensor]:
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


def hook_free_norm(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """The bridge's LayerNorm/RMSNorm (with or without weights, or none) as a formula that fires
    no hook point, for steps that must not reach the user's hooks."""
    inner = getattr(module, "original_component", None)
    if inner is None or isinstance(inner, nn.Identity):
        return lambda x: x
    rms, eps = module.uses_rms_norm, getattr(getattr(module, "config", None), "eps", 1e-5)
    weight = inner.weight if isinstance(getattr(inner, "weight", None), Tensor) else None
    bias = None if rms or not isinstance(getattr(inner, "bias", None), Tensor) else inner.bias

    def norm(x: Tensor) -> Tensor:
        if not rms:
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if weight is not None:
            x = x * weight
        return x if bias is None else x + bias

    return norm


def plain_mlp(mlp: nn.Module) -> Callable[[Tensor], Tensor]:
    inner = getattr(mlp, "original_component", None)
    if type(inner).__name__ != "NativeMLP" or getattr(inner, "ln", None) is not None:
        return mlp
    fc_in, fc_out, act = plain(inner.fc_in), plain(inner.fc_out), inner.act
    return lambda x: fc_out(act(fc_in(x)))


def fused_qkv(attn: nn.Module) -> tuple[Tensor, Tensor | None]:
    """q, k and v projections stacked into one weight (and bias), detached from the model."""
    layers = [plain(getattr(attn, name)) for name in "qkv"]
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in layers])
        biases = [layer.bias for layer in layers]
        if all(b is None for b in biases):
            return weight, None
        bias = torch.cat([torch.zeros(layer.out_features, device=weight.device, dtype=weight.dtype)
                          if b is None else b for layer, b in zip(layers, biases, strict=True)])
    return weight, bias


class NativeTransformer:
    """The layers of a natively built `TransformerBridge`, run without its hook dispatch.

    Forward passes that start anywhere inside the model (`full`, the stage functions `qkv`,
    `attend`, `o_proj`, `unembed`) and one-position steps over a key/value cache (`step`). The
    torch modules inside the bridge's wrappers compute the same functions without the per-call
    hook dispatch, which dominates at these sizes; q, k and v become one matmul. It reads the
    q/k/v weights when built: build one per call, not across training steps. No hook fires.
    """

    def __init__(self, model: nn.Module, *, fused_norm: bool = False) -> None:
        net = getattr(model, "original_model", None)
        if net is None or not hasattr(net, "layers") or not hasattr(net, "ln_out"):
            raise InputError("fast patching needs a Transformer built by fsm_probe (boot_native)")
        self.model = model
        self.net = net
        self.layers = list(net.layers)
        self.n_layers = len(self.layers)
        self.attn_only = not hasattr(self.layers[0], "mlp")
        self.causal = all(blk.attn.causal for blk in self.layers)
        self.ln1 = [norm_function(blk.ln1, fused=fused_norm) for blk in self.layers]
        self.ln2 = [norm_function(blk.ln2, fused=fused_norm) for blk in self.layers] if not self.attn_only else []
        self.mlp = [plain_mlp(blk.mlp) for blk in self.layers] if not self.attn_only else []
        self.qkv_weights = [fused_qkv(blk.attn) for blk in self.layers]
        self.o = [plain(blk.attn.o) for blk in self.layers]
        self.ln_out, self.head = norm_function(net.ln_out, fused=fused_norm), plain(net.head)
        self.step_norms = [
            (hook_free_norm(blk.ln1), None if self.attn_only else hook_free_norm(blk.ln2))
            for blk in self.layers
        ]
        self.step_ln_out = hook_free_norm(net.ln_out)

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
        x = plain(net.tok_embed)(tokens)
        pos = None if net.pos is None else plain(net.pos)
        if isinstance(pos, nn.Embedding):
            x = x + pos.weight[: tokens.shape[1]]
        elif pos is not None:
            x = x + pos(torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1))
        return x

    def qkv(self, li: int, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.layers[li].attn
        n, s, _ = h.shape
        weight, bias = self.qkv_weights[li]
        d_q, d_kv = attn.n_heads * attn.d_head, attn.n_kv_heads * attn.d_head
        q, k, v = F.linear(h, weight, bias).split((d_q, d_kv, d_kv), dim=-1)
        q = q.view(n, s, attn.n_heads, attn.d_head).transpose(1, 2)
        k = k.view(n, s, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        v = v.view(n, s, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        if attn.rotary is not None:
            q, k = attn.rotary.apply_rope(q, k, position_ids=positions[None].expand(n, -1))
        return q, k, v

    def attend(self, li: int, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor) -> Tensor:
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

    def o_proj(self, li: int, z: Tensor) -> Tensor:
        return self.o[li](z.reshape(*z.shape[:2], -1))

    def unembed(self, x: Tensor) -> Tensor:
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
            q, k, v = self.qkv(li, self.ln1[li](x), pos)
            run["k"].append(k)
            run["v"].append(v)
            qpos = pos
            if needed is not None and li == self.n_layers - 1:
                q, x, qpos = q[:, :, cols], x[:, cols], cols
            z = self.attend(li, q, k, v, qpos)
            a = self.o_proj(li, z)
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
        out = self.unembed(x)
        if needed is not None:
            out = out.new_full((batch, n_pos, out.shape[-1]), float("nan")).index_copy(1, cols, out)
        run["logits"] = out
        run["cols"] = cols
        return run


    def new_cache(self, batch: int, length: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """An empty key/value cache for `step`: per layer `(keys, values)` `[batch, kv_heads,
        length, d_head]`."""
        return [
            tuple(
                torch.zeros(batch, blk.attn.n_kv_heads, length, blk.attn.d_head, device=device)
                for _ in range(2)
            )
            for blk in self.layers
        ]

    def step(self, tokens: Tensor, t: int, cache: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Logits `[batch, vocab]` at position `t` for `tokens` `[batch]` (causal attention),
        writing this position's keys and values into `cache` (filled for positions `< t`)."""
        x = plain(self.net.tok_embed)(tokens)[:, None]
        pos = None if self.net.pos is None else plain(self.net.pos)
        if isinstance(pos, nn.Embedding):
            x = x + pos.weight[t]
        elif pos is not None:
            x = x + pos(tokens.new_full((tokens.shape[0], 1), t))
        qpos = torch.full((1,), t, dtype=torch.long, device=tokens.device)
        for li in range(self.n_layers):
            ln1, ln2 = self.step_norms[li]
            q, k, v = self.qkv(li, ln1(x), qpos)
            keys, values = cache[li]
            keys[:, :, t : t + 1] = k
            values[:, :, t : t + 1] = v
            z = self.attend(li, q, keys[:, :, : t + 1], values[:, :, : t + 1], qpos)
            x = x + self.o_proj(li, z)
            if not self.attn_only:
                x = x + self.mlp[li](ln2(x))
        return apply_softcap(self.head(self.step_ln_out(x)), self.net.output_logits_soft_cap)[:, 0]


def run_blocks(
    bridge: nn.Module, resid: Tensor, *, attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """The bridge's blocks and final norm on a residual stream `[batch, pos, d]` built outside it
    (every hook point fires): the normalised final stream, before the unembedding."""
    x = resid
    for block in bridge.blocks:
        out = block(x, attention_mask=attention_mask, position_ids=position_ids)
        x = out[0] if isinstance(out, tuple) else out
    return bridge.ln_final(x)

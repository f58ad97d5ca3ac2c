"""`HookedRMT`: a Recurrent Memory Transformer (Bulatov et al. 2022, arXiv 2207.06881).

The input is cut into segments of `segment_length` tokens. Each segment is processed by a
TransformerLens native Transformer (`TransformerBridge.boot_native`, the `transformer` submodule)
on the sequence `[read memory (M) | segment tokens | write memory (M)]`: the M memory vectors are
placed at the start (read) and, as in the paper's decoder variant, again at the end (write). The
final residual stream after `ln_final` at the write slots becomes the next segment's memory;
logits are read at the token positions. Positions restart in every segment, so the position
embeddings (or rotary tables) only ever cover `segment_length + 2M` positions and any input
length runs. Training back-propagates through the recurrence, cut every `bptt_segments`
segments (0 = never); in eval mode gradients (attribution patching) always flow through it.

Hook points (TransformerLens names, no prefix):

- every hook point of the inner Transformer (`hook_embed`, `blocks.{l}.attn.hook_pattern`,
  `blocks.{l}.hook_resid_post`, `ln_final.hook_out`, ...) fires **once per segment** with that
  segment's tensor (`[batch, S + 2M, ...]`), and `hook.segment` is the segment index;
- `hook_memory`: the memory written by segment `s`, `[batch, M, d]`, with `hook.pos = s`
  (like an RNN state: what it returns is what segment `s + 1` reads). The memory before any
  input is `initial_state(batch)["hook_memory"]`.

`run_with_cache` stacks the per-segment values along dim 1: `hook_memory` is
`[batch, n_segments, M, d]`, `blocks.0.attn.hook_pattern` `[batch, n_segments, heads, S+2M,
S+2M]`. A last segment shorter than `segment_length` is padded with token 0 after the real
tokens (masked out of attention when attention is bidirectional; with causal attention the real
tokens never see it), so its write memory is computed over the padded segment; no logit depends
on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import Slice

from ..errors import ConfigError, InputError
from .config import ModelConfig
from .native import run_blocks
from .protocol import State, check_no_legacy, pop_deprecated
from .rnn import names_filter_fn
from .tokens import check_tokens
from .transformer import build_transformer

INNER = "transformer"
MEMORY_HOOK = "hook_memory"


def validate_tokens(tokens: Any, d_vocab: int, device: torch.device) -> Tensor:
    """`tokens` as int64 `[batch, pos]` on `device`, or `InputError`."""
    return check_tokens(tokens, d_vocab).to(device)


class InnerBridgeMixin(HookedRootModule):
    """A `HookedRootModule` wrapping a `TransformerBridge` stored as `self.transformer`.

    Its `hook_dict` holds the wrapper's own hook points and the bridge's, under the bridge's
    (unprefixed) TransformerLens names; bridge aliases such as `blocks.0.hook_resid_post` resolve
    through `mod_dict` and appear in caches next to the canonical name.
    """

    def setup(self) -> None:  # noqa: D102  (see class docstring)
        inner = getattr(self, INNER)
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self.named_modules():
            if name == "" or name == INNER or name.startswith(INNER + "."):
                continue  # bridge components keep their own names (they use `.name`)
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module
        self.aliases: dict[str, list[str]] = {}
        for name, hp in inner.hook_dict.items():
            self.mod_dict[name] = hp
            if hp.name == name:
                self.hook_dict[name] = hp
            else:
                self.aliases.setdefault(hp.name, []).append(name)
        self._inner_hooks = [hp for name, hp in inner.hook_dict.items() if hp.name == name]

    def hooks_active(self) -> bool:
        """Whether any hook point has a torch forward, forward-pre or backward hook."""
        return any(
            hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks
            for hp in self.hook_dict.values()
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """Own parameters plus the bridge's clean TransformerLens names under `transformer.`."""
        out = {} if destination is None else destination
        for name, p in self.named_parameters(recurse=False):
            out[prefix + name] = p if keep_vars else p.detach()
        for name, b in self.named_buffers(recurse=False):
            if name not in self._non_persistent_buffers_set:
                out[prefix + name] = b if keep_vars else b.detach()
        for key, value in getattr(self, INNER).state_dict(keep_vars=keep_vars).items():
            out[f"{prefix}{INNER}.{key}"] = value
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        inner = {k[len(INNER) + 1 :]: v for k, v in state_dict.items() if k.startswith(INNER + ".")}
        own = {k: v for k, v in state_dict.items() if not k.startswith(INNER + ".")}
        expected = set(self.state_dict())
        if strict and set(state_dict) != expected:
            missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if name in own:
                    if own[name].shape != p.shape:
                        raise RuntimeError(f"size mismatch for {name}: {tuple(own[name].shape)} vs {tuple(p.shape)}")
                    p.copy_(own[name])
        return getattr(self, INNER).load_state_dict(inner, strict=strict)

    stacked_cache = True  # values from several firings are stacked on dim 1

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: Any = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        **model_kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Run the model and return `(output, ActivationCache)`.

        A hook point that fires several times (once per segment) is stacked on dim 1.
        Gradients (`incl_bwd`) are not supported.
        """
        if incl_bwd:
            raise NotImplementedError(f"{type(self).__name__}.run_with_cache does not cache gradients")
        wanted = names_filter_fn(names_filter)
        names = [n for n in self.hook_dict if wanted(n) or any(wanted(a) for a in self.aliases.get(n, []))]
        values: dict[str, list[Tensor]] = {n: [] for n in names}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            if isinstance(tensor, Tensor):
                values[hook.name].append(tensor.detach().to(device) if device else tensor.detach())

        with self.hooks([(n, save) for n in names], [], reset_hooks_end, clear_contexts):
            out = self(*model_args, **model_kwargs)
        cache: dict[str, Tensor] = {}
        for name, vals in values.items():
            if not vals:
                continue
            value = torch.stack(vals, dim=1) if self.stacked_cache else vals[-1]
            if pos_slice is not None:
                value = Slice.unwrap(pos_slice).apply(value, dim=1)
            if remove_batch_dim:
                if value.shape[0] != 1:
                    raise InputError(f"remove_batch_dim needs batch size 1, got {value.shape[0]}")
                value = value[0]
            for key in [name, *self.aliases.get(name, [])]:
                if wanted(key):
                    cache[key] = value
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def add_caching_hooks(self, *args: Any, **kwargs: Any) -> dict:
        """Not supported (hooks firing once per segment would overwrite each other)."""
        raise NotImplementedError("use run_with_cache, which stacks per-segment activations")

    def get_caching_hooks(self, *args: Any, **kwargs: Any) -> tuple[dict, list, list]:
        """Not supported (hooks firing once per segment would overwrite each other)."""
        raise NotImplementedError("use run_with_cache, which stacks per-segment activations")


def inner_transformer_config(cfg: ModelConfig, d_vocab: int, n_ctx: int, **changes: Any) -> ModelConfig:
    """The plain-Transformer `ModelConfig` of a memory model's inner TransformerLens model."""
    return ModelConfig(
        arch="transformer", d_vocab=d_vocab, d_out=cfg.d_out, n_layers=cfg.n_layers,
        d_hidden=cfg.d_hidden, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp,
        normalization=cfg.normalization, positional=cfg.positional, n_ctx=n_ctx,
        attention_dir=changes.pop("attention_dir", cfg.attention_dir), seed=cfg.seed,
    )


class SegmentMemoryMixin(InnerBridgeMixin):
    """A bridge-wrapping model whose state is memory carried from one segment of
    `segment_length` tokens to the next (`models/protocol.py`): `INITIAL` maps each hook of
    `state_sites` to the learned parameter the first segment reads."""

    state_sites: tuple[str, ...] = (MEMORY_HOOK,)
    INITIAL: dict[str, str] = {MEMORY_HOOK: "memory_init"}

    @property
    def state_segment_length(self) -> int:
        """The memory advances once per segment of `segment_length` tokens."""
        return self.cfg.segment_length

    def initial_state(self, batch_size: int) -> State:
        """The memory read by the first segment, `{hook: [batch, slots, d]}`."""
        return {h: getattr(self, self.INITIAL[h]).unsqueeze(0).expand(batch_size, -1, -1) for h in self.state_sites}


class HookedRMT(SegmentMemoryMixin):
    """Recurrent Memory Transformer over a TransformerLens native Transformer; see module doc."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "rmt":
            raise ConfigError(f"HookedRMT needs arch 'rmt', got {cfg.arch!r}")
        self.cfg = cfg
        S, M = cfg.segment_length, cfg.n_memory
        self.inner_config = inner_transformer_config(cfg, cfg.d_vocab, S + 2 * M)
        self.transformer = build_transformer(self.inner_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            # memory enters where ln_final outputs live: unit scale per coordinate
            self.memory_init = nn.Parameter(torch.randn(M, cfg.d_hidden))
        self.hook_memory = HookPoint()
        self.register_buffer("position_ids", torch.arange(S + 2 * M), persistent=False)
        self.setup()

    def n_segments(self, length: int) -> int:
        return self.cfg.n_segments(length)

    def _segment(self, seg: Tensor, memory: Tensor, n_real: int, index: int) -> tuple[Tensor, Tensor]:
        """One segment: logits at the token positions and the written memory."""
        S, M = self.cfg.segment_length, self.cfg.n_memory
        tr = self.transformer
        for hp in self._inner_hooks:
            hp.segment = index
        batch = seg.shape[0]
        x = torch.cat([memory, tr.embed(seg), memory], dim=1)
        pos = self.position_ids.unsqueeze(0).expand(batch, -1)
        if self.cfg.positional != "rotary":
            x = x + tr.pos_embed(pos)
        mask = None
        if n_real < S and self.cfg.attention_dir == "bidirectional":
            mask = torch.ones(batch, S + 2 * M, device=x.device)
            mask[:, M + n_real : M + S] = 0
        h = run_blocks(tr, x, attention_mask=mask, position_ids=pos)
        logits = tr.unembed(h[:, M : M + S])[:, :n_real]
        self.hook_memory.pos = index
        return logits, self.hook_memory(h[:, M + S :])

    def forward(
        self,
        tokens: Tensor | np.ndarray | Sequence,
        *,
        state: State | None = None,
        return_state: bool = False,
        **deprecated: Any,
    ) -> Tensor | tuple[Tensor, State]:
        """Logits `[batch, pos, d_out]` (and the final state `{"hook_memory": [batch, M, d]}` if
        `return_state`).

        `state["hook_memory"]` (`[batch, M, d]` or `[M, d]`) replaces the learned initial memory;
        see `fsm_probe.models.protocol`. `memory=` / `return_memory=` are the deprecated spellings
        (a bare tensor in, a bare tensor out).
        """
        passed, old = pop_deprecated("HookedRMT", deprecated, "memory", "state={'hook_memory': ...}")
        bare, want_bare = pop_deprecated("HookedRMT", deprecated, "return_memory", "return_state=")
        check_no_legacy("HookedRMT.forward", deprecated)
        if passed and old is not None:
            if state is not None:
                raise InputError("pass either state= or the deprecated memory=, not both")
            state = {MEMORY_HOOK: old}
        logits, mem = self._run(tokens, None if state is None else self._state_memory(state))
        if bare and want_bare:
            return logits, mem
        return (logits, {MEMORY_HOOK: mem}) if return_state else logits

    def _state_memory(self, state: State) -> Tensor:
        unknown = set(state) - {MEMORY_HOOK}
        if unknown:
            raise InputError(f"unknown state name(s) {sorted(unknown)}; expected {[MEMORY_HOOK]}")
        return state.get(MEMORY_HOOK)

    def _run(self, tokens: Tensor | np.ndarray | Sequence, memory: Tensor | None) -> tuple[Tensor, Tensor]:
        tokens = validate_tokens(tokens, self.cfg.d_vocab, self.device)
        batch, length = tokens.shape
        M, d, S = self.cfg.n_memory, self.cfg.d_hidden, self.cfg.segment_length
        if memory is None:
            mem = self.initial_state(batch)[MEMORY_HOOK]
        else:
            mem = torch.as_tensor(memory, device=self.device, dtype=self.memory_init.dtype)
            if mem.shape not in {(M, d), (batch, M, d)}:
                raise InputError(f"memory has shape {tuple(mem.shape)}, expected [{batch}, {M}, {d}] or [{M}, {d}]")
            mem = mem.expand(batch, M, d)
        outs = []
        k = self.cfg.bptt_segments
        for s in range(self.n_segments(length)):
            if k and s and s % k == 0 and self.training and torch.is_grad_enabled():
                mem = mem.detach()
            seg = tokens[:, s * S : (s + 1) * S]
            n_real = seg.shape[1]
            if n_real < S:
                seg = torch.cat([seg, seg.new_zeros(batch, S - n_real)], dim=1)
            logits, mem = self._segment(seg, mem, n_real, s)
            outs.append(logits)
        logits = torch.cat(outs, dim=1) if outs else mem.new_zeros(batch, 0, self.cfg.d_out)
        return logits, mem

    def forward_from(self, memory: Tensor, tokens: Any, **kwargs: Any) -> Tensor | tuple[Tensor, State]:
        """Run `tokens` starting from `memory` (e.g. a transplanted one); see `forward`."""
        return self.forward(tokens, state={MEMORY_HOOK: memory}, **kwargs)

    def memory_states(self, tokens: Any) -> Tensor:
        """The memory after each segment, `[batch, n_segments, M, d]` (no gradient)."""
        with torch.no_grad():
            _, cache = self.run_with_cache(tokens, names_filter=MEMORY_HOOK)
        return cache[MEMORY_HOOK]

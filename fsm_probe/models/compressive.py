"""`HookedCompressive`: a small Compressive Transformer (Rae et al. 2019, arXiv 1911.05507).

The input is cut into segments of `segment_length` (S) tokens. Each segment is processed by a
TransformerLens native Transformer (the `transformer` submodule) on the sequence
`[compressed memory (C) | memory (M) | segment tokens (S)]` with causal attention, so every
token attends to both memories and to the earlier tokens of its segment. After the segment:

- its S outputs (the final residual stream after `ln_final`, one vector per token) are appended
  to the FIFO memory, and the S oldest memory slots are evicted;
- the evicted slots are compressed at rate `compression_rate` (c) by a learned strided
  convolution (kernel and stride c, Rae et al.'s "conv" compression function) into S / c
  compressed slots, appended to the compressed memory, which keeps its C newest slots.

One difference from the paper, so that the model is a recurrence like the RMT (and carries a
state through the protocol of `models/protocol.py`): the paper keeps a memory per layer holding
that layer's inputs, read by the same layer, with gradients stopped, so information travels at
most one layer down per segment and a fixed-depth model cannot carry a running state (parity)
across many segments. Here one memory holds the final stream and is read at the input of the
next segment, and training back-propagates through it (cut every `bptt_segments` segments),
with the compression trained by the task loss instead of the paper's auxiliary reconstruction
loss. Memory slots start from learned vectors (`initial_state`), so shapes never change.

Hook points (TransformerLens names, no prefix): every hook point of the inner Transformer fires
once per segment with that segment's tensor (`[batch, C + M + S, ...]`; `hook.segment` is the
segment index); `hook_memory` (`[batch, M, d]`) and `hook_compressed_memory` (`[batch, C, d]`)
fire once per segment with the memories it leaves for the next one (`hook.pos` = segment).
`run_with_cache` stacks them along dim 1 (`[batch, n_segments, M, d]`, ...). A last, shorter
segment is padded with token 0 after its real tokens (causal attention: no real token sees it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import ConfigError, InputError
from .config import ModelConfig
from .native import run_blocks
from .protocol import State
from .rmt import MEMORY_HOOK, SegmentMemoryMixin, inner_transformer_config, validate_tokens
from .transformer import build_transformer

COMPRESSED_HOOK = "hook_compressed_memory"


def check_state(state: State, expected: dict[str, tuple[int, int]], batch: int, device: torch.device,
                dtype: torch.dtype) -> State:
    """`state` with every tensor as `[batch, n, d]` (a `[n, d]` one is broadcast), or `InputError`."""
    unknown = set(state) - set(expected)
    if unknown:
        raise InputError(f"unknown state name(s) {sorted(unknown)}; expected {sorted(expected)}")
    missing = set(expected) - set(state)
    if missing:
        raise InputError(f"state lacks {sorted(missing)}; a state holds {sorted(expected)}")
    out = {}
    for name, (n, d) in expected.items():
        value = torch.as_tensor(state[name], device=device, dtype=dtype)
        if tuple(value.shape) not in {(n, d), (batch, n, d)}:
            raise InputError(f"state[{name!r}] has shape {tuple(value.shape)}, expected [{batch}, {n}, {d}] or [{n}, {d}]")
        out[name] = value.expand(batch, n, d)
    return out


class HookedCompressive(SegmentMemoryMixin):
    """Compressive Transformer over a TransformerLens native Transformer; see module doc."""

    state_sites = (MEMORY_HOOK, COMPRESSED_HOOK)
    INITIAL = {MEMORY_HOOK: "memory_init", COMPRESSED_HOOK: "compressed_init"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "compressive":
            raise ConfigError(f"HookedCompressive needs arch 'compressive', got {cfg.arch!r}")
        self.cfg = cfg
        S, M, C, c, d = cfg.segment_length, cfg.n_memory, cfg.n_compressed, cfg.compression_rate, cfg.d_hidden
        self.inner_config = inner_transformer_config(cfg, cfg.d_vocab, C + M + S)
        self.transformer = build_transformer(self.inner_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.memory_init = nn.Parameter(torch.randn(M, d))
            self.compressed_init = nn.Parameter(torch.randn(C, d))
            conv = nn.Conv1d(d, d, kernel_size=c, stride=c)  # own parameters: the bridge mixin saves those
            self.compress_weight, self.compress_bias = nn.Parameter(conv.weight.detach()), nn.Parameter(conv.bias.detach())
        self.hook_memory = HookPoint()
        self.hook_compressed_memory = HookPoint()
        self.register_buffer("position_ids", torch.arange(C + M + S), persistent=False)
        self.setup()

    def compress(self, slots: Tensor) -> Tensor:
        """Compressed slots `[batch, n / c, d]` from `n` memory slots `[batch, n, d]`: the strided conv."""
        c = self.cfg.compression_rate
        return F.conv1d(slots.transpose(1, 2), self.compress_weight, self.compress_bias, stride=c).transpose(1, 2)

    def _segment(self, seg: Tensor, mem: Tensor, cmem: Tensor, n_real: int, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """One segment: logits at its real tokens, then the memory and compressed memory it leaves."""
        S, C, M = self.cfg.segment_length, self.cfg.n_compressed, self.cfg.n_memory
        tr = self.transformer
        for hp in self._inner_hooks:
            hp.segment = index
        x = torch.cat([cmem, mem, tr.embed(seg)], dim=1)
        pos = self.position_ids.unsqueeze(0).expand(seg.shape[0], -1)
        if self.cfg.positional != "rotary":
            x = x + tr.pos_embed(pos)
        mask = None
        if n_real < S and self.cfg.attention_dir == "bidirectional":
            mask = torch.ones(seg.shape[0], C + M + S, device=x.device)
            mask[:, C + M + n_real :] = 0
        out = run_blocks(tr, x, attention_mask=mask, position_ids=pos)[:, C + M :]
        logits = tr.unembed(out)[:, :n_real]
        fifo = torch.cat([mem, out], dim=1)
        evicted, mem = fifo[:, :S], fifo[:, S:]
        compressed = self.compress(evicted)
        cmem = torch.cat([cmem, compressed], dim=1)[:, -C:]
        self.hook_memory.pos = self.hook_compressed_memory.pos = index
        return logits, self.hook_memory(mem), self.hook_compressed_memory(cmem)

    def forward(
        self,
        tokens: Tensor | np.ndarray | Sequence,
        *,
        state: State | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, State]:
        """Logits `[batch, pos, d_out]`, and with `return_state` the memories after the last
        segment (`{"hook_memory": ..., "hook_compressed_memory": ...}`); `state` replaces the
        learned initial memories (see `fsm_probe.models.protocol`)."""
        tokens = validate_tokens(tokens, self.cfg.d_vocab, self.device)
        batch, length = tokens.shape
        cfg = self.cfg
        if state is None:
            state = self.initial_state(batch)
        else:
            shapes = {MEMORY_HOOK: (cfg.n_memory, cfg.d_hidden), COMPRESSED_HOOK: (cfg.n_compressed, cfg.d_hidden)}
            state = check_state(state, shapes, batch, self.device, self.memory_init.dtype)
        mem, cmem = state[MEMORY_HOOK], state[COMPRESSED_HOOK]
        S, k = cfg.segment_length, cfg.bptt_segments
        outs = []
        for s in range(cfg.n_segments(length)):
            if k and s and s % k == 0 and self.training and torch.is_grad_enabled():
                mem, cmem = mem.detach(), cmem.detach()
            seg = tokens[:, s * S : (s + 1) * S]
            n_real = seg.shape[1]
            if n_real < S:
                seg = torch.cat([seg, seg.new_zeros(batch, S - n_real)], dim=1)
            logits, mem, cmem = self._segment(seg, mem, cmem, n_real, s)
            outs.append(logits)
        logits = torch.cat(outs, dim=1) if outs else mem.new_zeros(batch, 0, cfg.d_out)
        return (logits, {MEMORY_HOOK: mem, COMPRESSED_HOOK: cmem}) if return_state else logits

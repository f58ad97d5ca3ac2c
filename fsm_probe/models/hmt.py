"""`HookedHMT`: a small Hierarchical Memory Transformer (He et al. 2024, arXiv 2405.06067).

The input is cut into segments of `segment_length` (S) tokens, and a cache holds the memory
embeddings of the last `n_memory` (N) segments. Per segment:

1. **recall**: a summary embedding queries the cache by cross-attention (one head, scaled
   dot product; the keys get a learned embedding of each entry's age, so recall can prefer
   recent memories) and returns the recalled memory `P`, a weighted sum of the cached entries;
2. the TransformerLens native Transformer (the `transformer` submodule) runs
   `[P | segment tokens | memory token]` with causal attention; logits are read at the tokens;
3. the output at the memory token (after `ln_final`) is the segment's memory embedding, which
   is appended to the cache (the oldest entry is dropped).

One difference from the paper, to keep every logit causal: He et al. summarise the current
segment's first tokens, so the recalled memory prepended to the segment would let a token's
logit depend on later tokens of its segment. Here the summary is the newest cache entry, the
memory token's output of the previous segment (a summary token of what came before), which
queries the whole cache. The cache starts from learned vectors (`initial_state`), so its shape
never changes; training back-propagates through it (cut every `bptt_segments` segments).

Hook points: the inner Transformer's, unprefixed, once per segment (`[batch, S + 2, ...]`,
`hook.segment` = segment); `hook_recall` (`[batch, 1, d]`, the recalled memory `P`),
`hook_recall_pattern` (`[batch, N]`, the recall weights over the cache, oldest first) and
`hook_memory` (`[batch, N, d]`, the cache a segment leaves, newest last), once per segment with
`hook.pos` = segment. `run_with_cache` stacks them along dim 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import ConfigError
from .compressive import check_state
from .config import ModelConfig
from .native import run_blocks
from .protocol import State
from .rmt import MEMORY_HOOK, SegmentMemoryMixin, inner_transformer_config, validate_tokens
from .transformer import build_transformer


class HookedHMT(SegmentMemoryMixin):
    """Hierarchical Memory Transformer over a TransformerLens native Transformer; see module doc."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "hmt":
            raise ConfigError(f"HookedHMT needs arch 'hmt', got {cfg.arch!r}")
        self.cfg = cfg
        S, N, d = cfg.segment_length, cfg.n_memory, cfg.d_hidden
        self.inner_config = inner_transformer_config(cfg, cfg.d_vocab, S + 2)
        self.transformer = build_transformer(self.inner_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.memory_init = nn.Parameter(torch.randn(N, d))
            self.memory_token = nn.Parameter(torch.randn(d))
            self.age_embed = nn.Parameter(torch.randn(N, d) / d**0.5)
            self.W_Q = nn.Parameter(torch.randn(d, d) / d**0.5)  # own parameters: the bridge mixin saves those
            self.W_K = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.hook_recall_pattern = HookPoint()
        self.hook_recall = HookPoint()
        self.hook_memory = HookPoint()
        self.register_buffer("position_ids", torch.arange(S + 2), persistent=False)
        self.setup()

    def recall(self, cache: Tensor) -> Tensor:
        """The recalled memory `[batch, 1, d]`: the newest entry queries the cache."""
        q = cache[:, -1:] @ self.W_Q
        k = (cache + self.age_embed.flip(0)) @ self.W_K  # age_embed[a]: the entry a segments old
        weights = self.hook_recall_pattern(torch.softmax((q @ k.transpose(1, 2))[:, 0] / q.shape[-1] ** 0.5, dim=-1))
        return self.hook_recall(weights.unsqueeze(1) @ cache)

    def _segment(self, seg: Tensor, cache: Tensor, n_real: int, index: int) -> tuple[Tensor, Tensor]:
        """One segment: logits at its real tokens and the cache it leaves."""
        S = self.cfg.segment_length
        tr = self.transformer
        for hp in self._inner_hooks:
            hp.segment = index
        for hp in (self.hook_recall_pattern, self.hook_recall, self.hook_memory):
            hp.pos = index
        batch = seg.shape[0]
        x = torch.cat([self.recall(cache), tr.embed(seg), self.memory_token.expand(batch, 1, -1)], dim=1)
        pos = self.position_ids.unsqueeze(0).expand(batch, -1)
        if self.cfg.positional != "rotary":
            x = x + tr.pos_embed(pos)
        mask = None
        if n_real < S and self.cfg.attention_dir == "bidirectional":
            mask = torch.ones(batch, S + 2, device=x.device)
            mask[:, 1 + n_real : 1 + S] = 0
        h = run_blocks(tr, x, attention_mask=mask, position_ids=pos)
        logits = tr.unembed(h[:, 1 : 1 + S])[:, :n_real]
        return logits, self.hook_memory(torch.cat([cache[:, 1:], h[:, -1:]], dim=1))

    def forward(
        self,
        tokens: Tensor | np.ndarray | Sequence,
        *,
        state: State | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, State]:
        """Logits `[batch, pos, d_out]`, and with `return_state` the cache after the last
        segment (`{"hook_memory": [batch, N, d]}`); `state` replaces the learned initial cache
        (see `fsm_probe.models.protocol`)."""
        tokens = validate_tokens(tokens, self.cfg.d_vocab, self.device)
        batch, length = tokens.shape
        cfg = self.cfg
        if state is None:
            state = self.initial_state(batch)
        else:
            state = check_state(state, {MEMORY_HOOK: (cfg.n_memory, cfg.d_hidden)}, batch, self.device,
                                self.memory_init.dtype)
        cache = state[MEMORY_HOOK]
        S, k = cfg.segment_length, cfg.bptt_segments
        outs = []
        for s in range(cfg.n_segments(length)):
            if k and s and s % k == 0 and self.training and torch.is_grad_enabled():
                cache = cache.detach()
            seg = tokens[:, s * S : (s + 1) * S]
            n_real = seg.shape[1]
            if n_real < S:
                seg = torch.cat([seg, seg.new_zeros(batch, S - n_real)], dim=1)
            logits, cache = self._segment(seg, cache, n_real, s)
            outs.append(logits)
        logits = torch.cat(outs, dim=1) if outs else cache.new_zeros(batch, 0, cfg.d_out)
        return (logits, {MEMORY_HOOK: cache}) if return_state else logits

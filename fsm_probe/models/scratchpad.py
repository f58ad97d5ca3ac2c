"""`HookedScratchpad`: a Transformer that emits the state sequence and reads its own outputs.

After the remedy of Liu et al. 2023 ("Transformers Learn Shortcuts to Automata", arXiv
2210.10749): guide the Transformer to the *autoregressive* solution. At position `t` the model
sees the input symbol `x_t` and the label it emitted at `t - 1` (a start marker at `t = 0`), as
one pair token `x_t * (d_out + 1) + (y_{t-1} + 1)` of a TransformerLens native Transformer
(`transformer` submodule, causal attention). It then only has to learn the transition
`(y_{t-1}, x_t) -> y_t`, which does not depend on the length.

- **Training** (`model.train()`): teacher forcing. `y_{t-1}` is the true label, computed by the
  task's automaton, passed as `forward(tokens, feedback=labels)` (`fsm_probe.training.train`
  does, for every model that declares `feeds_back_outputs`). This is the scratchpad's supervision: the
  automaton is never used at evaluation.
- **Evaluation** (`model.eval()`): `y_{t-1}` is the model's own argmax output at `t - 1`,
  generated one position at a time with a key/value cache (hook-free, using the same weights);
  then, when any hook is attached, one ordinary forward pass over the self-generated pair tokens
  fires every hook point once with full `[batch, pos, ...]` tensors (its logits equal the
  generated ones). Hooks therefore act on that final pass, not on the fed-back labels; to
  intervene on the feedback, pass `feedback=`.

Use `positional="none"` (NoPE) or `"rotary"`: learned positions beyond the training lengths are
untrained. The label fed back is the task's *label*, so the scratchpad is exact when the label
determines the state (parity, cyclic groups, cycle navigation, flip-flop, gridworld); when
several states share a label the Transformer must recover the state from the earlier tokens.

Hook points: the inner Transformer's, unprefixed (`hook_embed` sees the pair-token embedding,
`blocks.{l}.attn.hook_pattern`, ...), and `hook_feedback` (`[batch, pos]`, the label index fed
back at each position, -1 = start).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from ..errors import ConfigError, InputError
from .config import ModelConfig
from .native import NativeTransformer
from .rmt import InnerBridgeMixin, inner_transformer_config, validate_tokens
from .transformer import build_transformer


class HookedScratchpad(InnerBridgeMixin):
    """Autoregressive-state Transformer; see the module docstring."""

    stacked_cache = False
    feeds_back_outputs = True  # its activations follow the labels it emitted

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "scratchpad":
            raise ConfigError(f"HookedScratchpad needs arch 'scratchpad', got {cfg.arch!r}")
        self.cfg = cfg
        self.n_feedback = cfg.d_out + 1
        self.inner_config = inner_transformer_config(
            cfg, cfg.d_vocab * self.n_feedback, cfg.n_ctx, attention_dir="causal"
        )
        self.transformer = build_transformer(self.inner_config)
        self.hook_feedback = HookPoint()
        self.setup()

    # ----- inputs
    def pair_tokens(self, tokens: Tensor, feedback: Tensor) -> Tensor:
        """Pair tokens from inputs `[B, T]` and the labels `[B, T]` emitted at each position."""
        prev = torch.cat([feedback.new_full((feedback.shape[0], 1), -1), feedback[:, :-1]], dim=1)
        prev = self.hook_feedback(prev)
        return tokens * self.n_feedback + prev + 1

    def forward(
        self,
        tokens: Tensor | np.ndarray | Sequence,
        feedback: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Logits `[batch, pos, d_out]`.

        `feedback`: the labels `[batch, pos]` whose shifted copy is fed back (teacher forcing).
        Required in training mode (the task's true labels; `fsm_probe.train` passes them); in eval
        mode the default is the model's own outputs.
        """
        tokens = validate_tokens(tokens, self.cfg.d_vocab, self.device)
        if tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(f"sequence length {tokens.shape[1]} exceeds n_ctx={self.cfg.n_ctx}")
        if feedback is None and self.training:
            raise InputError(
                "a scratchpad model in training mode needs its teacher labels: pass feedback=labels "
                "(the task's true labels; fsm_probe.train does)"
            )
        if feedback is None:
            logits, feedback = self.generate(tokens)
            if not self.hooks_active():
                return logits
        feedback = torch.as_tensor(feedback, device=self.device).long()
        if feedback.shape != tokens.shape:
            raise InputError(f"feedback has shape {tuple(feedback.shape)}, expected {tuple(tokens.shape)}")
        if feedback.numel() and (int(feedback.min()) < 0 or int(feedback.max()) >= self.cfg.d_out):
            raise InputError(f"feedback labels must lie in [0, {self.cfg.d_out})")
        return self.transformer(self.pair_tokens(tokens, feedback))

    # ----- fast autoregressive generation with a key/value cache (no hook fires)
    @torch.no_grad()
    def generate(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Feed back the argmax label at every step: returns (logits, labels), both `[B, T]`-shaped."""
        tokens = validate_tokens(tokens, self.cfg.d_vocab, self.device)
        B, T = tokens.shape
        net = NativeTransformer(self.transformer)
        cache = net.new_cache(B, T, self.device)
        logits_out = torch.empty(B, T, self.cfg.d_out, device=self.device)
        labels = tokens.new_empty(B, T)
        prev = tokens.new_full((B,), -1)
        for t in range(T):
            lg = net.step(tokens[:, t] * self.n_feedback + prev + 1, t, cache)
            logits_out[:, t] = lg
            prev = lg.argmax(-1)
            labels[:, t] = prev
        return logits_out, labels

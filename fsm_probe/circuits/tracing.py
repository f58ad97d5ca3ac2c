"""ROME-style causal tracing (Meng et al. 2022) for fsm_probe Transformers, RNNs and RMTs.

Corrupt some input positions (Gaussian noise on the token embedding, or a symmetric symbol swap),
then restore one clean state at a time and measure how much of the probability of the target
label at the last position comes back. Restorations are batched exactly as in
`fsm_probe.circuits.patching` (both run on `fsm_probe.circuits.engine`). On an RMT the restored state is the
memory each segment writes.
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
from ..models.protocol import state_segment_length
from . import sites as S
from .engine import EvalMode, Patch, Runner, Sweep
from .inputs import probability, symmetric_corruption
from .sites import TRACE_KINDS as KINDS  # noqa: F401  (tracing's old name)
from .sites import check_site


@dataclass(frozen=True)
class TracedState:
    """One restored state: `layer` and `position` (an RMT: layer 0 and the segment), the mean
    p(target) after restoring it (`score`) and its indirect effect (`score - low_score`)."""

    layer: int
    position: int
    score: float
    effect: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"layer": self.layer, "position": self.position, "score": self.score, "effect": self.effect}


@dataclass
class TracingResult:
    """Mean p(target) after each restoration (`scores`, [layer, pos]) and the two baselines.

    Transformer `resid` layer `l` is the residual stream entering block `l` (layer 0 = the
    embedding); RNN `resid` is the recurrent state of layer `l` after step `pos`
    (`layers.{l}.hook_h`, and `layers.{l}.hook_c` with it on an LSTM); RMT `resid` is the memory
    written by each segment (`scores` is [1, segment], `segment_length` is set). `mlp`/`attn`
    are the sublayer outputs. Row `l` restores layers `l - window // 2` to
    `l + (window - 1) // 2` (clipped to the model) together.
    """

    scores: Tensor
    low_score: float
    high_score: float
    kind: str
    window: int
    noise: float | str
    corrupt_positions: tuple[int, ...]
    n_sequences: int
    n_samples: int
    segment_length: int | None = None

    def indirect_effect(self) -> Tensor:
        """p(restored) - p(corrupted) per (layer, position)."""
        return self.scores - self.low_score

    @property
    def total_effect(self) -> float:
        """p(clean) - p(corrupted)."""
        return self.high_score - self.low_score

    def top_cells(self, k: int | None = None) -> list[TracedState]:
        """The `k` states (all by default) whose restoration brings back the most p(target)."""
        effect = self.indirect_effect()
        out = []
        for flat in torch.argsort(-effect.flatten())[:k].tolist():
            li, p = divmod(flat, effect.shape[1])
            out.append(TracedState(li, p, float(self.scores[li, p]), float(effect[li, p])))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "kind": self.kind,
            "window": self.window,
            "noise": self.noise,
            "corrupt_positions": list(self.corrupt_positions),
            "n_sequences": self.n_sequences,
            "n_samples": self.n_samples,
            "scores": self.scores.tolist(),
            "indirect_effect": self.indirect_effect().tolist(),
            "low_score": self.low_score,
            "high_score": self.high_score,
            "segment_length": self.segment_length,
        }


def _window(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2)))


def causal_tracing(
    model: nn.Module,
    tokens: Any,
    target_labels: Any = None,
    *,
    corrupt_positions: Sequence[int] | int = (0,),
    noise: float | str = 3.0,
    kind: str = "resid",
    window: int = 1,
    n_samples: int = 10,
    seed: int = 0,
    automaton: Any = None,
    batch_patches: int | None = None,
    engine: str = "auto",
) -> TracingResult:
    """Indirect effect of every (layer, position) state on p(target label at the last position).

    The corrupted runs are `n_samples` copies of the batch (row `r` is sequence `r % batch`),
    restored from the clean run of the same sequence, and every later step or position reads the
    corrupted input. `noise` is a number or `"symmetric"`:

    - a number `k`: Gaussian noise `k * std * eps` is added to the token embedding at
      `corrupt_positions`, where `std` is the std of all clean `hook_embed` values of the rows,
      `eps = torch.randn(rows, pos, d, generator=torch.Generator().manual_seed(seed))` (an RMT's
      positions padded to whole segments); on a Transformer it is added to
      `blocks.0.hook_resid_pre`, on an RNN or RMT to `hook_embed`;
    - `"symmetric"`: the symbol at the single corrupt position is swapped for one that changes
      the automaton's final label (needs `automaton`; `symmetric_corruption`, one draw per
      sample from `numpy.random.default_rng(seed)`).

    `target_labels` ([batch]) defaults to the model's clean prediction. `engine="hooks"` runs a
    Transformer through its hook points instead of the fast engine (as in `activation_patching`).
    """
    cfg = model_config(model)
    site = S.trace_site(cfg, kind)
    positive_int(window, "window", error=InputError)
    positive_int(n_samples, "n_samples", error=InputError)
    clean = as_tokens(model, tokens)
    batch, n_pos = clean.shape
    positions = (corrupt_positions,) if isinstance(corrupt_positions, int) else tuple(corrupt_positions)
    if not positions or any(not -n_pos <= p < n_pos for p in positions):
        raise InputError(f"corrupt_positions {positions} must be non-empty positions in [0, {n_pos})")
    check_site(cfg, site)  # also refuses the scratchpad
    by_segment = site in S.RMT_SITES
    if site in S.RNN_SITES:
        site = "state"  # hook_h, and hook_c with it on an LSTM: the whole recurrent state

    with EvalMode(model), torch.no_grad():
        runner = Runner(model, engine)
        clean_run = runner.run(clean)
        if target_labels is None:
            target = clean_run["logits"][:, -1].argmax(-1)
        else:
            target = torch.as_tensor(np.asarray(target_labels)).long().reshape(-1)
            if target.numel() != batch:
                raise InputError(f"target_labels needs {batch} labels, got {target.numel()}")
        rows = clean.repeat(n_samples, 1)
        src = runner.run(rows)
        base = _corrupted_run(runner, model, clean, rows, positions, noise, n_samples, seed, automaton)
        metric = probability(target.repeat(n_samples))
        high = float(metric(src["logits"]))
        low = float(metric(base["logits"]))
        if by_segment:
            n_seg = cfg.n_segments(n_pos)
            patches = [Patch((0,), seg) for seg in range(n_seg)]
            sweep = Sweep(site, patches, [(0, seg) for seg in range(n_seg)], (1, n_seg))
        else:
            patches, slots = [], []
            for layer in range(cfg.n_layers):
                for p in range(n_pos):
                    patches.append(Patch(_window(layer, window, cfg.n_layers), p))
                    slots.append((layer, p))
            sweep = Sweep(site, patches, slots, (cfg.n_layers, n_pos))
        scores = runner.evaluate(base, src, sweep, metric, batch_patches)
    return TracingResult(
        scores, low, high, kind, window, noise, tuple(p % n_pos for p in positions), batch, n_samples,
        cfg.segment_length if by_segment else None,
    )


def _corrupted_run(
    runner: Runner, model: nn.Module, clean: Tensor, rows: Tensor, positions: tuple[int, ...],
    noise: float | str, n_samples: int, seed: int, automaton: Any,
) -> dict[str, Any]:
    if noise == "symmetric":
        if automaton is None or len(positions) != 1:
            raise InputError("noise='symmetric' needs an automaton and exactly one corrupt position")
        rng = np.random.default_rng(seed)
        corrupted = np.concatenate(
            [symmetric_corruption(automaton, clean, positions[0], rng) for _ in range(n_samples)]
        )
        return runner.run(as_tokens(model, corrupted))
    if isinstance(noise, str) or not np.isfinite(noise):
        raise InputError(f"noise must be a number or 'symmetric', got {noise!r}")
    cfg = model_config(model)
    noised = S.input_hook(cfg)
    embed_hook = S.hook_name("embed")
    _, cache = model.run_with_cache(rows, names_filter=sorted({embed_hook, noised}))
    embed = cache[embed_hook]
    per_segment = state_segment_length(model) is not None  # [rows, segment, S, d] -> [rows, padded pos, d]
    if per_segment:
        embed = embed.reshape(embed.shape[0], -1, embed.shape[-1])
    std = float(embed[:, : rows.shape[1]].std())
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(embed.shape[1], dtype=torch.bool)
    mask[[p % rows.shape[1] for p in positions]] = True
    eps = torch.randn(embed.shape, generator=gen).to(embed.device)
    delta = float(noise) * std * eps * mask[None, :, None].to(eps.device)
    if per_segment:
        return runner.run(rows, embed=(embed + delta).view(cache[embed_hook].shape))
    if noised == embed_hook:
        return runner.run(rows, embed=cache[embed_hook] + delta)
    return runner.run(rows, resid0=cache[noised] + delta)

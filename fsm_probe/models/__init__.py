"""Hooked models. Every model maps tokens `[batch, pos]` to logits `[batch, pos, n_labels]`.

- `HookedRNN`: vanilla RNN, GRU, LSTM with per-time-step hook points.
- Transformers: TransformerLens 4.x `TransformerBridge` built natively.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .config import ModelConfig
from .rmt import HookedRMT
from .rnn import HookedRNN
from .scratchpad import HookedScratchpad
from .transformer import build_transformer, tl_config_dict

__all__ = [
    "ModelConfig",
    "HookedRNN",
    "HookedRMT",
    "HookedScratchpad",
    "build_model",
    "build_transformer",
    "tl_config_dict",
    "as_tokens",
    "predict_logits",
    "model_config",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the architecture named by `cfg.arch`."""
    if cfg.is_rnn:
        return HookedRNN(cfg)
    if cfg.arch == "rmt":
        return HookedRMT(cfg)
    if cfg.arch == "scratchpad":
        return HookedScratchpad(cfg)
    return build_transformer(cfg)


def model_config(model: nn.Module) -> ModelConfig:
    cfg = getattr(model, "fsm_config", None)
    if not isinstance(cfg, ModelConfig):
        raise InputError("model was not built by fsm_probe (it has no fsm_config)")
    return cfg


def as_tokens(model: nn.Module, tokens: np.ndarray | torch.Tensor | list) -> torch.Tensor:
    """Validate `tokens` for `model` and return an int64 tensor `[batch, pos]`."""
    cfg = model_config(model)
    t = torch.as_tensor(np.asarray(tokens) if isinstance(tokens, list) else tokens)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise InputError(f"tokens must be integers, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise InputError(f"tokens must have shape [batch, pos], got {tuple(t.shape)}")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= cfg.d_vocab):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise InputError(f"token id {bad} is outside the vocabulary [0, {cfg.d_vocab})")
    if not cfg.is_rnn and t.shape[1] > cfg.n_ctx:
        raise InputError(
            f"sequence length {t.shape[1]} exceeds the Transformer's context n_ctx={cfg.n_ctx}"
        )
    return t


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def predict_logits(
    model: nn.Module, tokens: np.ndarray | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Logits `[batch, pos, n_labels]` in eval mode, computed in chunks of `batch_size`."""
    t = as_tokens(model, tokens)
    was_training = model.training
    model.eval()
    try:
        out = [model(t[s]) for s in _chunks(t.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, t.shape[1], model_config(model).d_out)

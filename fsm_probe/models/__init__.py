"""Hooked models. Every model maps tokens `[batch, pos]` to logits `[batch, pos, n_labels]`.

- `HookedRNN`: vanilla RNN, GRU, LSTM, second-order RNN with per-time-step hook points.
- Transformers: TransformerLens 4.x `TransformerBridge` built natively; `native.py` is the one
  reader of its internals (the fast engine, the scratchpad's generation, the RMT's inner call).
- `protocol.py`: the recurrent-state protocol every stateful model follows
  (`model(tokens, state=..., return_state=True)`) and the predicates analyses ask instead of
  the architecture name.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge

from ..errors import InputError
from .compiled_transformer import CompiledCircuit, CompiledTransformer, compile_transformer
from .compressive import HookedCompressive
from .config import ModelConfig
from .hmt import HookedHMT
from .protocol import State, context_limit, is_stateful, state_sites
from .rmt import HookedRMT
from .rnn import HookedRNN
from .scratchpad import HookedScratchpad
from .tokens import check_tokens
from .transformer import build_transformer, tl_config_dict, transformer_config

__all__ = [
    "ModelConfig",
    "HookedRNN",
    "HookedRMT",
    "HookedCompressive",
    "HookedHMT",
    "HookedScratchpad",
    "build_model",
    "build_transformer",
    "tl_config_dict",
    "as_tokens",
    "predict_logits",
    "model_config",
    "compile_transformer",
    "CompiledCircuit",
    "CompiledTransformer",
    "State",
    "is_stateful",
    "state_sites",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the architecture named by `cfg.arch`."""
    if cfg.is_rnn:
        return HookedRNN(cfg)
    if cfg.arch == "rmt":
        return HookedRMT(cfg)
    if cfg.arch == "scratchpad":
        return HookedScratchpad(cfg)
    if cfg.arch == "compressive":
        return HookedCompressive(cfg)
    if cfg.arch == "hmt":
        return HookedHMT(cfg)
    return build_transformer(cfg)


def model_config(model: nn.Module) -> ModelConfig:
    """The `ModelConfig` of any fsm_probe model (its own `cfg`; a Transformer's is kept beside it)."""
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(model, TransformerBridge):
        return transformer_config(model)
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        raise InputError(f"expected a model, got a {type(model).__name__}: pass its .model")
    raise InputError(f"{type(model).__name__} was not built by fsm_probe (fsm_probe.build_model builds one)")


def as_tokens(model: nn.Module, tokens: np.ndarray | torch.Tensor | list) -> torch.Tensor:
    """Validate `tokens` for `model` and return an int64 tensor `[batch, pos]`."""
    cfg = model_config(model)
    return check_tokens(tokens, cfg.d_vocab, n_ctx=context_limit(model))


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def predict_logits(
    model: nn.Module, tokens: np.ndarray | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Logits `[batch, pos, n_labels]` in eval mode, computed in chunks of `batch_size`."""
    t = as_tokens(model, tokens)
    if t.ndim != 2 or t.shape[1] == 0:
        raise InputError(f"predict_logits needs tokens [batch, pos] with pos >= 1, got shape {list(t.shape)}")
    was_training = model.training
    model.eval()
    try:
        out = [model(t[s]) for s in _chunks(t.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, t.shape[1], model_config(model).d_out)

"""The recurrent-state protocol: what the rest of fsm_probe asks a model instead of its arch.

Every model that carries state from step to step (`HookedRNN`: each layer's hidden state, and
its cell state on an LSTM; `HookedRMT`: the memory passed between segments; the memory models
still to come) is called with one spelling:

    logits = model(tokens, state=None)
    logits, final = model(tokens, state=start, return_state=True)

A state is a `State`: a dict from the hook names that hold it (`state_sites(model)`) to tensors
`[batch, ...]` (or one unbatched tensor, broadcast over the batch). Names left out start from
`initial_state(model, batch)`. `final` has every name. What a hook at one of these sites returns
is the state the next step reads, so a state is transplanted either by `state=` or by a hook.
The sites: `layers.{i}.hook_h` (and `layers.{i}.hook_c` on an LSTM) for an RNN, `hook_memory`
(`[batch, M, d]`, written once per segment) for an RMT. The old spellings, `initial_state=` on
the RNN and `memory=` / `return_memory=` on the RMT, work for one release with a
`DeprecationWarning`.

A new stateful model declares, as class attributes or properties: `state_sites` (the hook names),
`initial_state(batch)`, `state_segment_length` (tokens per state update when the state advances
once per segment, None when it advances every token) and, when the readout of its initial state is
a label for the empty prefix, `initial_logits()`. A model that feeds its own outputs back
(the scratchpad) declares `feeds_back_outputs = True`.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from ..errors import InputError

State = dict[str, Tensor]


def state_sites(model: nn.Module) -> tuple[str, ...]:
    """Hook names that hold the state carried between steps; empty for a stateless model."""
    return tuple(getattr(model, "state_sites", ()))


def is_stateful(model: nn.Module) -> bool:
    """Whether `model` carries a state that `state=` / `return_state=` start from and return."""
    return bool(state_sites(model))


def initial_state(model: nn.Module, batch_size: int) -> State:
    """The state before any input, keyed by `state_sites(model)`."""
    if not is_stateful(model):
        raise InputError(f"{type(model).__name__} carries no recurrent state")
    return model.initial_state(batch_size)


def state_segment_length(model: nn.Module) -> int | None:
    """Tokens read per state update when the state advances once per segment (an RMT's memory),
    else None (the state advances every token, or there is none)."""
    return getattr(model, "state_segment_length", None)


def steps_per_token(model: nn.Module) -> bool:
    """Whether the state advances with every token (an RNN), so that each position has a state."""
    return is_stateful(model) and state_segment_length(model) is None


def has_initial_readout(model: nn.Module) -> bool:
    """Whether the initial state has a readout: the model's label for the empty prefix."""
    return callable(getattr(model, "initial_logits", None))


def feeds_back_outputs(model: nn.Module) -> bool:
    """Whether the model reads its own earlier outputs (its activations then follow its labels)."""
    return bool(getattr(model, "feeds_back_outputs", False))


def has_attention(model: nn.Module) -> bool:
    """Whether the model is a Transformer (plain or with a memory), with heads and MLPs."""
    return not steps_per_token(model)


def context_limit(model: nn.Module) -> int | None:
    """The longest input the model accepts (`n_ctx`), None when any length runs through it."""
    from . import model_config  # the package imports this module

    return None if steps_per_token(model) else model_config(model).n_ctx


def pop_deprecated(owner: str, legacy: dict[str, Any], old: str, new: str) -> tuple[bool, Any]:
    """Whether the deprecated keyword `old` was passed (popped from `legacy`), and its value;
    warns that `new` replaces it."""
    if old not in legacy:
        return False, None
    warnings.warn(
        f"{owner}({old}=...) is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning, stacklevel=5,
    )
    return True, legacy.pop(old)


def check_no_legacy(owner: str, legacy: dict[str, Any]) -> None:
    """A `TypeError` like Python's for keywords left over after the deprecated aliases."""
    if legacy:
        raise TypeError(f"{owner}() got unexpected keyword argument(s) {', '.join(sorted(legacy))}")

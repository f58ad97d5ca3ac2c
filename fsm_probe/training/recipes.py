"""Training recipes: the defaults `fsm-probe train` and `fsm_probe.train` use per architecture.

`recipe(arch, task)` returns the `ModelConfig` and `TrainConfig` fields that made each
architecture learn with default flags (measured on the CLI; see DEVELOPERS.md). Every field can
be overridden; `TrainConfig` fields left at `None` are filled from the recipe by `train()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

# ModelConfig fields per architecture (the rest keep the ModelConfig defaults).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"n_layers": 1, "d_hidden": 64},
    "gru": {"n_layers": 1, "d_hidden": 64},
    "lstm": {"n_layers": 1, "d_hidden": 64},
    "second_order": {"n_layers": 1, "d_hidden": 64},
    "transformer": {"n_layers": 2, "d_hidden": 64, "n_heads": 4, "positional": "learned"},
    "rmt": {"n_layers": 2, "d_hidden": 32, "n_heads": 4, "positional": "learned", "segment_length": 2, "n_memory": 1},
    "scratchpad": {"n_layers": 1, "d_hidden": 32, "n_heads": 4, "positional": "none"},
    "compressive": {"n_layers": 2, "d_hidden": 32, "n_heads": 4, "positional": "learned", "segment_length": 2,
                    "n_memory": 2, "n_compressed": 2, "compression_rate": 2},
    "hmt": {"n_layers": 2, "d_hidden": 32, "n_heads": 4, "positional": "learned", "segment_length": 2, "n_memory": 4},
}

# compressive, hmt: the RMT's settings (2 layers, d 32, segments of 2, lr 3e-3) with 2 FIFO + 2
# compressed slots at rate 2 (compressive) and a cache of 4 memory embeddings (hmt). Measured on the
# CLI with default flags (`fsm-probe train --task parity --arch A`, lengths 1:40, 1 thread on the
# shared 2-core machine at load 7-9, so the seconds are 2-3x an idle run's), then `fsm-probe eval`
# (final-position accuracy, 256 sequences):
#   | arch        | steps | seconds | final acc 40 | 100   | 200   | 500   |
#   | compressive | 300   | 305     | 1.000        | 1.000 | 1.000 | 1.000 |
#   | hmt         | 300   | 337     | 1.000        | 1.000 | 1.000 | 1.000 |
# Both reached validation 1.0 at step 200 (stopping after the second validation at the target).

# TrainConfig fields per architecture. `curriculum`: first maximum training length of a length
# curriculum (0 = none; the maximum grows as validation at the current maximum passes).
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"lr": 1e-2, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "gru": {"lr": 1e-2, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "lstm": {"lr": 1e-2, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "second_order": {"lr": 3e-3, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0,
                     "full_length": False, "mixed_inputs": 0.0},
    "transformer": {"lr": 3e-3, "max_steps": 4000, "batch_size": 64, "warmup_steps": 200, "curriculum": 0, "final_weight": 0.0,
                    "full_length": True, "mixed_inputs": 0.0},
    "rmt": {"lr": 3e-3, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "scratchpad": {"lr": 1e-3, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "compressive": {"lr": 3e-3, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0,
                    "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
    "hmt": {"lr": 3e-3, "max_steps": 3000, "batch_size": 64, "warmup_steps": 100, "curriculum": 0, "final_weight": 0.0, "full_length": False, "mixed_inputs": 0.0},
}


# Recurrent recipes above are measured on automata up to this size; larger ones (S4, A5, D_n,
# many symbols) take `recipes_size.gru_recipe` (wider, lr 3e-3, longer).
SMALL_STATES, SMALL_SYMBOLS = 16, 4

# Counter tasks (dyck1, majority, anbn): a GRU of 32 units at lr 3e-3 learned dyck1 to 0.994 in
# 1500 steps, and its extraction found the counter (recipes_size.py's table).
COUNTER_TASKS = ("dyck1", "majority", "anbn")
COUNTER_RECIPE = {"d_hidden": 32, "lr": 3e-3, "max_steps": 1500}

# Deep automata: this share of training words draws its own symbol probabilities (recipes_size.py),
# when the task's own words are i.i.d. symbols (a structured sampler, as flip-flop's, is kept).
DEEP_MIXED = 0.5


def iid_symbols(task: Any) -> bool:
    """Whether the task's sampler draws i.i.d. symbols (uniform or categorical)."""
    return getattr(getattr(task, "sampler", None), "kind", None) in ("uniform", "categorical")


# (arch, task name) -> fields that differ from the architecture's recipe, each measured.
TASK_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("transformer", "flipflop"): {"positional": "rotary"},  # learned: 0.91 final at 40; rotary: 1.00
}


@dataclass(frozen=True)
class Recipe:
    """The default `ModelConfig` fields (`model`) and `TrainConfig` fields (`train`) of one architecture."""

    arch: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def model_config(self, task: Any, **overrides: Any) -> Any:
        """A `ModelConfig` for `task` (vocabulary and outputs from its automaton); `None` overrides are ignored."""
        from ..models import ModelConfig

        a = task.automaton
        fields = {**self.model, **{k: v for k, v in overrides.items() if v is not None}}
        return ModelConfig(arch=self.arch, d_vocab=a.n_symbols, d_out=a.n_labels, **fields)


def recipe(arch: str, task: Any | None = None) -> Recipe:
    """The default recipe of `arch`, for `task` when given."""
    from ..models.config import (
        RNN_ARCHS,  # here, not at the top: `train --help` must not import torch
    )

    if arch not in MODEL_DEFAULTS:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(MODEL_DEFAULTS)}")
    model, train = dict(MODEL_DEFAULTS[arch]), dict(TRAIN_DEFAULTS[arch])
    for key, value in TASK_OVERRIDES.get((arch, getattr(task, "name", None)), {}).items():
        (model if key in model else train)[key] = value
    name = getattr(task, "name", None)
    if arch in RNN_ARCHS and name in COUNTER_TASKS:
        # the zoo's automaton is the counter machine truncated at max_count: its size says nothing
        model["d_hidden"] = COUNTER_RECIPE["d_hidden"]
        train.update(lr=COUNTER_RECIPE["lr"], max_steps=COUNTER_RECIPE["max_steps"])
    elif arch in RNN_ARCHS and task is not None:
        a = task.automaton.minimize()
        n_states, n_symbols = a.n_states, a.n_symbols
        if n_states > SMALL_STATES or n_symbols > SMALL_SYMBOLS:  # measured in recipes_size
            from .recipes_size import full_length, gru_recipe, second_order_recipe, start_depth

            sized = (second_order_recipe if arch == "second_order" else gru_recipe)(n_states, n_symbols)
            deep = full_length(start_depth(a))  # far states: full-length batches, mixed inputs, twice the budget
            model["d_hidden"] = sized["d_hidden"]
            train.update(lr=sized["lr"], max_steps=sized["max_steps"] * (2 if deep else 1),
                         batch_size=sized["batch_size"], full_length=deep,
                         mixed_inputs=DEEP_MIXED if deep and iid_symbols(task) else 0.0)
    return Recipe(arch, model, train)


def retry_hint(arch: str, task: Any) -> str:
    """What to try when `arch` did not learn `task` with its recipe."""
    from ..models.config import CELL_ARCHS

    hint = "try more --max-steps, another --lr or --seed"
    a = task.automaton.minimize()
    large = a.n_states > SMALL_STATES or a.n_symbols > SMALL_SYMBOLS
    if arch in CELL_ARCHS and large and task.name not in COUNTER_TASKS:
        hint += ("; or --arch second_order (one recurrent matrix per symbol, which learns transition tables "
                 "without structure that a first-order net of this width does not)")
    return hint


def describe(key: str, table: dict[str, dict[str, Any]] | None = None) -> str:
    """'64 (rnn, gru, lstm), 32 (rmt)...' : the per-architecture default of one field, for `--help`."""
    if table is None:
        table = MODEL_DEFAULTS if any(key in v for v in MODEL_DEFAULTS.values()) else TRAIN_DEFAULTS
    groups: dict[str, list[str]] = {}
    for arch, values in table.items():
        if key in values:
            groups.setdefault(f"{values[key]:g}" if isinstance(values[key], float) else str(values[key]), []).append(arch)
    return ", ".join(f"{v} ({', '.join(a)})" for v, a in groups.items())

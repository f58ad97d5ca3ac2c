"""fsm_probe: did the network learn the state machine, or a shortcut?

The public API, in the order data flows: automata -> tasks -> datasets -> models -> training.
Names are imported on first use (PEP 562), so `import fsm_probe` and the CLI's `--help` do not
pay for torch and TransformerLens until a model is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _interrupt, _moved
from ._lazy import lazy_exports

_interrupt.install_early()  # first of all: Ctrl-C while `fsm-probe` starts is one line
_moved.install()

__version__ = "0.1.0"

_EXPORTS = {
    "Automaton": "automata",
    "AutomatonError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "FsmProbeError": "errors",
    "InputError": "errors",
    "TaskError": "errors",
    "evaluate": "training",
    "HookedRNN": "models",
    "ModelConfig": "models",
    "build_model": "models",
    "build_transformer": "models",
    "predict_logits": "models",
    "load": "training",
    "save": "training",
    "Task": "tasks",
    "get_task": "tasks",
    "list_tasks": "tasks",
    "task_from_file": "tasks",
    "Run": "training",
    "TrainConfig": "training",
    "train": "training",
    "train_seeds": "training",
}

__all__ = [
    "Automaton",
    "AutomatonError",
    "CheckpointError",
    "ConfigError",
    "FsmProbeError",
    "HookedRNN",
    "InputError",
    "ModelConfig",
    "Task",
    "Run",
    "TaskError",
    "TrainConfig",
    "build_model",
    "build_transformer",
    "evaluate",
    "get_task",
    "list_tasks",
    "load",
    "predict_logits",
    "save",
    "task_from_file",
    "train",
    "train_seeds",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .automata.machine import Automaton
    from .errors import (
        AutomatonError,
        CheckpointError,
        ConfigError,
        FsmProbeError,
        InputError,
        TaskError,
    )
    from .models import HookedRNN, ModelConfig, build_model, build_transformer, predict_logits
    from .tasks import Task, get_task, list_tasks, task_from_file
    from .training import Run, TrainConfig, train, train_seeds
    from .training.checkpoint import load, save
    from .training.evaluation import evaluate

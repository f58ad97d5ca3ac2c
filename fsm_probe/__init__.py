"""fsm_probe: did the network learn the state machine, or a shortcut?

The public API, in the order data flows: automata -> tasks -> datasets -> models -> training.
"""

from .automata import Automaton
from .checkpoint import load, save
from .errors import (
    AutomatonError,
    CheckpointError,
    ConfigError,
    FsmProbeError,
    InputError,
    TaskError,
)
from .evaluation import evaluate
from .models import HookedRNN, ModelConfig, build_model, build_transformer, predict_logits
from .tasks import Task, get_task, list_tasks, task_from_file
from .training import TrainConfig, train

__version__ = "0.1.0"

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
]

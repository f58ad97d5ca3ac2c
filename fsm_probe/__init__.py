"""fsm_probe: did the network learn the state machine, or a shortcut?

The public API, in the order data flows: automata -> tasks -> datasets -> models -> training.
"""

from . import _interrupt

_interrupt.install_early()  # before torch is imported: Ctrl-C while `fsm-probe` starts is one line

from .automata import Automaton  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .errors import (  # noqa: E402
    AutomatonError,
    CheckpointError,
    ConfigError,
    FsmProbeError,
    InputError,
    TaskError,
)
from .evaluation import evaluate  # noqa: E402
from .models import HookedRNN, ModelConfig, build_model, build_transformer, predict_logits  # noqa: E402
from .tasks import Task, get_task, list_tasks, task_from_file  # noqa: E402
from .training import TrainConfig, train  # noqa: E402

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

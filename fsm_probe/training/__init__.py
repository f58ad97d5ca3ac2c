"""Stage 4: fit a model to a task, measure it, persist it; a `Run` is the model with its task."""

from .checkpoint import load, save
from .config import TrainConfig
from .evaluation import evaluate
from .run import Run, as_run
from .trainer import train

__all__ = ["Run", "TrainConfig", "as_run", "evaluate", "load", "save", "train"]

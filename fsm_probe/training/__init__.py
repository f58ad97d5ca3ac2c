"""Stage 4: fit a model to a task, measure it, persist it."""

from .checkpoint import load, save
from .evaluation import evaluate
from .trainer import TrainConfig, train

__all__ = ["TrainConfig", "evaluate", "load", "save", "train"]

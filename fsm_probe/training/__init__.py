"""Stage 4: fit a model to a task, measure it, persist it; a `Run` is the model with its task.

Names resolve on first use (PEP 562): `fsm-probe --help` reads the recipes without importing
torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    # the old fsm_probe.training module's names (until 0.3; import them from training.trainer)
    "CURRICULUM_PASS": "trainer",
    "RECIPE_FIELDS": "config",
    "curriculum_lengths": "trainer",
    "lr_schedule": "trainer",
    "stop_reason": "trainer",
    # the stage's API
    "EvaluationReport": "evaluation",
    "LengthAccuracy": "evaluation",
    "Run": "run",
    "TrainConfig": "config",
    "as_run": "run",
    "evaluate": "evaluation",
    "load": "checkpoint",
    "save": "checkpoint",
    "train": "trainer",
    "train_seeds": "seeds",
}
__all__ = ["EvaluationReport", "LengthAccuracy", "Run", "TrainConfig", "as_run", "evaluate", "load", "save", "train", "train_seeds"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .checkpoint import load, save
    from .config import TrainConfig
    from .evaluation import EvaluationReport, LengthAccuracy, evaluate
    from .run import Run, as_run
    from .seeds import train_seeds
    from .trainer import train

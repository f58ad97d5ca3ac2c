"""Stage 4: fit a model to a task, measure it, persist it; a `Run` is the model with its task.

Names resolve on first use (PEP 562): `fsm-probe --help` reads the recipes without importing
torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Run": "run",
    "TrainConfig": "config",
    "as_run": "run",
    "evaluate": "evaluation",
    "load": "checkpoint",
    "save": "checkpoint",
    "train": "trainer",
}
__all__ = ["Run", "TrainConfig", "as_run", "evaluate", "load", "save", "train"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .checkpoint import load, save
    from .config import TrainConfig
    from .evaluation import evaluate
    from .run import Run, as_run
    from .trainer import train

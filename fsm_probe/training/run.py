"""`Run`: a model with what the analyses need beside it (its task, configs and training record).

`train`, `load` and the compilers return a `Run`; analyses take `(model, task)` or a `Run`, and
`as_run` is the one place that turns either into a `Run`. Nothing is attached to the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from ..models import CompiledTransformer, ModelConfig, model_config
from ..tasks import Task
from .config import TrainConfig


@dataclass
class Run:
    """`model` trained (or compiled) on `task`.

    `log` is the training outcome as stored in `config.json` beside the training settings:
    `steps`, `seconds`, `final_val_accuracy`, `stopped_early`, `learned`, `stop_reason` (a
    compiled model has `{"compiled": True, ...}` and no `train_config`). `circuit` is the ground
    truth of a compiled Transformer (`CompiledCircuit`), else None.
    """

    model: nn.Module
    task: Task
    model_config: ModelConfig
    train_config: TrainConfig | None = None
    log: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None
    circuit: Any = None
    settings: dict[str, Any] | None = None  # the training settings exactly as stored (from_record)

    @property
    def record(self) -> dict[str, Any]:
        """The training record as `config.json` stores it: the settings and the outcome."""
        if self.settings is not None:
            settings = self.settings
        else:
            settings = self.train_config.to_dict() if self.train_config is not None else {}
        return {**settings, **self.log}

    @property
    def learned(self) -> bool | None:
        """Whether training reached its target at the longest training length (None: unknown)."""
        value = self.log.get("learned")
        return None if value is None else bool(value)

    @property
    def trained_length(self) -> int | None:
        """The longest training length, or None for a model that was not trained (compiled)."""
        return record_trained_length(self.record)

    @classmethod
    def from_record(cls, model: nn.Module, task: Task, record: Mapping[str, Any] | None, **kw: Any) -> Run:
        """A run whose `train_config` and `log` come from a stored training record; `record` gives
        the stored record back unchanged (a record without `train_lengths` has no
        `train_config`)."""
        record = dict(record or {})
        names = {f.name for f in fields(TrainConfig)}
        if "train_lengths" not in record:
            return cls(model, task, model_config(model), None, record, **kw)
        settings = {k: record.pop(k) for k in list(record) if k in names}
        # a record from before `mixed_inputs` trained on the task's sampler only
        train_config = TrainConfig.from_dict({"mixed_inputs": 0.0, **settings})
        return cls(model, task, model_config(model), train_config, record, settings=settings, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.spec,
            "model": self.model_config.to_dict(),
            "training": self.record,
            "directory": None if self.directory is None else str(self.directory),
        }


def record_trained_length(record: Mapping[str, Any] | None) -> int | None:
    """The longest training length in a training record, or None without one."""
    lengths = record.get("train_lengths") if isinstance(record, Mapping) else None
    try:
        return int(lengths[1]) if lengths else None
    except (TypeError, ValueError, IndexError):
        return None


def as_run(model: nn.Module | Run | CompiledTransformer, task: Task | None = None) -> Run:
    """`model` as a `Run`: a `Run` is returned as it is (with `task` replacing its task when
    given); a bare model or a `CompiledTransformer` (which brings its circuit) needs its `task`,
    and has no training record."""
    if isinstance(model, CompiledTransformer):
        if task is None:
            raise InputError("a compiled Transformer needs its task: pass task=... (the automaton's Task)")
        return Run(model.model, _checked_task(task), model_config(model.model),
                   log={"compiled": True}, circuit=model.circuit)
    if isinstance(model, Run):
        if task is None or task is model.task:
            return model
        return dataclasses.replace(model, task=task)
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a model or a fsm_probe Run, got {type(model).__name__}")
    if task is None:
        raise InputError("a bare model needs its task: pass task=... or a Run (as train and load return)")
    return Run(model, _checked_task(task), model_config(model))


def _checked_task(task: Any) -> Task:
    if not isinstance(task, Task):
        raise InputError(f"task must be a fsm_probe Task, got {type(task).__name__}")
    return task


def unwrap(model: nn.Module | Run | CompiledTransformer) -> nn.Module:
    """The network of a `Run` or a `CompiledTransformer`, or `model` itself: for analyses that
    need only the network."""
    return model.model if isinstance(model, Run | CompiledTransformer) else model


def model_and_task(model: nn.Module | Run, task: Any = None) -> tuple[nn.Module, Any]:
    """The network and the task of a `Run` (a `task` given wins), or `model` and `task` as given,
    for analyses whose task is optional."""
    if isinstance(model, Run):
        return model.model, model.task if task is None else task
    return unwrap(model), task

"""`TrainConfig`: the training hyperparameters, validated, with per-architecture recipe defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .. import _validate as _v
from ..errors import ConfigError
from ..models import ModelConfig
from ..tasks import Task
from .recipes import recipe

# TrainConfig fields whose default (None) comes from the architecture's recipe.
RECIPE_FIELDS = ("lr", "max_steps", "batch_size", "warmup_steps", "curriculum", "final_weight", "full_length",
                 "mixed_inputs")

@dataclass
class TrainConfig:
    """Training hyperparameters. Fields left at `None` (`lr`, `max_steps`, `batch_size`,
    `warmup_steps`, `curriculum`, `final_weight`, `full_length`, `mixed_inputs`) come from the
    architecture's recipe (`fsm_probe.training.recipes`).

    `curriculum=K` (K > 0) starts with training lengths up to K and grows the maximum by half
    (at least 8) each time validation at the current maximum reaches 0.99 (or the target if
    lower) or the stage has spent its share (half the budget over all stages) of the steps, up to
    `train_lengths[1]`. `final_weight` adds that multiple of the final-position loss.
    `full_length` draws every batch at the longest training length: with every position
    supervised that trains each prefix length 1..max equally often (uniform lengths train the
    last positions least); it is ignored when only the final position is supervised, and it
    replaces the curriculum. `mixed_inputs` is the share of training words that draw their own
    symbol probabilities (Dirichlet(1)) instead of the task's sampler, so that runs of one symbol
    reach the states uniformly random words reach rarely (`tasks.datasets.iterate_batches`);
    validation always uses the task's sampler.
    """

    train_lengths: tuple[int, int] = (1, 40)
    batch_size: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    eval_every: int = 100
    val_lengths: tuple[int, ...] | None = None
    val_size: int = 512
    target_accuracy: float = 1.0
    patience: int = 2
    final_only: bool | None = None
    seed: int = 0
    curriculum: int | None = None
    final_weight: float | None = None
    full_length: bool | None = None
    mixed_inputs: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_lengths = _length_pair(self.train_lengths)
        if self.val_lengths is not None:
            if isinstance(self.val_lengths, str | bytes) or not hasattr(self.val_lengths, "__iter__"):
                raise ConfigError(f"val_lengths must be a sequence of positive integers, got {self.val_lengths!r}")
            self.val_lengths = tuple(self.val_lengths)
        self.validate()

    def validate(self) -> None:
        lo, hi = self.train_lengths
        if lo < 1 or hi < lo:
            raise ConfigError(f"train lengths must satisfy 1 <= min <= max, got {lo}:{hi}")
        for name in ("batch_size", "max_steps", "eval_every", "val_size", "patience"):
            value = getattr(self, name)
            if value is None and name in RECIPE_FIELDS:
                continue
            _v.positive_int(value, name)
        if self.warmup_steps is not None:
            _v.non_negative_int(self.warmup_steps, "warmup_steps")
        _v.seed(self.seed, "seed")
        if self.lr is not None and not 0 < _v.finite_float(self.lr, "learning rate") < 10:
            raise ConfigError(f"learning rate must be in (0, 10), got {self.lr}")
        _v.finite_float(self.weight_decay, "weight_decay", 0.0)
        _v.finite_float(self.grad_clip, "grad_clip", 0.0, low_open=True)
        if self.curriculum is not None:
            _v.non_negative_int(self.curriculum, "curriculum")
        if self.final_weight is not None:
            _v.finite_float(self.final_weight, "final_weight", 0.0)
        if not 0 < _v.finite_float(self.target_accuracy, "target accuracy") <= 1:
            raise ConfigError(f"target accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.val_lengths is not None:
            if not self.val_lengths:
                raise ConfigError("val_lengths must not be empty (None = the longest training length)")
            for v in self.val_lengths:
                _v.positive_int(v, "each validation length")
        if self.full_length is not None and not isinstance(self.full_length, bool):
            raise ConfigError(f"full_length must be True, False or None, got {self.full_length!r}")
        if self.mixed_inputs is not None and not 0 <= _v.finite_float(self.mixed_inputs, "mixed_inputs", 0.0) <= 1:
            raise ConfigError(f"mixed_inputs must be a share in [0, 1], got {self.mixed_inputs}")
        if self.final_only is not None and not isinstance(self.final_only, bool):
            raise ConfigError(f"final_only must be True, False or None, got {self.final_only!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict, got {type(self.extra).__name__}")

    def lr_for(self, cfg: ModelConfig) -> float:
        return self.resolved(cfg.arch).lr

    def resolved(self, arch: str, task: Task | None = None) -> TrainConfig:
        """A copy with every `None` recipe field filled from `recipe(arch, task)`."""
        defaults = recipe(arch, task).train
        filled = {k: defaults[k] for k in RECIPE_FIELDS if getattr(self, k) is None}
        if "warmup_steps" in filled:  # a short run warms up for at most a quarter of its steps
            steps = filled.get("max_steps", self.max_steps)
            filled["warmup_steps"] = min(filled["warmup_steps"], max(1, steps // 4))
        out = replace(self, **filled)
        if out.curriculum < 0 or out.final_weight < 0:
            raise ConfigError(f"curriculum and final_weight must be >= 0, got {out.curriculum}, {out.final_weight}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _length_pair(value: Any) -> tuple[int, int]:
    """`(min, max)` from a pair of integers; anything else is a `ConfigError`."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"train_lengths must be a pair (min, max) of integers, got {value!r}")
    for x in value:
        if not _v.is_int(x):
            raise ConfigError(f"train_lengths must be a pair (min, max) of integers, got {value!r}")
    return int(value[0]), int(value[1])



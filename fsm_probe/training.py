"""Training: per-position (or final-position) cross-entropy, AdamW, warmup + cosine, clipping.

Lengths are drawn per batch from a range. Validation on fixed sets stops training once the
accuracy target is met. Every evaluation is appended to a JSON-lines log. Runs are reproducible:
the model is seeded by its `ModelConfig.seed`, the data by `TrainConfig.seed`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import _validate as _v
from .checkpoint import LOG, checkpoint_stage, write_checkpoint
from .datasets import IGNORE_INDEX, iterate_batches
from .errors import ConfigError
from .evaluation import evaluate
from .models import ModelConfig, as_tokens, build_model
from .models.config import check_memory
from .tasks import Task


@dataclass
class TrainConfig:
    """Training hyperparameters. `lr=None` picks a per-architecture default."""

    train_lengths: tuple[int, int] = (1, 40)
    batch_size: int = 64
    max_steps: int = 3000
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_every: int = 100
    val_lengths: tuple[int, ...] | None = None
    val_size: int = 512
    target_accuracy: float = 1.0
    patience: int = 2
    final_only: bool | None = None
    seed: int = 0
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
            _v.positive_int(getattr(self, name), name)
        _v.non_negative_int(self.warmup_steps, "warmup_steps")
        _v.seed(self.seed, "seed")
        if self.lr is not None and not 0 < _v.finite_float(self.lr, "learning rate") < 10:
            raise ConfigError(f"learning rate must be in (0, 10), got {self.lr}")
        _v.finite_float(self.weight_decay, "weight_decay", 0.0)
        _v.finite_float(self.grad_clip, "grad_clip", 0.0, low_open=True)
        if not 0 < _v.finite_float(self.target_accuracy, "target accuracy") <= 1:
            raise ConfigError(f"target accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.val_lengths is not None:
            if not self.val_lengths:
                raise ConfigError("val_lengths must not be empty (None = the longest training length)")
            for v in self.val_lengths:
                _v.positive_int(v, "each validation length")
        if self.final_only is not None and not isinstance(self.final_only, bool):
            raise ConfigError(f"final_only must be True, False or None, got {self.final_only!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict, got {type(self.extra).__name__}")

    def lr_for(self, cfg: ModelConfig) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-2 if cfg.is_rnn else 1e-3

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


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _loss(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def train(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
) -> nn.Module:
    """Train a model on `task`; returns it in eval mode with `fsm_task` and `fsm_training` set.

    With `out_dir`, locks it for the run, writes the log and then the checkpoint into a staging
    directory beside it and swaps that in as a whole at the end (`checkpoint_stage`), so a
    failed or interrupted run leaves a previous run in `out_dir` intact, with its own log.
    """
    if out_dir is None:
        return _train(task, model_cfg, train_cfg, None, progress, model)
    with checkpoint_stage(out_dir) as stage:
        return _train(task, model_cfg, train_cfg, stage, progress, model)


def _train(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None,
    stage: Path | None,
    progress: bool,
    model: nn.Module | None,
) -> nn.Module:
    train_cfg = train_cfg or TrainConfig()
    if model_cfg.d_vocab < task.automaton.n_symbols or model_cfg.d_out != task.automaton.n_labels:
        raise ConfigError(
            f"model vocabulary/outputs ({model_cfg.d_vocab}, {model_cfg.d_out}) do not fit task "
            f"{task.spec} ({task.automaton.n_symbols} symbols, {task.automaton.n_labels} labels)"
        )
    lo, hi = train_cfg.train_lengths
    if not model_cfg.is_rnn and hi > model_cfg.n_ctx:
        raise ConfigError(f"training length {hi} exceeds the Transformer context n_ctx={model_cfg.n_ctx}")
    val_lengths = train_cfg.val_lengths or (hi,)
    if model is None:
        check_memory(model_cfg, train_cfg.batch_size, hi, training=True,
                     lower="--batch-size, --train-lengths or --hidden" + ("" if model_cfg.is_rnn else " / --n-ctx"))
        check_memory(model_cfg, train_cfg.val_size, max(val_lengths),
                     lower="the validation size or lengths, or --hidden")
    model = model if model is not None else build_model(model_cfg)
    model.fsm_task = task  # models that need the task while training (scratchpad teacher forcing)
    val_lengths = train_cfg.val_lengths or (hi,)
    lr = train_cfg.lr_for(model_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_schedule(s, train_cfg.max_steps, train_cfg.warmup_steps)
    )
    log_path = stage / LOG if stage is not None else None
    if log_path is not None:
        log_path.write_text("")
    batches = iterate_batches(
        task, train_cfg.batch_size, (lo, hi), seed=train_cfg.seed, final_only=train_cfg.final_only
    )
    start = time.perf_counter()
    streak, step, history = 0, 0, []
    bar = tqdm(total=train_cfg.max_steps, disable=not progress, desc=f"{model_cfg.arch} {task.spec}")
    model.train()
    running = None
    for step in range(1, train_cfg.max_steps + 1):
        batch = next(batches)
        tokens = as_tokens(model, batch.tokens)
        loss = _loss(model, tokens, torch.as_tensor(batch.labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.update(1)
        if step % train_cfg.eval_every and step != train_cfg.max_steps:
            continue
        report = evaluate(
            model, task, val_lengths, n=train_cfg.val_size, seed=train_cfg.seed + 1,
            final_only=train_cfg.final_only,
        )
        model.train()
        val_acc = min(r["accuracy"] for r in report.values())
        entry = {
            "step": step,
            "loss": running,
            "lr": sched.get_last_lr()[0],
            "val_accuracy": val_acc,
            "val": {str(k): v for k, v in report.items()},
            "seconds": time.perf_counter() - start,
        }
        history.append(entry)
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        bar.set_postfix(loss=f"{running:.4f}", val=f"{val_acc:.4f}")
        streak = streak + 1 if val_acc >= train_cfg.target_accuracy else 0
        if streak >= train_cfg.patience:
            break
    bar.close()
    model.eval()
    model.fsm_task = task
    model.fsm_training = {
        **train_cfg.to_dict(),
        "lr": lr,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 3),
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "stopped_early": streak >= train_cfg.patience,
    }
    if stage is not None:
        write_checkpoint(model, stage)
    return model

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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import _validate as _v
from ..errors import ConfigError
from ..models import ModelConfig, as_tokens, build_model
from ..models.config import check_memory
from ..tasks.datasets import IGNORE_INDEX, iterate_batches
from ..tasks.zoo import Task
from .checkpoint import LOG, checkpoint_stage, write_checkpoint
from .evaluation import evaluate
from .recipes import recipe
from .verdict import THRESHOLD

# Validation accuracy at the current maximum length that moves a length curriculum on.
CURRICULUM_PASS = 0.99
# TrainConfig fields whose default (None) comes from the architecture's recipe.
RECIPE_FIELDS = ("lr", "max_steps", "warmup_steps", "curriculum", "final_weight", "full_length")

@dataclass
class TrainConfig:
    """Training hyperparameters. Fields left at `None` (`lr`, `max_steps`, `warmup_steps`,
    `curriculum`, `final_weight`) come from the architecture's recipe (`fsm_probe.training.recipes`).

    `curriculum=K` (K > 0) starts with training lengths up to K and grows the maximum by half
    (at least 8) each time validation at the current maximum reaches 0.99 (or the target if
    lower) or the stage has spent its share (half the budget over all stages) of the steps, up to
    `train_lengths[1]`. `final_weight` adds that multiple of the final-position loss.
    `full_length` draws every batch at the longest training length: with every position
    supervised that trains each prefix length 1..max equally often (uniform lengths train the
    last positions least); it is ignored when only the final position is supervised, and it
    replaces the curriculum.
    """

    train_lengths: tuple[int, int] = (1, 40)
    batch_size: int = 64
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


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _loss(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, final_weight: float = 0.0) -> torch.Tensor:
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    if final_weight:
        loss = loss + final_weight * F.cross_entropy(logits[:, -1], labels[:, -1], ignore_index=IGNORE_INDEX)
    return loss


def stop_reason(cfg: TrainConfig, step: int, history: list[dict], stopped_early: bool) -> str:
    """One line on why training stopped: the target was reached, or the budget was spent."""
    hi = cfg.train_lengths[1]
    if stopped_early:
        return f"reached target {cfg.target_accuracy:g} at step {step}"
    if not history:
        return f"budget of {step} steps spent before any validation"
    last = history[-1]
    at = ",".join(last["val"])
    if last["max_length"] < hi:
        return (f"budget of {step} steps spent in the length curriculum at max length {last['max_length']} of {hi} "
                f"(validation {last['val_accuracy']:.4f} at length {at}) - did not learn in distribution")
    if last["val_accuracy"] >= cfg.target_accuracy:
        return f"budget of {step} steps spent, validation {last['val_accuracy']:.4f} at length {at} (target reached)"
    if last["val_accuracy"] >= THRESHOLD:
        return (f"budget of {step} steps spent, validation {last['val_accuracy']:.4f} at length {at}: "
                f"learned in distribution (>= {THRESHOLD}), below the target {cfg.target_accuracy:g}")
    return (f"budget of {step} steps spent, validation {last['val_accuracy']:.4f} at length {at} "
            f"- did not learn in distribution")


def curriculum_lengths(start: int, hi: int) -> list[int]:
    """The maximum training lengths a curriculum starting at `start` goes through, ending at `hi`."""
    if start <= 0 or start >= hi:
        return [hi]
    out = [start]
    while out[-1] < hi:
        out.append(min(hi, out[-1] + max(8, out[-1] // 2)))
    return out


def train(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
) -> nn.Module:
    """Train a model on `task`; returns it in eval mode with `fsm_task` and `fsm_training` set.

    `fsm_training["stop_reason"]` says why training stopped and `fsm_training["learned"]`
    whether validation at the longest training length reached min(target, 0.99). With `out_dir`,
    locks it for the run, writes the log and then the checkpoint into a staging directory beside
    it and swaps that in as a whole at the end (`checkpoint_stage`), so a failed or interrupted
    run leaves a previous run in `out_dir` intact, with its own log.
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
    train_cfg = (train_cfg or TrainConfig()).resolved(model_cfg.arch, task)
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
    final_only = task.final_only if train_cfg.final_only is None else train_cfg.final_only
    full = bool(train_cfg.full_length) and not final_only
    stages = [hi] if full else [m for m in curriculum_lengths(train_cfg.curriculum, hi) if m >= lo]
    lr = train_cfg.lr
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_schedule(s, train_cfg.max_steps, train_cfg.warmup_steps)
    )
    log_path = stage / LOG if stage is not None else None
    if log_path is not None:
        log_path.write_text("")

    def batches_for(phase: int):
        return iterate_batches(
            task, train_cfg.batch_size, (hi if full else lo, stages[phase]), seed=train_cfg.seed + 1000 * phase,
            final_only=train_cfg.final_only,
        )

    phase, phase_start = 0, 0
    phase_budget = max(1, train_cfg.max_steps // (2 * len(stages)))  # at most half the budget below the maximum
    batches = batches_for(phase)
    start = time.perf_counter()
    streak, step, history = 0, 0, []
    bar = tqdm(total=train_cfg.max_steps, disable=not progress, desc=f"{model_cfg.arch} {task.spec}")
    model.train()
    running = None
    for step in range(1, train_cfg.max_steps + 1):
        batch = next(batches)
        tokens = as_tokens(model, batch.tokens)
        loss = _loss(model, tokens, torch.as_tensor(batch.labels), train_cfg.final_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.update(1)
        if stages[phase] < hi and step - phase_start >= phase_budget:  # this curriculum phase had its share
            phase, phase_start = phase + 1, step
            batches = batches_for(phase)
        if step % train_cfg.eval_every and step != train_cfg.max_steps:
            continue
        top = stages[phase]
        lengths = val_lengths if top == hi else (top,)
        report = evaluate(
            model, task, lengths, n=train_cfg.val_size, seed=train_cfg.seed + 1,
            final_only=train_cfg.final_only,
        )
        model.train()
        val_acc = min(min(r["accuracy"], r["final_accuracy"]) for r in report.values())
        entry = {
            "step": step,
            "loss": running,
            "lr": sched.get_last_lr()[0],
            "max_length": top,
            "val_accuracy": val_acc,
            "val": {str(k): v for k, v in report.items()},
            "seconds": time.perf_counter() - start,
        }
        history.append(entry)
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        shown = ",".join(map(str, lengths))
        bar.set_postfix_str(f"loss={running:.4f}, val@{shown}={val_acc:.4f}" + ("" if top == hi else f" (curriculum {top}/{hi})"))
        passed = val_acc >= train_cfg.target_accuracy
        if top < hi:
            if val_acc >= min(CURRICULUM_PASS, train_cfg.target_accuracy):
                phase, phase_start = phase + 1, step  # validation passed: on to longer inputs
                batches = batches_for(phase)
            continue
        streak = streak + 1 if passed else 0
        if streak >= train_cfg.patience:
            break
    stopped_early = streak >= train_cfg.patience
    final_val = history[-1]["val_accuracy"] if history else None
    reason = stop_reason(train_cfg, step, history, stopped_early)
    if progress:
        bar.set_description_str(f"{model_cfg.arch} {task.spec}: {reason}")
    bar.close()
    model.eval()
    model.fsm_task = task
    model.fsm_training = {
        **train_cfg.to_dict(),
        "lr": lr,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 3),
        "final_val_accuracy": final_val,
        "stopped_early": stopped_early,
        "learned": bool(history) and history[-1]["max_length"] == hi
        and final_val >= min(train_cfg.target_accuracy, THRESHOLD),
        "stop_reason": reason,
    }
    if stage is not None:
        write_checkpoint(model, stage)
    return model

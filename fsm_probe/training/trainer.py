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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models import ModelConfig, as_tokens, build_model
from ..models.config import check_memory
from ..tasks import Task
from ..tasks.datasets import IGNORE_INDEX, iterate_batches
from .checkpoint import LOG, checkpoint_stage, write_checkpoint
from .config import TrainConfig
from .evaluation import evaluate
from .run import Run
from .verdict import THRESHOLD

# Validation accuracy at the current maximum length that moves a length curriculum on.
CURRICULUM_PASS = 0.99


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _loss(model: nn.Module, task: Task, tokens: torch.Tensor, labels: torch.Tensor,
          final_weight: float = 0.0) -> torch.Tensor:
    if getattr(model, "feeds_back_outputs", False):  # teacher forcing: it reads back the true labels
        feedback = torch.as_tensor(task.automaton.run_outputs(tokens.cpu().numpy()), device=tokens.device)
        logits = model(tokens, feedback=feedback)
    else:
        logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    if final_weight:
        loss = loss + final_weight * F.cross_entropy(logits[:, -1], labels[:, -1], ignore_index=IGNORE_INDEX)
    return loss


def accuracy_text(value: float) -> str:
    """An accuracy to 4 decimals, with more where 4 would round a miss up to 1.0000."""
    text = f"{value:.4f}"
    return f"{value:.6f}" if value < 1 and text == "1.0000" else text


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
                f"(validation {accuracy_text(last['val_accuracy'])} at length {at}) - did not learn in distribution")
    if last["val_accuracy"] >= cfg.target_accuracy:
        return f"budget of {step} steps spent, validation {accuracy_text(last['val_accuracy'])} at length {at} (target reached)"
    if last["val_accuracy"] >= THRESHOLD:
        return (f"budget of {step} steps spent, validation {accuracy_text(last['val_accuracy'])} at length {at}: "
                f"learned in distribution (>= {THRESHOLD}), below the target {cfg.target_accuracy:g}")
    return (f"budget of {step} steps spent, validation {accuracy_text(last['val_accuracy'])} at length {at} "
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
) -> Run:
    """Train a model on `task`; returns the `Run`, its model in eval mode.

    `run.log["stop_reason"]` says why training stopped and `run.learned` whether validation at
    the longest training length reached min(target, 0.99). With `out_dir`,
    locks it for the run, writes the log and then the checkpoint into a staging directory beside
    it and swaps that in as a whole at the end (`checkpoint_stage`), so a failed or interrupted
    run leaves a previous run in `out_dir` intact, with its own log.
    """
    if out_dir is None:
        return _train(task, model_cfg, train_cfg, None, progress, model)
    with checkpoint_stage(out_dir) as stage:
        run = _train(task, model_cfg, train_cfg, stage, progress, model)
    run.directory = Path(out_dir)
    return run


def check_training_memory(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """A `ConfigError` before training when a training or a validation batch would not fit in memory."""
    hi = train_cfg.train_lengths[1]
    check_memory(model_cfg, train_cfg.batch_size, hi, training=True,
                 lower="--batch-size, --train-lengths or --hidden" + ("" if model_cfg.max_length is None else " / --n-ctx"))
    check_memory(model_cfg, train_cfg.val_size, max(train_cfg.val_lengths or (hi,)),
                 lower="the validation size or lengths, or --hidden")


class Progress:
    """One model's training bookkeeping, shared by `train()` and `train_seeds`: the length
    curriculum, the batch stream, validation and its log, early stopping, and the `Run` at the
    end. The caller owns the model and the optimizer step."""

    def __init__(self, task: Task, model_cfg: ModelConfig, train_cfg: TrainConfig, log_path: Path | None,
                 start: float) -> None:
        if model_cfg.d_vocab < task.automaton.n_symbols or model_cfg.d_out != task.automaton.n_labels:
            raise ConfigError(
                f"model vocabulary/outputs ({model_cfg.d_vocab}, {model_cfg.d_out}) do not fit task "
                f"{task.spec} ({task.automaton.n_symbols} symbols, {task.automaton.n_labels} labels)"
            )
        lo, hi = train_cfg.train_lengths
        if model_cfg.max_length is not None and hi > model_cfg.max_length:
            raise ConfigError(f"training length {hi} exceeds the Transformer context n_ctx={model_cfg.n_ctx}")
        final_only = task.final_only if train_cfg.final_only is None else train_cfg.final_only
        self.full = bool(train_cfg.full_length) and not final_only
        if train_cfg.full_length and not self.full:  # ignored when only the final position is supervised: record what ran
            train_cfg = replace(train_cfg, full_length=False)
        self.task, self.model_cfg, self.train_cfg, self.log_path, self.start = task, model_cfg, train_cfg, log_path, start
        self.hi = hi
        self.stages = [hi] if self.full else [m for m in curriculum_lengths(train_cfg.curriculum, hi) if m >= lo]
        self.phase_budget = max(1, train_cfg.max_steps // (2 * len(self.stages)))  # at most half the budget below the maximum
        self.phase = self.phase_start = self.streak = 0
        self.running: float | None = None
        self.history: list[dict[str, Any]] = []
        if log_path is not None:
            log_path.write_text("")
        self.new_batches()

    def new_batches(self) -> None:
        cfg = self.train_cfg
        lo = cfg.train_lengths[0]
        self.batches = iterate_batches(
            self.task, cfg.batch_size, (self.hi if self.full else lo, self.stages[self.phase]),
            seed=cfg.seed + 1000 * self.phase, final_only=cfg.final_only, mixed=cfg.mixed_inputs or 0.0,
        )

    def after_step(self, step: int, loss: float, model: nn.Module, sync: Callable[[], None] | None = None) -> bool:
        """Record the step's loss; move the curriculum on; validate every `eval_every` steps
        (`sync()` first puts the current weights into `model`). True when training should stop."""
        cfg = self.train_cfg
        self.running = loss if self.running is None else 0.9 * self.running + 0.1 * loss
        moved = self.stages[self.phase] < self.hi and step - self.phase_start >= self.phase_budget
        if moved:  # this curriculum phase had its share
            self.phase, self.phase_start = self.phase + 1, step
            self.new_batches()
        if (step % cfg.eval_every or moved) and step != cfg.max_steps:
            return False  # a stage just entered is not validated before it has trained
        top = self.stages[self.phase]
        lengths = (cfg.val_lengths or (self.hi,)) if top == self.hi else (top,)
        if sync is not None:
            sync()
        report = evaluate(model, self.task, lengths, n=cfg.val_size, seed=cfg.seed + 1, final_only=cfg.final_only)
        model.train()
        val_acc = min(min(r["accuracy"], r["final_accuracy"]) for r in report.values())
        entry = {
            "step": step,
            "loss": self.running,
            "lr": cfg.lr * lr_schedule(step, cfg.max_steps, cfg.warmup_steps),
            "max_length": top,
            "val_accuracy": val_acc,
            "val": {str(k): v for k, v in report.items()},
            "seconds": time.perf_counter() - self.start,
        }
        self.history.append(entry)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if top < self.hi:
            if val_acc >= min(CURRICULUM_PASS, cfg.target_accuracy):
                self.phase, self.phase_start = self.phase + 1, step  # validation passed: on to longer inputs
                self.new_batches()
            return False
        self.streak = self.streak + 1 if val_acc >= cfg.target_accuracy else 0
        return self.streak >= cfg.patience

    def postfix(self) -> str:
        """The progress bar's summary of the last validation."""
        last = self.history[-1]
        top = last["max_length"]
        return (f"loss={self.running:.4f}, val@{','.join(last['val'])}={accuracy_text(last['val_accuracy'])}"
                + ("" if top == self.hi else f" (curriculum {top}/{self.hi})"))

    def finish(self, model: nn.Module, step: int, stopped_early: bool) -> Run:
        """The `Run` of a model whose training stopped at `step` (the model in eval mode)."""
        model.eval()
        cfg = self.train_cfg
        final_val = self.history[-1]["val_accuracy"] if self.history else None
        return Run(model, self.task, self.model_cfg, cfg, {
            "steps": step,
            "seconds": round(time.perf_counter() - self.start, 3),
            "final_val_accuracy": final_val,
            "stopped_early": stopped_early,
            "learned": bool(self.history) and self.history[-1]["max_length"] == self.hi
            and final_val >= min(cfg.target_accuracy, THRESHOLD),
            "stop_reason": stop_reason(cfg, step, self.history, stopped_early),
        })


def _train(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None,
    stage: Path | None,
    progress: bool,
    model: nn.Module | None,
) -> Run:
    train_cfg = (train_cfg or TrainConfig()).resolved(model_cfg.arch, task)
    start = time.perf_counter()
    state = Progress(task, model_cfg, train_cfg, stage / LOG if stage is not None else None, start)
    if model is None:
        check_training_memory(model_cfg, train_cfg)
    model = model if model is not None else build_model(model_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_schedule(s, train_cfg.max_steps, train_cfg.warmup_steps)
    )
    bar = tqdm(total=train_cfg.max_steps, disable=not progress, desc=f"{model_cfg.arch} {task.spec}")
    model.train()
    step, stopped_early = 0, False
    for step in range(1, train_cfg.max_steps + 1):
        batch = next(state.batches)
        tokens = as_tokens(model, batch.tokens)
        loss = _loss(model, task, tokens, torch.as_tensor(batch.labels), train_cfg.final_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        sched.step()
        bar.update(1)
        n_logged = len(state.history)
        stopped_early = state.after_step(step, loss.item(), model)
        if len(state.history) > n_logged:
            bar.set_postfix_str(state.postfix())
        if stopped_early:
            break
    run = state.finish(model, step, stopped_early)
    if progress:
        bar.set_description_str(f"{model_cfg.arch} {task.spec}: {run.log['stop_reason']}")
    bar.close()
    if stage is not None:
        write_checkpoint(run, stage)
    return run

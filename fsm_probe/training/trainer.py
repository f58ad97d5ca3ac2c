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
from dataclasses import replace
from pathlib import Path

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


def _train(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None,
    stage: Path | None,
    progress: bool,
    model: nn.Module | None,
) -> Run:
    train_cfg = (train_cfg or TrainConfig()).resolved(model_cfg.arch, task)
    if model_cfg.d_vocab < task.automaton.n_symbols or model_cfg.d_out != task.automaton.n_labels:
        raise ConfigError(
            f"model vocabulary/outputs ({model_cfg.d_vocab}, {model_cfg.d_out}) do not fit task "
            f"{task.spec} ({task.automaton.n_symbols} symbols, {task.automaton.n_labels} labels)"
        )
    lo, hi = train_cfg.train_lengths
    if model_cfg.max_length is not None and hi > model_cfg.max_length:
        raise ConfigError(f"training length {hi} exceeds the Transformer context n_ctx={model_cfg.n_ctx}")
    val_lengths = train_cfg.val_lengths or (hi,)
    if model is None:
        check_memory(model_cfg, train_cfg.batch_size, hi, training=True,
                     lower="--batch-size, --train-lengths or --hidden" + ("" if model_cfg.max_length is None else " / --n-ctx"))
        check_memory(model_cfg, train_cfg.val_size, max(val_lengths),
                     lower="the validation size or lengths, or --hidden")
    model = model if model is not None else build_model(model_cfg)
    val_lengths = train_cfg.val_lengths or (hi,)
    final_only = task.final_only if train_cfg.final_only is None else train_cfg.final_only
    full = bool(train_cfg.full_length) and not final_only
    if train_cfg.full_length and not full:  # ignored when only the final position is supervised: record what ran
        train_cfg = replace(train_cfg, full_length=False)
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
        loss = _loss(model, task, tokens, torch.as_tensor(batch.labels), train_cfg.final_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.update(1)
        moved = stages[phase] < hi and step - phase_start >= phase_budget  # this curriculum phase had its share
        if moved:
            phase, phase_start = phase + 1, step
            batches = batches_for(phase)
        if (step % train_cfg.eval_every or moved) and step != train_cfg.max_steps:
            continue  # a stage just entered is not validated before it has trained
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
    run = Run(model, task, model_cfg, train_cfg, {
        "steps": step,
        "seconds": round(time.perf_counter() - start, 3),
        "final_val_accuracy": final_val,
        "stopped_early": stopped_early,
        "learned": bool(history) and history[-1]["max_length"] == hi
        and final_val >= min(train_cfg.target_accuracy, THRESHOLD),
        "stop_reason": reason,
    })
    if stage is not None:
        write_checkpoint(run, stage)
    return run

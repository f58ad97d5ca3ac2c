"""Checkpoints: a directory with `config.json` and `model.safetensors`, for every architecture.

`config.json` holds the task, the architecture (`model`), the training settings, the library
versions, the SHA-256 of the weights and, for Transformers, the `TransformerBridgeConfig` fields
under `tl_config`, so the weights load in plain TransformerLens. Both files are staged in full before
either replaces the old one; `load` checks the hash, so even a crash between the two renames is
refused instead of pairing new weights with an old config.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformer_lens.model_bridge import TransformerBridge

from .errors import CheckpointError, FsmProbeError
from .io import atomic_write_many
from .models import ModelConfig, build_model, model_config, tl_config_dict
from .tasks import Task

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fsm_probe", "torch", "transformer-lens", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    task: Task | None = None,
    training: dict[str, Any] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write `model` (with its task and training settings) to `directory`; returns the path.

    `task` and `training` default to the model's `fsm_task` / `fsm_training` attributes, which
    `train` and `load` set. `extra_files` maps further file names in `directory` to writers
    `write(tmp_path)`; they are replaced together with the checkpoint (e.g. the training log).
    """
    cfg = model_config(model)
    task = task if task is not None else getattr(model, "fsm_task", None)
    if task is None:
        raise CheckpointError("save needs the model's task: pass task=... (a fsm_probe Task)")
    training = training if training is not None else getattr(model, "fsm_training", {})
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "task": task.to_dict(),
        "model": cfg.to_dict(),
        "training": training,
        "versions": _versions(),
    }
    if cfg.arch == "transformer":
        config["tl_config"] = tl_config_dict(cfg)

    def write_weights(tmp: Path) -> None:
        save_file(tensors, str(tmp))
        config["weights_sha256"] = _sha256(tmp)

    def write_config(tmp: Path) -> None:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    writes: dict[Any, Callable[[Path], None]] = {directory / WEIGHTS: write_weights, directory / CONFIG: write_config}
    writes.update({directory / name: write for name, write in (extra_files or {}).items()})
    atomic_write_many(writes)
    model.fsm_task = task
    model.fsm_training = training
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint directory, validated."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    missing = [k for k in ("format", "task", "model", "weights_sha256") if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if config["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {config['format']!r}, expected {FORMAT_VERSION}")
    return config


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by `save`; the model comes back in eval mode.

    The model carries `fsm_config`, `fsm_task` and `fsm_training`.
    """
    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS}")
    if _sha256(weights) != config["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match {CONFIG} (truncated, or written by another run)"
        )
    try:
        cfg = ModelConfig.from_dict(config["model"])
        task = Task.from_dict(config["task"])
    except FsmProbeError as e:
        raise CheckpointError(f"{directory / CONFIG}: {e}") from None
    model = build_model(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{weights} does not fit the architecture in {CONFIG}: {first}") from None
    model.fsm_task = task
    model.fsm_training = config.get("training", {})
    # The bridge prints "Moving model to device" unless told not to, which would corrupt the
    # CLI's --json output.
    quiet = {"print_details": False} if isinstance(model, TransformerBridge) else {}
    return model.to(device, **quiet).eval()

"""Checkpoints: a directory with `config.json` and `model.safetensors`, for every architecture.

`config.json` holds the task, the architecture (`model`), the training settings, the library
versions, the SHA-256 of the weights and, for Transformers, the `TransformerBridgeConfig` fields
under `tl_config`, so the weights load in plain TransformerLens.

A save replaces the directory as one unit (`fsm_probe.io.replace_directory`): the new checkpoint
is written complete beside it and swapped in, so a crash leaves the old checkpoint or the new
one, each with its own `train_log.jsonl`. `load` validates every field of `config.json`, the
memory the architecture needs, and every tensor's shape and dtype before loading the weights.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformer_lens.model_bridge import TransformerBridge

from .. import _validate as _v
from ..errors import CheckpointError, ConfigError, FsmProbeError
from ..io import check_out_path, readable_directory, replace_directory
from ..models import CompiledCircuit, ModelConfig, build_model, tl_config_dict
from ..models.config import check_memory
from ..tasks import Task
from .run import Run, as_run

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LOG = "train_log.jsonl"
CIRCUIT = "circuit.json"  # a compiled model's ground truth (`CompiledCircuit`)
FILES = (CONFIG, WEIGHTS, LOG, CIRCUIT)  # what a save owns: never carried over from the old version


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


@contextlib.contextmanager
def checkpoint_stage(directory: str | os.PathLike) -> Iterator[Path]:
    """Lock `directory` and yield an empty staging directory; `write_checkpoint` into it, and a
    clean exit swaps it in as `directory` (see `fsm_probe.io.replace_directory`)."""
    target = check_out_path(directory, CheckpointError)
    foreign = _foreign_config(target)
    if foreign:
        raise CheckpointError(
            f"{target / CONFIG} is not an fsm_probe checkpoint ({foreign}); refusing to replace it, "
            "choose another --out"
        )
    with replace_directory(target, owned=FILES, what="checkpoint") as stage:
        yield stage


def _foreign_config(target: Path) -> str | None:
    """Why `target/config.json` is not an fsm_probe checkpoint's, or None."""
    path = target / CONFIG
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if not isinstance(data, dict) or "format" not in data or "weights_sha256" not in data:
        return "no 'format' and 'weights_sha256' fields"
    return None


def save(
    run: Run | nn.Module,
    directory: str | os.PathLike,
    task: Task | None = None,
    training: dict[str, Any] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write `run` (a `Run`, or a bare model with its `task`) to `directory`; returns the path.

    `training` replaces the run's training record. `extra_files` maps further file names in
    `directory` to writers `write(path)`; they are replaced together with the checkpoint (e.g.
    the training log).
    """
    run = _as_saved(run, task, training)
    with checkpoint_stage(directory) as stage:
        write_checkpoint(run, stage, extra_files=extra_files)
    return Path(directory)


def _as_saved(run: Run | nn.Module, task: Task | None, training: dict[str, Any] | None) -> Run:
    if not isinstance(run, Run) and task is None:
        raise CheckpointError("save needs the model's task: pass a Run (as train and load return) or task=...")
    run = as_run(run, task)
    if training is not None:
        run = Run.from_record(run.model, run.task, training, directory=run.directory, circuit=run.circuit)
    return run


def write_checkpoint(
    run: Run,
    stage: str | os.PathLike,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write the checkpoint files of `run` into the (staging) directory `stage`, with the umask's modes."""
    cfg = run.model_config
    stage = Path(stage)
    tensors = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    config: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "task": run.task.to_dict(),
        "model": cfg.to_dict(),
        "training": run.record,
        "versions": _versions(),
    }
    if cfg.arch == "transformer":
        config["tl_config"] = tl_config_dict(cfg)
    for name, write in (extra_files or {}).items():
        write(stage / name)
    if isinstance(run.circuit, CompiledCircuit) and CIRCUIT not in (extra_files or {}):
        (stage / CIRCUIT).write_text(json.dumps(run.circuit.to_dict(), indent=2) + "\n", encoding="utf-8")
    try:
        save_file(tensors, str(stage / WEIGHTS))
    except SafetensorError as e:  # safetensors reports a full disk as its own error type
        text = _first_line(e)
        code = errno.ENOSPC if "No space left" in text else errno.EIO
        raise OSError(code, os.strerror(code) if code == errno.ENOSPC else text, str(stage / WEIGHTS)) from None
    config["weights_sha256"] = _sha256(stage / WEIGHTS)
    (stage / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    mode = 0o666 & ~_umask()
    for path in stage.iterdir():
        if path.is_file():
            os.chmod(path, mode)  # safetensors writes 0600 whatever the umask
    return stage


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint directory, every field validated."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise CheckpointError(f"{path} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    missing = [k for k in ("format", "task", "model", "weights_sha256") if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if config["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {config['format']!r}, expected {FORMAT_VERSION}")
    if not isinstance(config["weights_sha256"], str):
        raise CheckpointError(f"{path}: weights_sha256 must be a string")
    if "training" in config:
        try:
            check_training_record(config["training"])
        except FsmProbeError as e:
            raise CheckpointError(f"{path}: training record: {e}") from None
    return config


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# Training-record fields that readers use, with their checks (other fields are kept as is).
def _lengths_pair(v: Any, name: str) -> None:
    if not isinstance(v, list | tuple) or len(v) != 2 or not all(_v.is_int(x) for x in v) or not 1 <= v[0] <= v[1]:
        raise ConfigError(f"{name} must be [min, max] with 1 <= min <= max, got {_v._short(v)}")


def _lengths_list(v: Any, name: str) -> None:
    if v is not None and (not isinstance(v, list | tuple) or not v or not all(_v.is_int(x) and x >= 1 for x in v)):
        raise ConfigError(f"{name} must be null or a list of positive integers, got {_v._short(v)}")


def _below(v: float, name: str, high: float, text: str, inclusive: bool = False) -> float:
    if v > high or (v == high and not inclusive):
        raise ConfigError(f"{name} must be {text}, got {v!r}")
    return v


def _opt(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda v, name: None if v is None else check(v, name)


def _bool(v: Any, name: str) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {_v._short(v)}")


def _mapping(v: Any, name: str) -> None:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{name} must be an object, got {_v._short(v)}")


_TRAINING_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "train_lengths": _lengths_pair,
    "val_lengths": _lengths_list,
    "batch_size": _opt(_v.positive_int),
    "max_steps": _opt(_v.positive_int),  # null: the recipe's (an unresolved TrainConfig)
    "eval_every": _v.positive_int,
    "val_size": _v.positive_int,
    "patience": _v.positive_int,
    "steps": _v.non_negative_int,
    "warmup_steps": _opt(_v.non_negative_int),
    "curriculum": _opt(_v.non_negative_int),
    "final_weight": _opt(lambda v, n: _v.finite_float(v, n, 0.0)),
    "learned": _bool,
    "full_length": _opt(_bool),
    "mixed_inputs": _opt(lambda v, n: _below(_v.finite_float(v, n, 0.0), n, 1.0, "<= 1", inclusive=True)),
    "seed": _v.seed,
    "lr": _opt(lambda v, n: _below(_v.finite_float(v, n, 0.0, low_open=True), n, 10.0, "< 10")),
    "weight_decay": lambda v, n: _v.finite_float(v, n, 0.0),
    "grad_clip": lambda v, n: _v.finite_float(v, n, 0.0, low_open=True),
    "target_accuracy": lambda v, n: _below(_v.finite_float(v, n, 0.0, low_open=True), n, 1.0, "<= 1", inclusive=True),
    "seconds": lambda v, n: _v.finite_float(v, n, 0.0),
    "final_val_accuracy": _opt(lambda v, n: _v.finite_float(v, n, 0.0)),
    "final_only": _opt(_bool),
    "stopped_early": _bool,
    "extra": _mapping,
}


def check_training_record(training: Any) -> None:
    """Raise `ConfigError` naming the first malformed field of a checkpoint's training record."""
    if not isinstance(training, Mapping):
        raise ConfigError(f"must be an object of training settings, got {_v._short(training)}")
    for name, check in _TRAINING_FIELDS.items():
        if name in training:
            check(training[name], name)


def _check_tensors(weights: Path, model: nn.Module) -> None:
    """Compare every tensor's name, shape and dtype in `weights` with `model`, before reading
    any of them."""
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = f.get_slice(k)
                found[k] = (tuple(sl.get_shape()), sl.get_dtype())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: {_first_line(e)}") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(f"{weights} does not fit the architecture in {CONFIG}: it lacks tensor {missing[0]!r}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{weights} does not fit the architecture in {CONFIG}: unexpected tensor {unexpected[0]!r}"
        )
    for k, (shape, dtype) in expected.items():
        got_shape, got_dtype = found[k]
        if got_shape != shape:
            raise CheckpointError(
                f"{weights} does not fit the architecture in {CONFIG}: tensor {k!r} has shape "
                f"{list(got_shape)}, the architecture needs {list(shape)}"
            )
        want = _SAFETENSORS_DTYPES.get(dtype, str(dtype))
        if got_dtype != want:
            raise CheckpointError(
                f"{weights} does not fit the architecture in {CONFIG}: tensor {k!r} has dtype {got_dtype}, expected {want}"
            )


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a checkpoint written by `save` as a `Run`; the model comes back in eval mode.

    Every field of `config.json`
    and every tensor's shape and dtype are checked, and the memory the architecture needs is
    estimated, before anything large is allocated.
    """
    given = Path(directory)
    if str(directory).strip() == "":
        raise CheckpointError("no checkpoint at '': give a checkpoint directory")
    directory = readable_directory(given)
    config = read_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {given} has no {WEIGHTS}")
    try:
        cfg = ModelConfig.from_dict(config["model"])
        task = Task.from_dict(config["task"])
    except FsmProbeError as e:
        raise CheckpointError(f"{given / CONFIG}: {e}") from None
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{given / CONFIG}: malformed task or model ({_first_line(e)})") from None
    a = task.automaton
    if cfg.d_vocab < a.n_symbols or cfg.d_out != a.n_labels:
        raise CheckpointError(
            f"{given / CONFIG}: the model (d_vocab={cfg.d_vocab}, d_out={cfg.d_out}) does not fit its task "
            f"{task.spec} ({a.n_symbols} symbols, {a.n_labels} labels)"
        )
    check_memory(cfg, lower="n_ctx / d_hidden in " + str(given / CONFIG))
    if cfg.arch == "transformer" and "tl_config" in config:
        expected = json.loads(json.dumps(tl_config_dict(cfg)))
        stored = config["tl_config"]
        if not isinstance(stored, Mapping):
            raise CheckpointError(f"{given / CONFIG}: tl_config must be an object")
        differ = sorted(k for k in set(expected) | set(stored) if stored.get(k) != expected.get(k))
        if differ:
            k = differ[0]
            raise CheckpointError(
                f"{given / CONFIG}: tl_config.{k} = {_v._short(stored.get(k))} disagrees with the architecture "
                f"(which gives {_v._short(expected.get(k))}); the config was edited by hand"
            )
    if _sha256(weights) != config["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match {CONFIG} (truncated, or written by another run)"
        )
    model = build_model(cfg)
    _check_tensors(weights, model)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: {_first_line(e)}") from None
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"tensor {name!r} in {weights} holds NaN or infinite values")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not fit the architecture in {CONFIG}: {_first_line(e)}") from None
    # The bridge prints "Moving model to device" unless told not to, which would corrupt the
    # CLI's --json output.
    quiet = {"print_details": False} if isinstance(model, TransformerBridge) else {}
    model = model.to(device, **quiet).eval()
    circuit = read_circuit(directory / CIRCUIT, given / CIRCUIT)
    try:
        return Run.from_record(model, task, config.get("training", {}), directory=given, circuit=circuit)
    except FsmProbeError as e:
        raise CheckpointError(f"{given / CONFIG}: training record: {e}") from None


def read_circuit(path: Path, shown: Path | None = None) -> CompiledCircuit | None:
    """A compiled model's `circuit.json` (files from before `state_cells` too); None without one,
    or for a file that is not a construction's (e.g. a hand-written component list for
    `fsm-probe circuit` to score against)."""
    shown = path if shown is None else shown
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{shown} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict) or "construction" not in data:
        return None
    try:
        return CompiledCircuit.from_dict(data)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{shown} is not a compiled circuit ({_first_line(e)})") from None

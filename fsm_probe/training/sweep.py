"""Sweeps: a grid of train + evaluate jobs, run in this process, a process pool or on Ray, resumable.

A `Job` is one (task, model config, train config, seed, learning rate) with the lengths it is
evaluated at; `grid` builds the product. `sweep(jobs, out)` runs every job that has no row yet
in `OUT/results.jsonl` and appends one JSON line per finished job (`{"key", "job", "result",
"cpu_seconds", "wall_seconds", "finished_at"}`), so an interrupted sweep resumes where it
stopped. Only the driver writes the file: each row is one `write` of a whole line on an
`O_APPEND` descriptor, then fsynced; a line cut short by a crash is dropped on the next start.
The file is locked (`io.output_lock`) while a sweep writes it.

Engines: `"local"` (default) runs jobs in this process (`workers=1`) or a process pool;
`"ray"` submits them as Ray tasks of one CPU each: `ray.init()` starts a local cluster (of
`num_cpus` CPUs, default all) unless Ray is already initialised, and `address=` joins an
existing cluster, whose workers must have fsm_probe installed. Ray is the optional extra
`pip install -e ".[sweep]"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import _validate as _v
from ..errors import ConfigError, OutputError
from ..io import check_out_path, output_lock

RESULTS = "results.jsonl"
ENGINES = ("local", "ray")
RAY_MISSING = 'engine="ray" needs Ray, which is not installed: pip install -e ".[sweep]" (or pip install "ray>=2.9")'


@dataclass(frozen=True)
class Job:
    """One training run and its evaluation.

    `model`: `ModelConfig` fields except `d_vocab`/`d_out` (taken from the task); `train`:
    `TrainConfig` fields. `seed` seeds both the model and the data, `lr` (None = `train`'s, or
    the recipe's) is the learning rate; `lengths` are evaluated on `n_eval` sequences each.
    `name` labels the model in tables (default: its arch); `extra` holds whatever a custom job
    function needs. Every field enters `key`, which identifies the job in the results file.
    """

    task: str
    model: Mapping[str, Any]
    train: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    lr: float | None = None
    lengths: tuple[int, ...] = ()
    n_eval: int = 256
    name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"a job's task must be a task spec string, got {self.task!r}")
        if not isinstance(self.model, Mapping) or "arch" not in self.model:
            raise ConfigError(f"a job's model must be a dict of ModelConfig fields with 'arch', got {self.model!r}")
        if not isinstance(self.train, Mapping):
            raise ConfigError(f"a job's train must be a dict of TrainConfig fields, got {self.train!r}")
        _check_fields(self.model, "model", "ModelConfig", ("d_vocab", "d_out", "seed"))
        _check_fields(self.train, "train", "TrainConfig", ("seed",))
        _v.seed(self.seed, "seed")
        if self.lr is not None and not 0 < _v.finite_float(self.lr, "learning rate") < 10:
            raise ConfigError(f"learning rate must be in (0, 10), got {self.lr}")
        object.__setattr__(self, "lengths", tuple(_v.positive_int(n, "each evaluation length") for n in self.lengths))
        _v.positive_int(self.n_eval, "n_eval")
        object.__setattr__(self, "name", self.name or str(self.model["arch"]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(model=dict(self.model), train=dict(self.train), extra=dict(self.extra), lengths=list(self.lengths))
        return json.loads(json.dumps(d))  # JSON's view: tuples become lists, as the file stores them

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        return cls(**{**d, "lengths": tuple(d.get("lengths", ()))})

    @property
    def key(self) -> str:
        """A digest of every field: the same job in a later sweep has the same key."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def label(self) -> str:
        lr = "" if self.lr is None else f" lr {self.lr:g}"
        return f"{self.task} {self.name} seed {self.seed}{lr}"


def _check_fields(given: Mapping[str, Any], what: str, config: str, reserved: tuple[str, ...]) -> None:
    """A `ConfigError` naming any key of a job's `model`/`train` that its config does not have
    (or that the job sets itself: the task's vocabulary, `Job.seed`)."""
    from .. import models
    from . import config as training_config

    cls = models.ModelConfig if config == "ModelConfig" else training_config.TrainConfig
    known = {f.name for f in fields(cls)} - set(reserved)
    bad = sorted(k for k in given if k not in known)
    if bad:
        raise ConfigError(f"a job's {what} has unknown or reserved {config} field(s) {bad}"
                          + (f" ({', '.join(reserved)} come from the job)" if set(bad) & set(reserved) else ""))


def grid(
    tasks: Iterable[str],
    models: Mapping[str, Mapping[str, Any]],
    *,
    seeds: Iterable[int] = (0,),
    lrs: Iterable[float | None] = (None,),
    train: Mapping[str, Any] | None = None,
    lengths: Sequence[int] = (),
    n_eval: int = 256,
) -> list[Job]:
    """Every (task, model, learning rate, seed), in that order; `models` maps a name to its fields."""
    seeds, lrs = list(seeds), list(lrs)
    return [Job(t, dict(fields), dict(train or {}), s, lr, tuple(lengths), n_eval, name)
            for t in tasks for name, fields in models.items() for lr in lrs for s in seeds]


def train_job(job: Job) -> Any:
    """Train `job`'s model on its task (no progress bar, no checkpoint); returns the `Run`."""
    from ..models import ModelConfig
    from ..tasks import get_task
    from .config import TrainConfig
    from .trainer import train

    task = get_task(job.task)
    a = task.automaton
    cfg = ModelConfig(**{"seed": job.seed, **job.model, "d_vocab": a.n_symbols, "d_out": a.n_labels})
    fields = {**job.train, "seed": job.seed}
    if job.lr is not None:
        fields["lr"] = job.lr
    return train(task, cfg, TrainConfig(**fields), progress=False)


def run_job(job: Job) -> dict[str, Any]:
    """The default job: train, then evaluate at `job.lengths` (`evaluate`'s accuracies per length)."""
    from .evaluation import evaluate

    run = train_job(job)
    report = evaluate(run.model, run.task, job.lengths, n=job.n_eval,
                      final_only=run.train_config.final_only) if job.lengths else None
    return {
        **{k: run.log[k] for k in ("steps", "seconds", "learned", "stop_reason", "final_val_accuracy")},
        "lr": run.train_config.lr,
        "accuracy": {str(k): v for k, v in report.to_dict().items()} if report else {},
    }


def _timed(fn: Callable[[Job], dict], job: dict, threads: int = 1) -> dict[str, Any]:
    """Run `fn` on one job (a dict, as it travels to a worker) and time it (CPU of this process)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn(Job.from_dict(job))
    finally:
        torch.set_num_threads(before)  # in this process: the caller's setting comes back
    return {"result": result, "cpu_seconds": round(time.process_time() - cpu, 3),
            "wall_seconds": round(time.perf_counter() - wall, 3)}


@dataclass(frozen=True)
class SweepResult:
    """What `sweep` did: the grid's rows in grid order (earlier runs' included), how many jobs ran
    now and how many were already in the file, this call's wall time and the grid's CPU time."""

    path: Path
    rows: list[dict[str, Any]]
    ran: int
    skipped: int
    wall_seconds: float
    cpu_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows, "ran": self.ran, "skipped": self.skipped,
                "wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds}


def load_results(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The rows of a results file by key; a last line cut short by a crash is ignored."""
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # no newline after it: an append that did not finish
    rows = {}
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            rows[row["key"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise OutputError(f"{path} line {i} is not a sweep result row; move the file away to start afresh") from None
    return rows


def _repair(path: Path) -> None:
    """Cut an unfinished last line (a killed append) so that the next row starts on its own line."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line in one write, then fsync; a short write is undone and raised."""
    data = (json.dumps(row, separators=(",", ":"), allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError as e:
            os.ftruncate(fd, size)
            raise OutputError(f"cannot append to {path}: {e.strerror}; the rows before are intact") from None
        if written != len(data):
            os.ftruncate(fd, size)
            raise OutputError(f"cannot append to {path}: short write; the rows before are intact")
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep(
    jobs: Iterable[Job],
    out: str | os.PathLike,
    *,
    fn: Callable[[Job], dict] = run_job,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    num_cpus: int | None = None,
    results: str = RESULTS,
    progress: bool = True,
    on_result: Callable[[Job, dict], None] | None = None,
) -> SweepResult:
    """Run the jobs of `jobs` that `OUT/results` does not hold yet; returns every row of the grid.

    `fn(job) -> dict` (JSON-ready) does one job (default `run_job`); on Ray and in a process pool
    it must be picklable (a module-level function). `workers`: processes of the local engine
    (1 = this process). `num_cpus`: CPUs of the local Ray cluster started here. `on_result(job,
    row)` is called in the driver after each row is written. A job that raises stops the sweep
    (the rows written so far stay); rerun to resume. A row is found again by its job's `key`
    alone: a different `fn` over the same jobs needs its own `results` file.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    _v.positive_int(workers, "workers")
    if num_cpus is not None:
        _v.positive_int(num_cpus, "num_cpus")
    ray = _import_ray() if engine == "ray" else None
    unique: dict[str, Job] = {}
    for job in jobs:
        if not isinstance(job, Job):
            raise ConfigError(f"a sweep takes Job instances, got {type(job).__name__}")
        unique.setdefault(job.key, job)
    out_dir = check_out_path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / results
    start = time.perf_counter()
    with output_lock(path):
        _repair(path)
        done = load_results(path)
        todo = [j for k, j in unique.items() if k not in done]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc="sweep", unit="job", disable=not progress)

        def record(job: Job, timed: dict) -> None:
            row = {"key": job.key, "job": job.to_dict(), **timed,
                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            append_row(path, row)
            done[job.key] = row
            bar.update(1)
            bar.set_postfix_str(job.label(), refresh=False)
            if on_result is not None:
                on_result(job, row)

        try:
            if todo and engine == "ray":
                _run_ray(ray, todo, fn, record, address, num_cpus)
            elif todo and workers > 1:
                _run_pool(todo, fn, record, workers)
            else:
                for job in todo:
                    record(job, _timed(fn, job.to_dict()))
        finally:
            bar.close()
    rows = [done[k] for k in unique]
    return SweepResult(path, rows, len(todo), len(unique) - len(todo), round(time.perf_counter() - start, 3),
                       round(sum(r["cpu_seconds"] for r in rows), 3))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def _run_pool(todo: list[Job], fn: Callable, record: Callable, workers: int) -> None:
    pool = ProcessPoolExecutor(min(workers, len(todo)))
    try:
        pending = {pool.submit(_timed, fn, job.to_dict()): job for job in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record(pending.pop(future), future.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed job or Ctrl-C: start nothing more
        raise
    pool.shutdown()


def _run_ray(ray: Any, todo: list[Job], fn: Callable, record: Callable, address: str | None,
             num_cpus: int | None) -> None:
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(**options, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_timed)
        fn_ref = ray.put(fn)
        pending = {task.remote(fn_ref, job.to_dict()): job for job in todo}
        try:
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    record(pending.pop(ref), ray.get(ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()

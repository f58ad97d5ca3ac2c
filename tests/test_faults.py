"""Fault injection: a save interrupted, killed or failing at any step leaves the old checkpoint
or the new one (each with its own log), never a mix, and no temporaries; every CLI mistake
or interrupt ends in one line.

Every filesystem step of a save (mkdir, each write, fsync, rename, link) is counted on a dry
run; then a fault is injected at each step in turn: an OSError (in-process), SIGKILL or SIGINT
(in a forked child, so that nothing survives but what is on disk).
"""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

import fsm_probe.training.checkpoint as ckpt
from fsm_probe import _interrupt
from fsm_probe import io as fio
from fsm_probe.cli import main
from fsm_probe.errors import CheckpointError, LockedError, OutputError
from fsm_probe.models import ModelConfig
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, train
from fsm_probe.training.checkpoint import load

TASK = get_task("parity")
OLD_STEPS, NEW_STEPS = 2, 3


def _train(out, steps, seed=0, hidden=4):
    cfg = ModelConfig(arch="gru", d_vocab=2, d_out=2, d_hidden=hidden, seed=seed)
    tc = TrainConfig(train_lengths=(1, 3), batch_size=4, max_steps=steps, eval_every=1, val_size=16,
                     warmup_steps=0, patience=100, seed=seed)
    return train(TASK, cfg, tc, out_dir=out, progress=False)


CLI_NEW = ["train", "--task", "parity", "--arch", "gru", "--hidden", "4", "--max-steps", str(NEW_STEPS),
           "--train-lengths", "1:3", "--batch-size", "4", "--seed", "2", "--quiet", "--out"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A good checkpoint ("old") to copy into each trial's --out."""
    out = tmp_path_factory.mktemp("template") / "run"
    _train(out, OLD_STEPS, seed=1)
    return out


def _fresh(template, tmp_path, name="run"):
    out = tmp_path / name
    shutil.copytree(template, out)
    return out


def which(out) -> str:
    """'old' or 'new', after checking that the checkpoint loads and its log is its own."""
    steps = load(out).log["steps"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == steps, (steps, log)
    return {OLD_STEPS: "old", NEW_STEPS: "new"}[steps]


def leftovers(out) -> list[str]:
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")]
    return sorted(beside + [str(p) for p in out.parent.rglob("*.tmp")])


# ----- injection -----

_STEPS = [(os, "rename"), (os, "replace"), (os, "fsync"), (os, "mkdir"), (os, "link"),
          (ckpt, "save_file"), (pathlib.Path, "write_text")]


@contextmanager
def inject(at: int | None, action):
    """Count calls of every save step; call `action(name)` instead of the call number `at`."""
    calls: list[str] = []
    originals = [(owner, name, getattr(owner, name)) for owner, name in _STEPS]

    def wrap(name, real):
        def step(*args, **kwargs):
            calls.append(name)
            if at is not None and len(calls) == at:
                action(name)
            return real(*args, **kwargs)
        return step

    for owner, name, real in originals:
        setattr(owner, name, wrap(name, real))
    try:
        yield calls
    finally:
        for owner, name, real in originals:
            setattr(owner, name, real)


def eio(name):
    raise OSError(errno.EIO, "Input/output error (injected)")


def start_child(fn) -> tuple[int, str]:
    """Fork a child that runs `fn()` (its return value or SystemExit code is the exit code) with
    stderr to a file; returns its pid and that file."""
    err_path = f"/tmp/fsm-faults-{os.getpid()}-{time.monotonic_ns()}.err"
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            os.write(2, f"child raised {e!r}\n".encode())
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid, err_path


def finish_child(pid: int, err_path: str) -> tuple[int, str]:
    """The child's exit code (or -signal) and what it wrote to stderr."""
    _, status = os.waitpid(pid, 0)
    err = pathlib.Path(err_path).read_text()
    os.unlink(err_path)
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), err


def in_child(fn) -> tuple[int, str]:
    """Run `fn()` in a forked child and wait for it (see `start_child`)."""
    return finish_child(*start_child(fn))


def _count_api_steps(tmp_path, template):
    out = _fresh(template, tmp_path, "count")
    with inject(None, None) as calls:
        _train(out, NEW_STEPS, seed=2)
    assert which(out) == "new" and not leftovers(out)
    shutil.rmtree(out)
    return list(calls)


# ----- the save as a unit -----


@pytest.mark.slow
def test_eio_at_every_step_of_a_save_keeps_old_or_new(tmp_path, template):
    steps = _count_api_steps(tmp_path, template)
    assert {"rename", "fsync", "save_file", "mkdir"} <= set(steps)
    outcomes = []
    for k in range(1, len(steps) + 1):
        out = _fresh(template, tmp_path, f"eio{k}")
        with inject(k, eio):
            try:
                _train(out, NEW_STEPS, seed=2)
                raised = None
            except OutputError as e:
                raised = str(e)
        state = which(out)
        # an error is reported only when the old checkpoint is still there, and says so
        assert (raised is not None) == (state == "old"), (k, steps[k - 1], raised, state)
        if raised:
            assert raised.startswith(f"cannot write {out}: Input/output error") and "previous checkpoint is intact" in raised
        assert not leftovers(out), (k, steps[k - 1], leftovers(out))
        outcomes.append(state)
    assert "old" in outcomes and outcomes[-1] == "new"


@pytest.mark.slow
def test_sigkill_at_every_step_of_a_save_keeps_old_or_new(tmp_path, template):
    steps = _count_api_steps(tmp_path, template)
    seen = set()
    for k in range(1, len(steps) + 1):
        out = _fresh(template, tmp_path, f"kill{k}")

        def child(k=k, out=out):
            with inject(k, lambda name: os.kill(os.getpid(), signal.SIGKILL)):
                _train(out, NEW_STEPS, seed=2)
            return 0

        code, err = in_child(child)
        assert code in (-signal.SIGKILL, 0), err
        assert not list(out.glob("*.tmp")) if out.exists() else True
        state = which(out)  # load recovers what the killed writer left beside the directory
        assert not leftovers(out), (k, steps[k - 1], leftovers(out))
        seen.add(state)
        if code == 0:
            assert state == "new"
    assert seen == {"old", "new"}


@pytest.mark.slow
def test_sigint_at_every_step_of_a_cli_save_is_one_true_line(tmp_path, template):
    steps = _count_api_steps(tmp_path, template)
    seen = set()
    for k in range(1, len(steps) + 1):
        out = _fresh(template, tmp_path, f"int{k}")

        def child(k=k, out=out):
            with inject(k, lambda name: os.kill(os.getpid(), signal.SIGINT)):
                main([*CLI_NEW, str(out)])
            return 0

        code, err = in_child(child)
        lines = err.strip().splitlines()
        state = which(out)
        assert not leftovers(out), (k, leftovers(out))
        if code == 0:  # the last steps (after the swap) may not be reached by the CLI's save
            assert state == "new"
            continue
        assert code == 130 and len(lines) == 1, (k, code, err)
        if state == "new":
            assert lines[0] == f"fsm-probe: interrupted after {out} had been written completely", err
        else:
            assert "nothing was written" in lines[0] and "previous version is intact" in lines[0], err
        seen.add(state)
    assert "old" in seen


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_old_checkpoint(tmp_path, template):
    out = _fresh(template, tmp_path)

    def child():
        import fsm_probe.training.trainer as training

        real = training._loss

        def loss(*args):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args)

        training._loss = loss
        main([*CLI_NEW, str(out)])

    code, err = in_child(child)
    assert code == 130 and err.strip() == (
        f"fsm-probe: interrupted; nothing was written: {out} left as it was (the previous version is intact)"
    )
    assert which(out) == "old" and not leftovers(out)


def test_swallowed_interrupt_never_commits(tmp_path, template):
    out = _fresh(template, tmp_path)
    fio.note_interrupt(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            _train(out, NEW_STEPS, seed=2)
    finally:
        fio.reset_output_state()
    assert which(out) == "old" and not leftovers(out)


def test_crash_between_the_renames_is_recovered_by_load(tmp_path, template):
    out = _fresh(template, tmp_path)
    # what a writer killed after its first rename leaves: no DIR, a complete old copy beside it
    os.rename(out, out.parent / f".{out.name}.old-999999")
    (out.parent / f".{out.name}.new-999999").mkdir()
    assert which(out) == "old" and not leftovers(out)


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fio._FILE_MODE = fio._file_mode()
        _train(tmp_path / "run", 1)
    finally:
        os.umask(old)
        fio._FILE_MODE = fio._file_mode()
    for name in ("config.json", "model.safetensors", "train_log.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


def test_other_files_in_the_directory_survive_a_save(tmp_path, template):
    out = _fresh(template, tmp_path)
    (out / "report.html").write_text("<html>mine</html>")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("x")
    (out / ".ex.new-123").mkdir()  # another writer's staging directory for out/ex
    (out / "circuit.json").write_text("{}")  # a compiled model's: it would describe the wrong model
    _train(out, NEW_STEPS, seed=2)
    assert which(out) == "new" and not (out / "circuit.json").exists() and not (out / ".ex.new-123").exists()
    assert (out / "report.html").read_text() == "<html>mine</html>" and (out / "notes" / "a.txt").read_text() == "x"


# ----- full disk -----


def test_simulated_full_disk_says_so_and_keeps_the_old(tmp_path, template, capsys):
    out = _fresh(template, tmp_path)

    def enospc(name):
        raise OSError(errno.ENOSPC, "No space left on device")

    with inject(3, enospc):
        code, err = _run(capsys, *CLI_NEW, out)
    assert code == 2 and err.strip() == f"fsm-probe: error: no space left on {out}; the previous checkpoint is intact"
    assert which(out) == "old" and not leftovers(out)


@pytest.mark.slow
def test_real_full_tmpfs(tmp_path, template, capsys):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and tmpfs to mount a 64 KiB filesystem")
    try:
        out = _fresh(template, mnt)
        args = [a if a != "4" else "64" for a in CLI_NEW]  # a larger network: its weights do not fit
        code, err = _run(capsys, *args, out)
        assert code == 2 and err.strip() == f"fsm-probe: error: no space left on {out}; the previous checkpoint is intact"
        assert which(out) == "old" and not leftovers(out)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ----- concurrent runs -----


def test_second_run_on_a_locked_out_is_refused(tmp_path, template, capsys):
    out = _fresh(template, tmp_path)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        with fio.output_lock(out):
            os.write(ready_w, b"1")
            os.read(r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    try:
        code, err = _run(capsys, *CLI_NEW, out)
        with pytest.raises(LockedError, match=f"pid {pid}"):
            _train(out, NEW_STEPS, seed=2)
    finally:
        os.write(w, b"1")
        os.waitpid(pid, 0)
    assert code == 2 and err.strip() == (
        f"fsm-probe: error: {out} is being written by another fsm-probe run (pid {pid}); "
        "wait for it to finish or choose another --out"
    )
    assert which(out) == "old"
    _train(out, NEW_STEPS, seed=2)  # the lock is gone with its holder
    assert which(out) == "new"


@pytest.mark.slow
def test_two_train_runs_on_one_out(tmp_path, template, capsys):
    """The first run holds --out from its start to its save; the second is refused, and the
    checkpoint left is the first run's with the first run's log."""
    out = _fresh(template, tmp_path)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def first():
        import fsm_probe.training.trainer as training

        real = training._loss
        paused = []

        def loss(*args):
            if not paused:
                paused.append(1)
                os.write(ready_w, b"1")
                os.read(go_r, 1)
            return real(*args)

        training._loss = loss
        main([*CLI_NEW, str(out)])

    pid, err_path = start_child(first)
    os.read(ready_r, 1)  # the first run is training
    try:
        code, err = _run(capsys, *[a if a != "2" else "5" for a in CLI_NEW], out)
    finally:
        os.write(go_w, b"1")
        first_code, first_err = finish_child(pid, err_path)
    assert code == 2 and err.strip().endswith("wait for it to finish or choose another --out"), err
    assert f"(pid {pid})" in err and len(err.strip().splitlines()) == 1
    assert first_code == 0, first_err
    assert which(out) == "new" and not leftovers(out)


# ----- refused --out -----


def test_empty_out_and_unrelated_config_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *CLI_NEW, "")
    assert code == 2 and "--out '.' is the current directory" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    foreign = tmp_path / "proj"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"my": "settings"}')
    code, err = _run(capsys, *CLI_NEW, foreign)
    assert code == 2 and "is not an fsm_probe checkpoint" in err and len(err.splitlines()) == 1
    assert (foreign / "config.json").read_text() == '{"my": "settings"}'
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]


# ----- extract as a unit -----


@pytest.mark.slow
def test_extract_outputs_are_replaced_as_a_unit(tmp_path, template):
    from fsm_probe.extraction import FSMExtractor, check_extraction, save_extraction

    run = load(template)
    model = run.model
    ex = FSMExtractor(method="kmeans", max_states=4, seed=0).fit(model, run.task)
    report = check_extraction(model, ex, lengths=(5,))
    out = tmp_path / "x"
    save_extraction(out, ex, report, "<html>old</html>")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with inject(2, eio), pytest.raises(OutputError, match=f"cannot write {out}"):
        save_extraction(out, ex, {**report, "seconds": -1.0}, "<html>new</html>")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not leftovers(out)
    new = {**before, "figures.html": b"<html>new</html>"}
    with inject(None, None) as calls:
        save_extraction(out, ex, report, "<html>new</html>")
    save_extraction(out, ex, report, "<html>old</html>")
    seen = []
    for k in range(1, len(calls) + 1):

        def child(k=k):
            with inject(k, lambda name: os.kill(os.getpid(), signal.SIGKILL)):
                save_extraction(out, ex, report, "<html>new</html>")
            return 0

        code, err = in_child(child)
        assert code in (0, -signal.SIGKILL), err
        fio.recover_directory(out)  # what the next write (or load) does
        now = {p.name: p.read_bytes() for p in out.iterdir()}
        assert now in (before, new), k
        seen.append("old" if now == before else "new")
        assert not leftovers(out)
        save_extraction(out, ex, report, "<html>old</html>")
    assert "old" in seen and seen[-1] == "new"
    save_extraction(out, ex, report)
    assert (out / "figures.html").exists() is False  # the unit's own files are not carried over


# ----- interrupts while starting -----


@pytest.mark.slow
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sigint_while_importing_is_one_line(tmp_path, inherited):
    """`ignored`: how a shell starts a background job (`fsm-probe ... &`); `kill -INT` must still
    end it like Ctrl-C, not be swallowed."""
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None
    proc = subprocess.Popen([sys.executable, "-m", "fsm_probe.cli", *CLI_NEW, str(tmp_path / "run")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore)
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    for _ in range(3000):  # wait until torch is being loaded (the handler is in place before)
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fsm-probe: interrupted") and "nothing was written" in lines[0]
    assert not (tmp_path / "run").exists() and not leftovers(tmp_path / "run")


def test_interrupt_handler_only_in_the_cli():
    assert not _interrupt.is_cli()  # pytest: Ctrl-C stays a KeyboardInterrupt
    import signal as s

    # the interpreter's own handling (SIG_IGN when the suite runs as a background job), never the CLI's
    assert s.getsignal(s.SIGINT) is not _interrupt._handler
    assert s.getsignal(s.SIGINT) in (s.default_int_handler, s.SIG_IGN)


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    _, err = capsys.readouterr()
    return exc.value.code, err


def test_loading_a_missing_directory_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_error_for_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        _train(tmp_path / "f", 1)

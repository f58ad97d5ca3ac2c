"""Atomic writes: of single files (a temporary sibling, then `os.replace`) and of whole output
directories (`replace_directory`).

A directory is replaced as one unit: its new contents are written complete into a hidden
sibling `.NAME.new-PID/`, fsynced, and swapped in with two renames (`NAME` -> `.NAME.old-PID`,
new -> `NAME`) while SIGINT/SIGTERM are blocked; the old one is removed afterwards. A crash
between the two renames leaves `NAME` missing and `.NAME.old-PID` complete: `recover_directory`
(called by every later write and by `checkpoint.load`) renames it back. Writers hold an
exclusive `flock` on `.NAME.lock` beside the directory for the whole run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import LockedError, OutputError


def _file_mode() -> int:
    """The mode `open()` would give a new file (mkstemp's 0600 would make outputs private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
_DIR_MODE = 0o777 & ~(0o666 & ~_FILE_MODE)  # what mkdir gives under the same umask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _renamed_error(e: OSError, path: Path) -> OSError:
    """The same error, naming the final path instead of a temporary one."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write_many(writes: dict[str | os.PathLike, Callable[[Path], None]]) -> list[Path]:
    """Write every file to a temporary sibling first, then rename them all in order.

    Nothing is replaced until every write has succeeded, so a failure keeps the old files (and
    removes the temporaries). Files get the mode `open()` would give them (umask respected).
    """
    staged: list[tuple[Path, Path]] = []
    current: Path | None = None
    try:
        for path, write in writes.items():
            path = current = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((Path(tmp), path))
            write(Path(tmp))
            # after the write: writers such as safetensors replace the file with their own 0600 one
            os.chmod(tmp, _FILE_MODE)
            _fsync(tmp)
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
            OUTPUT_STATE[str(path)] = "written"
    except OSError as e:
        if current is None:
            raise
        raise _renamed_error(e, current) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename `tmp_path` onto `path`."""
    return atomic_write_many({path: write})[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ----- whole directories -----

# What this process has done to each output directory, for the interrupt message:
# "writing" (a new version is staged, the old one untouched), "written" (swapped in), "kept"
# (given up, the previous version untouched) or "absent" (given up, there was none).
OUTPUT_STATE: dict[str, str] = {}
_LOCKS: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): reentrant within a process
_INTERRUPTED: list[int] = []  # signals received; a set flag refuses to commit a new version


def reset_output_state() -> None:
    """Forget earlier outputs and interrupts (each CLI command reports only its own)."""
    OUTPUT_STATE.clear()
    _INTERRUPTED.clear()


def note_interrupt(signum: int) -> None:
    """Record an interrupt so that no output is swapped in after it (even if it was swallowed)."""
    _INTERRUPTED.append(signum)


def check_out_path(target: str | os.PathLike, error: type[Exception] = OutputError) -> Path:
    """`target` as an absolute output directory path, refusing '' (which `Path` reads as '.'),
    the current directory and its parents, and paths that cannot be swapped by rename."""
    if str(target).strip() == "":
        raise error("--out must name a directory, got ''")
    path = Path(os.path.abspath(target))
    cwd = Path(os.getcwd())
    if path == cwd or path in cwd.parents:
        raise error(
            f"--out {str(target)!r} is the current directory or one above it (as --out '' is); "
            "name a directory for the run"
        )
    if path.exists() and not path.is_dir():
        raise error(f"--out {str(target)!r} exists and is not a directory")
    if path.is_dir() and os.path.ismount(path):
        raise error(f"--out {str(target)!r} is a mount point; name a directory inside it")
    return path


def _sibling(target: Path, kind: str, pid: int | None = None) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid() if pid is None else pid}"


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, blocking: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output directory `target`; a second run is refused."""
    path = lock_path(target)
    key = str(path)
    if key in _LOCKS:
        fd, depth = _LOCKS[key]
        _LOCKS[key] = (fd, depth + 1)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"{target} is being written by another fsm-probe run (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _LOCKS[key] = (fd, 1)
    try:
        yield path
    finally:
        fd, depth = _LOCKS[key]
        if depth > 1:
            _LOCKS[key] = (fd, depth - 1)
        else:
            del _LOCKS[key]
            os.close(fd)  # releases the flock; the lock file stays (removing it would race)


def _leftovers(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.{kind}-*"))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def recover_directory(target: str | os.PathLike) -> None:
    """Undo what a killed writer left (call with the lock held): a missing `target` gets its
    complete old version back; staged and old copies are removed."""
    target = Path(os.path.abspath(target))
    olds = _leftovers(target, "old")
    if not target.exists() and olds:
        os.rename(olds[-1], target)
        olds = olds[:-1]
    for p in olds + _leftovers(target, "new"):
        shutil.rmtree(p, ignore_errors=True)


def readable_directory(target: str | os.PathLike) -> Path:
    """The directory a reader should open for `target`: `target` itself, after recovering what a
    killed writer left when no writer holds the lock."""
    target = Path(target)
    absolute = Path(os.path.abspath(target))
    if not _leftovers(absolute, "old") and not _leftovers(absolute, "new"):
        return target  # the common case: nothing to recover, no lock file created
    try:
        with output_lock(target):
            recover_directory(target)
    except (LockedError, OSError):
        olds = _leftovers(Path(os.path.abspath(target)), "old")
        if not target.exists() and olds:
            return olds[-1]  # a writer is between its two renames: read the complete old copy
    return target


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(os.path.join(dirpath, name))
        _fsync(dirpath)


def _carry_over(old: Path, new: Path, owned: Iterable[str]) -> None:
    """Hard-link (or copy) the entries of `old` that the new version does not own into `new`."""
    owned = set(owned)
    for entry in old.iterdir():
        dest = new / entry.name
        if entry.name in owned or dest.exists() or dest.is_symlink() or _STAGING.match(entry.name):
            continue  # (a nested output's staging copy belongs to its own writer)
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dest)


_STAGING = re.compile(r"^\..+\.(new|old)-\d+$")


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _describe_failure(e: OSError, target: Path, existed: bool, what: str) -> str:
    kept = f"the previous {what} is intact" if existed else f"no {what} was written"
    if e.errno == errno.ENOSPC:
        return f"no space left on {target}; {kept}"
    reason = e.strerror or str(e)
    return f"cannot write {target}: {reason}; {kept}"


@contextlib.contextmanager
def replace_directory(
    target: str | os.PathLike, owned: Iterable[str] = (), what: str = "output"
) -> Iterator[Path]:
    """Yield an empty staging directory; on a clean exit swap it in as `target` as one unit.

    Entries of the old `target` not named in `owned` are carried over (e.g. a report.html
    beside a checkpoint). Any failure or interrupt before the swap leaves the old `target`
    untouched and removes the staging directory. OSErrors become `OutputError`s naming `target`.
    """
    target = check_out_path(target)
    key = str(target)
    existed = target.is_dir()
    OUTPUT_STATE[key] = "kept" if existed else "absent"  # until the new version is swapped in
    stage = _sibling(target, "new")
    try:
        with output_lock(target):
            recover_directory(target)
            existed = target.is_dir()
            OUTPUT_STATE[key] = "kept" if existed else "absent"
            try:
                shutil.rmtree(stage, ignore_errors=True)
                os.mkdir(stage, _DIR_MODE)
                yield stage
                if _INTERRUPTED:
                    raise KeyboardInterrupt
                _fsync_tree(stage)
                if existed:
                    _carry_over(target, stage, owned)
                _swap(stage, target, existed)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    except OSError as e:
        raise OutputError(_describe_failure(e, target, existed, what)) from None


def _swap(stage: Path, target: Path, existed: bool) -> None:
    old = _sibling(target, "old")
    with _signals_blocked():
        if existed:
            os.rename(target, old)
        try:
            os.rename(stage, target)
        except BaseException:
            if existed:
                os.rename(old, target)
            raise
        OUTPUT_STATE[str(target)] = "written"
        with contextlib.suppress(OSError):
            _fsync(target.parent)
        if existed:  # still with signals blocked, so that no interrupt leaves it behind
            shutil.rmtree(old, ignore_errors=True)

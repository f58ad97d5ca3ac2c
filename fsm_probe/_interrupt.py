"""One interrupt behaviour for the command line: SIGINT or SIGTERM at any moment prints one
line that says what is on disk and exits with code 130.

Light on purpose (standard library only): `fsm_probe/__init__.py` installs the early handler
before importing torch when the process is the `fsm-probe` command. Until `cli.main` starts
(`running()`), an interrupt has written nothing and ends the process at once; afterwards the
handler raises `Interrupted` so that every `with` block cleans up (staging directories are
removed, the previous outputs stay) and `cli.main` prints `message()`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

_PHASE = ["idle"]  # idle (not the CLI) -> starting (imports) -> running (cli.main)


class Interrupted(BaseException):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """SIGINT/SIGTERM in the CLI. Not a KeyboardInterrupt, so that click and libraries that
    catch KeyboardInterrupt do not swallow it or print their own lines."""


def is_cli() -> bool:
    """Whether this process is the `fsm-probe` command (console script or `-m fsm_probe.cli`)."""
    if os.path.basename(sys.argv[0] or "") == "fsm-probe":
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "fsm_probe.cli" for a, b in zip(orig, orig[1:], strict=False))


def _handler(signum: int, frame: Any) -> None:
    if _PHASE[0] == "starting":
        os.write(2, b"fsm-probe: interrupted while starting; nothing was written\n")
        os._exit(130)
    io = sys.modules.get("fsm_probe.io")
    if io is not None:
        io.note_interrupt(signum)
    raise Interrupted(signal.Signals(signum).name)


def install_early() -> None:
    """Install the handler for the import phase, when this process is the CLI."""
    # SIG_IGN too: a shell starts background jobs with SIGINT ignored, and a `kill -INT` of the
    # job must still end it the same way at every moment
    if _PHASE[0] == "idle" and is_cli() and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN):
        _PHASE[0] = "starting"
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


def running() -> Any:
    """From now on an interrupt unwinds (cleaning up) and `cli.main` reports it. Returns what
    `restore` needs to put back the handlers of a process that is not the CLI (tests, API)."""
    previous = None if _PHASE[0] == "starting" else (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    _PHASE[0] = "running"
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return previous


def restore(previous: Any) -> None:
    """Undo `running()` when `main` was called inside another program."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        _PHASE[0] = "idle"


def message() -> str:
    """One true line about what the interrupted command left on disk."""
    io = sys.modules.get("fsm_probe.io")
    states = dict(io.OUTPUT_STATE) if io is not None else {}
    written = [k for k, v in states.items() if v == "written"]
    kept = [k for k, v in states.items() if v == "kept"]
    if written:
        text = f"interrupted after {', '.join(written)} had been written completely"
        if kept:
            text += f"; {', '.join(kept)} left as it was"
        return text
    if kept:
        return f"interrupted; nothing was written: {', '.join(kept)} left as it was (the previous version is intact)"
    new = [k for k, v in states.items() if v == "absent"]
    if new:
        return f"interrupted; nothing was written: {', '.join(new)} was not created"
    return "interrupted; nothing was written"

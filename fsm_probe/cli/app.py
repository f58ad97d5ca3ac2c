"""The `fsm-probe` app: its consoles, the error handling every command shares, option parsing
and `main`. Errors caused by the user exit with code 2 and one line."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..errors import ConfigError, FsmProbeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Did the network learn the state machine, or a shortcut?",
)
# User strings (task names, symbols, labels, paths) are printed literally: no markup, emoji or
# highlighting (rich's highlighter also took minutes on a 50 MB task name), and long lines are
# not wrapped (paths stay copyable).
console = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)


@app.callback()
def _global_options(
    threads: Annotated[
        int, typer.Option("--threads", help="Torch CPU threads (small models run best on 1).")
    ] = 1,
) -> None:
    """Did the network learn the state machine, or a shortcut?"""
    if threads < 1:
        raise typer.BadParameter(f"must be at least 1, got {threads}", param_hint="--threads")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:  # read by torch's thread pools when a command first imports it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def _fail(message: str) -> None:
    first = " ".join(str(message).split())
    print(f"fsm-probe: error: {first}", file=sys.stderr)
    raise typer.Exit(2)


def _check_options(kwargs: dict[str, Any]) -> None:
    """The checks every command shares, by option name (seeds, counts, sizes)."""

    for name, value in kwargs.items():
        check = _OPTION_CHECKS.get(name)
        if check is not None and value is not None:
            check(value, "--" + name.replace("_", "-"))


def _option_checks() -> dict[str, Any]:
    from .. import _validate as v

    positive = ("n", "layers", "hidden", "heads", "n_ctx", "max_steps", "batch_size", "segment_length",
                "memory", "max_states", "window", "samples", "top")
    return {"seed": v.seed, "bptt_segments": v.non_negative_int, **dict.fromkeys(positive, v.positive_int)}


_OPTION_CHECKS = _option_checks()


def _user_errors(fn):
    """Turn project errors (and unreadable files) into one line on stderr and exit code 2;
    an interrupt propagates to `main` as `Interrupted` (exit 130)."""
    from .._interrupt import Interrupted

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_options(kwargs)
            return fn(*args, **kwargs)
        except FsmProbeError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except MemoryError:
            _fail("out of memory; lower the sizes (--n, --batch-size, --hidden, --n-ctx, --lengths)")
        except RuntimeError as e:  # torch's allocator failures are RuntimeErrors
            if "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            _fail(f"out of memory ({str(e).splitlines()[0][:120]}); lower the sizes "
                  "(--n, --batch-size, --hidden, --n-ctx, --lengths)")
        except KeyboardInterrupt:
            # click would print a blank line and turn it into Abort: report it in `main` instead
            raise Interrupted("SIGINT") from None

    return wrapper


def _parse_range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"{what} must look like MIN:MAX, got {text!r}") from None
    return lo, hi


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"lengths must be comma-separated integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ConfigError(f"lengths must be positive integers, got {text!r}")
    return lengths


def _resolve_task(task: str | None, task_file: Path | None):
    from ..tasks import get_task, task_from_file

    if (task is None) == (task_file is None):
        raise ConfigError("give exactly one of --task NAME[:PARAMS] or --task-file FILE.json")
    return get_task(task) if task is not None else task_from_file(task_file)


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's exception base, plus the copy of click that newer typer releases vendor."""
    import click

    types: list[type[BaseException]] = [click.exceptions.ClickException]
    vendored = typer.BadParameter.__mro__
    types += [t for t in vendored if t.__name__ == "ClickException"]
    return tuple(types)


def _in_distribution(run: Any):
    """The length verdict at the longest training length (None without a training record), so
    that commands showing a model's internals can say when it did not learn its task."""
    from ..training.evaluation import evaluate
    from ..training.verdict import length_verdict

    trained = run.trained_length
    if trained is None:
        return None
    return length_verdict(evaluate(run.model, run.task, [trained], n=256), trained)


def _warn_not_learned(verdict: Any, what: str) -> None:
    if verdict is not None and not verdict.learned:
        console.print(f"note: {verdict.text}; {what} describe a model that does not solve its task.")


def _write_json(out: Path | None, payload: dict[str, Any], as_json: bool) -> None:
    from ..io import atomic_write_text

    text = json.dumps(payload)
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a directory; give a file name such as result.json")
        atomic_write_text(out, text + "\n")
        if not as_json:
            console.print(f"written to {out}")
    if as_json:
        print(text)


# Options `patch` and `trace` share.
_RunDir = Annotated[Path, typer.Argument(help="Checkpoint directory.")]
_Length = Annotated[int | None, typer.Option("--length", help="Sequence length (default: min(training max, 16)).")]
_Position = Annotated[int | None, typer.Option("--position", help="Input position to corrupt (default: the middle one).")]
_Seed = Annotated[int, typer.Option("--seed")]
_JsonOut = Annotated[Path | None, typer.Option("--out", help="JSON file for every value.")]
_PrintJson = Annotated[bool, typer.Option("--json", help="Print the JSON instead of the table.")]


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `fsm-probe` console script; usage errors also print one line, and an
    interrupt (SIGINT/SIGTERM) one line about what is on disk with exit code 130."""
    from .. import _interrupt
    from .. import io as _io

    _io.reset_output_state()
    previous = _interrupt.running()
    try:
        code = app(args=argv, prog_name="fsm-probe", standalone_mode=False)
    except _usage_error_types() as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        if e.format_message():
            print(f"fsm-probe: error: {e.format_message()}{hint}", file=sys.stderr)
        code = getattr(e, "exit_code", 2) or 2
    except (typer.Abort, KeyboardInterrupt, _interrupt.Interrupted):
        print(f"fsm-probe: {_interrupt.message()}", file=sys.stderr)
        code = 130
    finally:
        _interrupt.restore(previous)
    raise SystemExit(code or 0)

"""The `fsm-probe` command line: typer commands only (parse the options, call one library
function, print). `app.py` holds the app, the consoles, the shared error handling and `main`;
the commands are grouped by stage in `training.py`, `extraction.py` and `circuits.py`, and
`--help` lists them in that order."""

from .app import app, console, err_console, main

# isort: off
from . import training  # noqa: F401, E402  (registers the commands)
from . import extraction  # noqa: F401, E402
from . import circuits  # noqa: F401, E402
# isort: on
from .circuits import PATCH_WORK_LIMIT, circuit_cmd, compile_cmd, patch_cmd, trace_cmd  # noqa: E402
from .extraction import explain_cmd, extract_cmd, report_cmd  # noqa: E402
from .training import ARCHS, demo_cmd, eval_cmd, predict_cmd, tasks_cmd, train_cmd  # noqa: E402

__all__ = [
    "ARCHS", "PATCH_WORK_LIMIT", "app", "circuit_cmd", "compile_cmd", "console", "demo_cmd", "err_console",
    "eval_cmd", "explain_cmd", "extract_cmd", "main", "patch_cmd", "predict_cmd", "report_cmd", "tasks_cmd",
    "trace_cmd", "train_cmd",
]

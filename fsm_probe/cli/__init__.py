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

__all__ = ["app", "console", "err_console", "main"]

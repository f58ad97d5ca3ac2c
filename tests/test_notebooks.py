"""The example notebooks run top to bottom (with FSM_PROBE_QUICK=1 for small settings)."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_notebook(path: Path, timeout: int = 300, cwd: Path | None = None) -> object:
    """Execute `path` in a fresh kernel with FSM_PROBE_QUICK=1; returns the executed notebook.

    The kernel runs in `cwd` (default: the notebook's folder).
    """
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("FSM_PROBE_QUICK")
    os.environ["FSM_PROBE_QUICK"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd or path.parent)}}
        )
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("FSM_PROBE_QUICK", None)
        else:
            os.environ["FSM_PROBE_QUICK"] = env_before
    return nb


@pytest.mark.slow
def test_extract_automaton_notebook() -> None:
    nb = run_notebook(EXAMPLES / "01_extract_automaton.ipynb")
    outputs = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "'equivalent_to_task': True" in outputs
    assert "isomorphic to the k-means result: True" in outputs

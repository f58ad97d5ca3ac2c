import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "02_parity_transformer_circuits.ipynb"


@pytest.mark.slow
def test_notebook_02_runs_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("FSM_PROBE_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "most uniform head" in text and "first site" in text and "shift x T" in text
    assert os.environ["FSM_PROBE_QUICK"] == "1"

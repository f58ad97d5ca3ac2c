from pathlib import Path

import pytest
from test_notebooks import run_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "04_compiled_circuits.ipynb"


@pytest.mark.slow
def test_notebook_04_runs_in_quick_mode(tmp_path):
    nb = run_notebook(NOTEBOOK, timeout=300, cwd=tmp_path)
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "sequence accuracy at length 16: 1.000" in text
    assert "scan     exact           ROC-AUC 1.00" in text and "shortcut exact           ROC-AUC 1.00" in text
    assert "most uniform head of the trained model" in text

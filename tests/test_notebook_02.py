from pathlib import Path

import pytest
from test_notebooks import run_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "02_parity_transformer_circuits.ipynb"


@pytest.mark.slow
def test_notebook_02_runs_in_quick_mode(tmp_path):
    nb = run_notebook(NOTEBOOK, timeout=300, cwd=tmp_path)
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "most uniform head" in text and "first site" in text and "shift x T" in text

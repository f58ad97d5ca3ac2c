"""The committed study pages open offline: plotly.js ships beside them, no script from the network."""

import re
from pathlib import Path

from plotly.offline import get_plotlyjs

RESULTS = Path(__file__).resolve().parents[1] / "analyses" / "results"


def test_study_pages_load_no_script_from_the_network():
    pages = sorted(RESULTS.glob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        sources = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)", text, flags=re.I)
        assert sources == ["plotly.min.js"], (page.name, sources)
    assert (RESULTS / "plotly.min.js").read_text(encoding="utf-8") == get_plotlyjs()

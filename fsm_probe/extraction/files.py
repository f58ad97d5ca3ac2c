"""`save_extraction`: an extraction's files (automaton, graph, report), written as one unit."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, replace_directory
from .build import write_dot, write_graphml

if TYPE_CHECKING:
    from .checks import ExtractionReport
    from .estimator import FSMExtractor

def save_extraction(
    out: str | os.PathLike,
    extractor: FSMExtractor,
    report: ExtractionReport | Mapping[str, Any],
    figures_html: str | None = None,
) -> dict[str, Path]:
    """Write `fsm.json` (task-file format), `fsm.graphml`, `fsm.dot`, `extraction.json` and,
    if given, `figures.html` into `out`, as one unit: a crash leaves the previous set or the new
    one (`fsm_probe.io.replace_directory`); other files in `out` are kept. `extraction.json` is
    `report` (`check_extraction`'s, or any mapping) as JSON, non-finite numbers as null."""
    extractor._check_fitted()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    with replace_directory(out, owned=EXTRACTION_FILES, what="extraction") as stage:
        extractor.automaton_.save_json(stage / "fsm.json")
        write_graphml(extractor.graph_, stage / "fsm.graphml")
        write_dot(extractor.graph_, stage / "fsm.dot")
        if getattr(extractor, "counter_machine_", None) is not None:
            extractor.counter_machine_.save_json(stage / "counter_machine.json")
        if figures_html is not None:
            atomic_write_text(stage / "figures.html", figures_html)
        atomic_write_json(stage / "extraction.json", _jsonable(report))
        names = sorted(p.name for p in stage.iterdir())
    return {name: out / name for name in names if name in EXTRACTION_FILES}


EXTRACTION_FILES = ("fsm.json", "fsm.graphml", "fsm.dot", "counter_machine.json", "figures.html",
                    "extraction.json")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):  # an ExtractionReport too: its dict view is its to_dict()
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, nx.Graph):
        return nx.node_link_data(obj)
    return obj

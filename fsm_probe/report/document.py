"""`fsm-probe report`: one self-contained HTML file that locates what a trained model computes.

Sections (in `SECTIONS` order): verdict, model card, length generalization, logit lens (and tuned
lens), probes, attention, activation patching (with attribution patching checked against it),
causal tracing, circuit summary and, for RNNs and RMTs (from the memory), the extracted automaton;
each is one function of `report/sections.py`. The page is rendered by `figures/html.py`: plotly.js
is inlined once in the head, so the file opens offline. A section that cannot be computed says
why instead of failing the whole report.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..figures.html import figure_block, page
from ..io import atomic_write_text, output_lock
from ..tasks import Task
from ..training.checkpoint import load
from ..training.run import Run
from . import sections
from .context import Block, ReportContext, ReportSettings, Section, analysis_length, report_context

__all__ = [
    "SECTIONS", "ReportSettings", "SectionSpec", "analysis_length", "build_sections", "render_section",
    "report_html", "write_report",
]


class SectionSpec(NamedTuple):
    """One section of the page: its anchor, its heading, the function that builds it and the
    keys of the earlier sections that function reads."""

    key: str
    title: str
    build: Callable[..., Section]
    needs: tuple[str, ...] = ()


SECTIONS = (
    SectionSpec("verdict", "Verdict", sections.verdict),
    SectionSpec("model", "Model card", sections.model_card),
    SectionSpec("length", "Length generalization", sections.length),
    SectionSpec("lens", "Logit lens", sections.lens),
    SectionSpec("probes", "Probes", sections.probes),
    SectionSpec("attention", "Attention", sections.attention),
    SectionSpec("patching", "Activation patching", sections.patching),
    SectionSpec("tracing", "Causal tracing", sections.tracing),
    SectionSpec("circuit", "Circuit summary", sections.circuit, ("patching",)),
    SectionSpec("automaton", "Extracted automaton", sections.automaton),
)


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(b: Block) -> str:
    if b.kind == "figure":
        return figure_block(b.figure, b.text)
    if b.kind == "table":
        return _table(b.rows, b.header)
    return {
        "text": lambda t: f"<p>{t}</p>",
        "note": lambda t: f'<p class="note">{html.escape(t)}</p>',
        "verdict": lambda t: f'<p class="verdict">{t}</p>',
        "pre": lambda t: f"<pre>{html.escape(t)}</pre>",
    }[b.kind](b.text)


def render_section(section: Section) -> str:
    """The body HTML of one section: its blocks in order, figures as plotly divs."""
    return "".join(_block(b) for b in section.blocks)


def build_sections(
    ctx: ReportContext, *, progress: Callable[[str], None] | None = None
) -> dict[str, Section]:
    """Every section of the report, in `SECTIONS` order; `progress` gets each one's name as it starts."""
    started = time.perf_counter()
    done: dict[str, Section] = {}
    for spec in SECTIONS:
        if progress is not None:
            progress(f"{spec.title.lower()} ({time.perf_counter() - started:.0f} s)")
        done[spec.key] = spec.build(ctx, *(done[k] for k in spec.needs))
    return done


def report_html(
    model: nn.Module | Run,
    task: Task | None = None,
    *,
    settings: ReportSettings | None = None,
    run_dir: str | os.PathLike | None = None,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The full report for `model` (a `Run`, as `load` and `train` return, or a model with its
    `task`).

    `progress`, when given, is called with the name of each section as it starts."""
    started = time.perf_counter()
    ctx = report_context(model, settings or ReportSettings(), task=task, run_dir=run_dir)
    done = build_sections(ctx, progress=progress)
    title = title or f"fsm_probe report: {ctx.name} on {ctx.task.spec}"
    subtitle = (f"{Path(run_dir).name if run_dir is not None else 'model'}; analysis length "
                f"{ctx.length}, trained up to {ctx.train_max}; built in {time.perf_counter() - started:.1f} s")
    return page(title, subtitle, [(s.key, s.title, render_section(done[s.key])) for s in SECTIONS])


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    settings: ReportSettings | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Path:
    """Load the checkpoint in `run_dir`, build its report and write it atomically to `out`
    (default `run_dir/report.html`)."""
    settings = replace(settings or ReportSettings(), **overrides)
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    if target.is_dir():
        raise ConfigError(f"--out {str(target)!r} is a directory; give a file name such as report.html")
    run = load(run_dir)
    text = report_html(run, settings=settings, run_dir=run_dir, progress=progress)
    if target.parent.resolve() == Path(run_dir).resolve():
        # inside the checkpoint directory: not while a run swaps it (the report would be lost)
        with output_lock(run_dir):
            return atomic_write_text(target, text)
    return atomic_write_text(target, text)

"""What every report section reads (`ReportContext`, built once from the model) and what each
returns (`Section`: blocks to render and results to keep)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
from torch import nn

from ..circuits import patching
from ..circuits.sites import patch_sites
from ..errors import FsmProbeError, InputError
from ..explain import train_max_length
from ..models import ModelConfig
from ..tasks import Task
from ..training.run import Run, as_run

Memory = Literal["state", "memory", "tokens", "none"]


@dataclass
class ReportSettings:
    """How much data each analysis uses. `length=None`: min(training max length, 16)."""

    length: int | None = None
    n: int = 256
    eval_n: int = 256
    patch_n: int = 32
    trace_samples: int = 5
    tuned_steps: int = 300
    probe_samples: int = 3000
    dilution_n: int = 32
    extraction: bool = True
    extraction_max_states: int = 16
    extraction_seconds: float = 10.0
    iia_n: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> ReportSettings:
        """Small settings for tests and a first look (seconds on a CPU)."""
        return cls(n=64, eval_n=64, patch_n=8, trace_samples=2, tuned_steps=40,
                   probe_samples=600, dilution_n=8, extraction_max_states=8,
                   extraction_seconds=2.0, iia_n=16)


def memory_kind(cfg: ModelConfig) -> Memory:
    """What carries the input from step to step, the one architecture question the report asks:
    'state' (an RNN's hidden state), 'memory' (an RMT's memory, written once per segment),
    'tokens' (a scratchpad's generated labels) or 'none' (a Transformer recomputes from the prefix)."""
    if cfg.is_rnn:
        return "state"
    return {"rmt": "memory", "scratchpad": "tokens"}.get(cfg.arch, "none")


def analysis_length(run: Run, length: int | None = None) -> int:
    """The sequence length the report (and `fsm-probe patch`/`trace`) analyses: `length`, else
    min(training max, 16), within a Transformer's context and at least 2."""
    length = length or min(train_max_length(run), 16)
    cfg = run.model_config
    if memory_kind(cfg) != "state":
        length = min(length, cfg.n_ctx)
    return max(length, 2)


@dataclass(frozen=True)
class ReportContext:
    """Everything the sections share, computed once: the model and its task, the training record,
    the settings, the lengths to analyse and the corruption pairs patching and tracing both use."""

    run: Run
    model: nn.Module
    cfg: ModelConfig
    name: str  # the architecture, for titles
    memory: Memory
    task: Any
    training: dict[str, Any]
    settings: ReportSettings
    run_dir: str | os.PathLike | None
    length: int  # the analysis length
    train_max: int
    cap: int  # the longest input the model accepts
    lengths: tuple[int, ...]  # the lengths of the verdict and the length section
    sites: tuple[str, ...]  # the patching sites
    pairs: tuple[np.ndarray, np.ndarray, int] | None  # clean, corrupted, corrupted position
    pairs_error: Exception | None = None

    def corruption_pairs(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The shared (clean, corrupted, position), or the error that prevented them."""
        if self.pairs is None:
            raise self.pairs_error or InputError("no corruption pairs")
        return self.pairs


def report_context(
    model: nn.Module | Run,
    settings: ReportSettings,
    *,
    task: Task | None = None,
    run_dir: str | os.PathLike | None = None,
) -> ReportContext:
    """The context of the report on `model` (a `Run`, as `load` and `train` return, or a model
    with its `task`)."""
    run = as_run(model, task)
    model, task, cfg = run.model, run.task, run.model_config
    training = run.record
    memory = memory_kind(cfg)
    train_max = train_max_length(run)
    length = analysis_length(run, settings.length)
    cap = 10**9 if memory == "state" else cfg.n_ctx
    lengths = tuple(sorted({x for x in (max(2, train_max // 2), train_max, 2 * train_max,
                                        4 * train_max, 10 * train_max) if x <= cap}))
    pairs, error = None, None
    try:
        pairs = patching.corruption_pairs(task, length, settings.patch_n, settings.seed)
    except (FsmProbeError, ValueError, RuntimeError) as e:
        error = e
    return ReportContext(
        run=run, model=model, cfg=cfg, name=cfg.arch, memory=memory, task=task, training=training,
        settings=settings, run_dir=run_dir, length=length, train_max=train_max, cap=cap,
        lengths=lengths, sites=tuple(patch_sites(cfg)), pairs=pairs, pairs_error=error,
    )


BlockKind = Literal["text", "note", "verdict", "pre", "figure", "table"]


@dataclass(frozen=True)
class Block:
    """One piece of a section. `text` is HTML for text, verdict and a figure's caption, plain
    text for note and pre."""

    kind: BlockKind
    text: str = ""
    figure: go.Figure | None = None
    rows: tuple[tuple[Any, ...], ...] = ()
    header: tuple[str, ...] = ()


@dataclass
class Section:
    """What one section function returns: its blocks in order, and its results (the analysis
    objects, keyed by name) for later sections and for callers that want the numbers."""

    key: str
    blocks: list[Block] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def text(self, text: str) -> None:
        self.blocks.append(Block("text", text))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text))

    def verdict(self, text: str) -> None:
        self.blocks.append(Block("verdict", text))

    def pre(self, text: str) -> None:
        self.blocks.append(Block("pre", text))

    def figure(self, fig: go.Figure, caption: str) -> None:
        self.blocks.append(Block("figure", caption, figure=fig))

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
        self.blocks.append(Block("table", rows=tuple(map(tuple, rows)), header=tuple(header)))

    @contextlib.contextmanager
    def guarded(self) -> Iterator[Section]:
        """Run a section's body; if it fails, keep what it produced and say why, so one
        analysis that cannot be computed does not fail the whole report."""
        try:
            yield self
        except (FsmProbeError, ValueError, RuntimeError) as e:
            self.note(f"Section not computed: {type(e).__name__}: {e}")

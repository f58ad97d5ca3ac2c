"""`fsm-probe demo`: the main job end to end in a few CPU minutes.

Trains a GRU and a Transformer on parity with lengths 1-40, then measures both far beyond
training: the GRU keeps its state, the Transformer's parallel shortcut breaks.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .evaluation import evaluate
from .io import atomic_write_json
from .models import ModelConfig
from .tasks import get_task
from .training import TrainConfig, train

DEMO_LENGTHS = (10, 40, 41, 100, 200, 400)


def run_demo(out: Path, console: Console | None = None, progress: bool = True) -> dict:
    """Train both models, evaluate them per length, print and save the table."""
    console = console or Console()
    task = get_task("parity")
    a = task.automaton
    runs = {
        "gru": (
            ModelConfig("gru", a.n_symbols, a.n_labels, d_hidden=32, seed=0),
            TrainConfig(train_lengths=(1, 40), max_steps=1500, seed=0),
        ),
        "transformer": (
            ModelConfig(
                "transformer", a.n_symbols, a.n_labels, n_layers=2, d_hidden=32, n_heads=4,
                positional="learned", n_ctx=512, seed=0,
            ),
            TrainConfig(train_lengths=(1, 40), max_steps=600, lr=3e-3, eval_every=200, seed=0),
        ),
    }
    results = {}
    for name, (model_cfg, train_cfg) in runs.items():
        console.print(f"[bold]training {name}[/] on parity, lengths 1-40")
        model = train(task, model_cfg, train_cfg, out_dir=Path(out) / name, progress=progress)
        results[name] = evaluate(model, task, DEMO_LENGTHS, n=256)
    table = Table(title="Length generalization on parity (per-position accuracy; trained on 1-40)")
    table.add_column("length", justify="right")
    for name in runs:
        table.add_column(name, justify="right")
    for length in DEMO_LENGTHS:
        table.add_row(str(length), *(f"{results[n][length]['accuracy']:.4f}" for n in runs))
    console.print(table)
    atomic_write_json(Path(out) / "demo.json", {n: {str(k): v for k, v in r.items()} for n, r in results.items()})
    console.print(f"runs and demo.json written to {out}")
    return json.loads(json.dumps(results))

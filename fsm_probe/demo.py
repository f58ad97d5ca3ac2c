"""`fsm-probe demo`: the main job end to end in a few CPU minutes.

Trains a GRU and a Transformer on flip-flop (write 0 / write 1 / read: the label is the last
value written) on every prefix of length-40 sequences, then measures both in distribution and far
beyond it. Each model then gets `fsm-probe explain`'s verdict: did it learn its training lengths
at all, and if so does it implement the automaton (the GRU: its state's interchange accuracy and
the extracted automaton) or a shortcut (the Transformer: where along the sequence its accuracy
falls, and why)?
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .explain import explain
from .io import atomic_write_json
from .models import ModelConfig
from .tasks import get_task
from .training.evaluation import evaluate
from .training.trainer import TrainConfig, train

TASK = "flipflop"
TRAIN_LENGTH = 40
DEMO_LENGTHS = (10, TRAIN_LENGTH, 41, 100, 200, 400)


def demo_runs(n_symbols: int, n_labels: int) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The two models and their budgets. Every position is supervised, so training on length 40
    trains every prefix length 1-40 (and each position as often as the last one)."""
    lengths = (TRAIN_LENGTH, TRAIN_LENGTH)
    return {
        "gru": (
            ModelConfig("gru", n_symbols, n_labels, d_hidden=32, seed=0),
            TrainConfig(train_lengths=lengths, max_steps=1500, warmup_steps=100, seed=0),
        ),
        "transformer": (
            ModelConfig("transformer", n_symbols, n_labels, n_layers=2, d_hidden=32, n_heads=4,
                        positional="learned", n_ctx=512, seed=0),
            TrainConfig(train_lengths=lengths, max_steps=1000, lr=3e-3, warmup_steps=100,
                        eval_every=100, curriculum=0, final_weight=0.0, seed=0),
        ),
    }


def run_demo(out: Path, console: Console | None = None, progress: bool = True) -> dict:
    """Train both models, evaluate them per length, print the verdicts and evidence, save demo.json."""
    console = console or Console(markup=False, emoji=False, highlight=False)
    task = get_task(TASK)
    a = task.automaton
    runs = demo_runs(a.n_symbols, a.n_labels)
    results, models = {}, {}
    for name, (model_cfg, train_cfg) in runs.items():
        console.print(f"training {name} on {task.spec}, every prefix of length {TRAIN_LENGTH} "
                      f"(lengths 1-{TRAIN_LENGTH})", style="bold")
        run = train(task, model_cfg, train_cfg, out_dir=Path(out) / name, progress=progress)
        t = run.log
        why = ("validation reached the target" if t["stopped_early"]
               else "the step budget was spent")
        console.print(f"{name}: stopped at step {t['steps']} of {train_cfg.max_steps} ({why}), "
                      f"{t['seconds']:.1f} s")
        results[name] = evaluate(run.model, task, DEMO_LENGTHS, n=256)
        models[name] = run

    table = Table(title=f"Final-position accuracy on {task.spec} (per-position in brackets); "
                        f"trained up to length {TRAIN_LENGTH}")
    table.add_column("length", justify="right")
    for name in runs:
        table.add_column(name, justify="right")
    for length in DEMO_LENGTHS:
        tag = f"{length} (longest trained)" if length == TRAIN_LENGTH else str(length)
        table.add_row(tag, *(f"{results[n][length]['final_accuracy']:.3f} "
                             f"({results[n][length]['accuracy']:.3f})" for n in runs))
    console.print(table)
    explanations = {}
    for name, run in models.items():
        explanations[name] = explain(run, n=256, lengths=DEMO_LENGTHS)
        console.print(explanations[name].text())
    summary = {
        "task": task.spec,
        "accuracy": {n: {str(k): v for k, v in r.items()} for n, r in results.items()},
        "explanations": {n: e.to_dict() for n, e in explanations.items()},
    }
    atomic_write_json(Path(out) / "demo.json", summary)
    console.print(
        f"runs and demo.json written to {out}; next: fsm-probe extract {Path(out) / 'gru'} --out "
        f"{Path(out) / 'gru' / 'fsm'}, fsm-probe patch {Path(out) / 'transformer'}, "
        f"fsm-probe report {Path(out) / 'transformer'}"
    )
    return json.loads(json.dumps(summary))

"""Commands of the first stages: list tasks, train, evaluate, predict, the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import _validate as _v
from ..errors import ConfigError
from .app import _parse_lengths, _parse_range, _resolve_task, _user_errors, app, console


@app.command("tasks")
@_user_errors
def tasks_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the task zoo with parameters and sources."""
    from ..tasks import get_task, list_tasks

    infos = list_tasks()
    rows = []
    for info in infos:
        a = get_task(info.name).automaton
        rows.append(
            {
                "name": info.name,
                "params": info.defaults,
                "symbols": a.n_symbols,
                "labels": a.n_labels,
                "minimal_states": a.minimize().n_states,
                "description": info.description,
                "source": info.source,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="fsm_probe tasks (spec: NAME[:k=v,...])")
    for col in ("name", "params", "symbols", "states", "description"):
        table.add_column(col)
    for r in rows:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(r["name"], params, str(r["symbols"]), str(r["minimal_states"]), r["description"])
    console.print(table)


ARCHS = ("rnn, gru, lstm, second_order (one recurrent matrix per symbol, for arbitrary transition tables), transformer, rmt (recurrent memory Transformer), scratchpad (feeds back its own state "
         "outputs), compressive (Compressive Transformer: FIFO memory + compressed memory), hmt (Hierarchical Memory "
         "Transformer: recall from a cache of memory embeddings)")


def _recipe_help(text: str, key: str) -> str:
    from ..training.recipes import describe

    sized = (" Recurrent nets on automata above 16 states or 4 symbols, and on counter tasks, take "
             "sized defaults (fsm_probe.training.recipes).") if key in ("d_hidden", "lr", "max_steps", "batch_size") else ""
    return f"{text} Default per --arch: {describe(key)}.{sized}"


@app.command("train")
@_user_errors
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoint + logs).")],
    arch: Annotated[str, typer.Option("--arch", help=ARCHS)] = "gru",
    task: Annotated[str | None, typer.Option("--task", help="NAME[:k=v,...], see `fsm-probe tasks`.")] = None,
    task_file: Annotated[Path | None, typer.Option("--task-file", help="Automaton JSON file.")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help=_recipe_help("Layers.", "n_layers"), show_default=False)] = None,
    hidden: Annotated[int | None, typer.Option("--hidden", help=_recipe_help("State size / d_model.", "d_hidden"), show_default=False)] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="Attention heads. Default: 4.", show_default=False)] = None,
    d_mlp: Annotated[int | None, typer.Option("--d-mlp", help="0 = attention only. Default: 4 x d_model.", show_default=False)] = None,
    positional: Annotated[str | None, typer.Option("--positional", help=_recipe_help("learned, rotary, none.", "positional"), show_default=False)] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx")] = 512,
    train_lengths: Annotated[str, typer.Option("--train-lengths")] = "1:40",
    max_steps: Annotated[int | None, typer.Option("--max-steps", help=_recipe_help("Step budget (training stops earlier at --target).", "max_steps"), show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help=_recipe_help("Sequences per step.", "batch_size"), show_default=False)] = None,
    lr: Annotated[str | None, typer.Option("--lr", help=_recipe_help("Peak learning rate (warmup, then cosine); a comma list (1e-3,3e-3) trains one model per rate.", "lr"), show_default=False)] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Train N models at once (seeds --seed..--seed+N-1; batched for rnn, gru, lstm, each the same as training it alone; 8 GRUs measured 1.4x faster than one after the other on a CPU: analyses/results/bench_seeds.md), written to OUT/seed{S} (OUT/seed{S}_lr{lr} with several --lr).", show_default=False)] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help=_recipe_help("Warmup steps.", "warmup_steps"), show_default=False)] = None,
    full_length: Annotated[bool | None, typer.Option("--full-length/--sampled-lengths", help=_recipe_help("Draw every batch at the longest training length (every prefix is still a training example when every position is supervised).", "full_length"), show_default=False)] = None,
    mixed_inputs: Annotated[float | None, typer.Option("--mixed-inputs", help=_recipe_help("Share of training words drawn with their own symbol probabilities (Dirichlet(1), over the symbols the task's sampler draws) instead of from the task's sampler. Recurrent nets on deep automata (over 16 states or 4 symbols, and a state more than 12 symbols from the start) take 0.5.", "mixed_inputs"), show_default=False)] = None,
    curriculum: Annotated[int | None, typer.Option("--curriculum", help=_recipe_help("Length curriculum: first maximum training length, grown as validation passes 0.99 (0 = off).", "curriculum"), show_default=False)] = None,
    final_weight: Annotated[float | None, typer.Option("--final-weight", help=_recipe_help("Extra weight of the final-position loss.", "final_weight"), show_default=False)] = None,
    target: Annotated[float, typer.Option("--target", help="Stop at this validation accuracy (per-position and final-position, at the longest training length).")] = 1.0,
    final_only: Annotated[bool | None, typer.Option("--final-only/--every-position", help="Supervise the final position only or every position. Default: the task's protocol.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    segment_length: Annotated[int | None, typer.Option("--segment-length", help=_recipe_help("rmt, compressive, hmt: tokens per segment.", "segment_length"), show_default=False)] = None,
    memory: Annotated[int | None, typer.Option("--memory", help=_recipe_help("rmt: memory vectors; compressive: FIFO memory slots; hmt: cached memory embeddings.", "n_memory"), show_default=False)] = None,
    compressed: Annotated[int | None, typer.Option("--compressed", help=_recipe_help("compressive: compressed memory slots.", "n_compressed"), show_default=False)] = None,
    compression_rate: Annotated[int | None, typer.Option("--compression-rate", help=_recipe_help("compressive: evicted slots per compressed slot (divides --segment-length).", "compression_rate"), show_default=False)] = None,
    bptt_segments: Annotated[int, typer.Option("--bptt-segments", help="rmt, compressive, hmt: back-propagate through this many segments (0 = all).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a model on a task and save the checkpoint to --out.

    Options left unset take the architecture's recipe (fsm_probe.training.recipes: the settings measured to learn). The last line says why training stopped and whether the model learned in distribution.
    """
    from ..training.recipes import recipe, retry_hint
    from ..training.trainer import TrainConfig, accuracy_text, train

    rates = _parse_lrs(lr)
    if seeds is not None:
        _v.positive_int(seeds, "--seeds")
    the_task = _resolve_task(task, task_file)
    model_cfg = recipe(arch, the_task).model_config(
        the_task, n_layers=layers, d_hidden=hidden, n_heads=heads, d_mlp=d_mlp, positional=positional,
        n_ctx=n_ctx, seed=seed, segment_length=segment_length, n_memory=memory, bptt_segments=bptt_segments,
        n_compressed=compressed, compression_rate=compression_rate,
    )
    train_cfg = TrainConfig(
        train_lengths=_parse_range(train_lengths, "--train-lengths"), batch_size=batch_size,
        max_steps=max_steps, lr=rates[0] if rates else None, warmup_steps=warmup, curriculum=curriculum, final_weight=final_weight,
        full_length=full_length, mixed_inputs=mixed_inputs,
        target_accuracy=target, final_only=final_only, seed=seed,
    )
    if seeds is not None or (rates and len(rates) > 1):
        _train_many(the_task, model_cfg, train_cfg, seeds or 1, rates, out, quiet)
        return
    t = train(the_task, model_cfg, train_cfg, out_dir=out, progress=not quiet).log
    val = "none" if t["final_val_accuracy"] is None else accuracy_text(t["final_val_accuracy"])
    console.print(
        f"trained {arch} on {the_task.spec}: {t['steps']} steps, {t['seconds']:.1f}s, "
        f"validation accuracy {val} -> {out}"
    )
    if t["learned"]:
        console.print(t["stop_reason"])
    else:
        console.print(f"{t['stop_reason']}; {retry_hint(arch, the_task)}", style="bold red")


def _parse_lrs(text: str | None) -> list[float] | None:
    """`--lr`: one learning rate or a comma list (checked by `seeds.lr_list`)."""
    from ..training.seeds import lr_list

    if text is None:
        return None
    try:
        rates = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--lr must be a number or a comma list of numbers (1e-3,3e-3), got {text!r}") from None
    try:
        return lr_list(rates)
    except ConfigError as e:
        raise ConfigError(f"--lr: {e}") from None


def _train_many(task, model_cfg, train_cfg, seeds: int, rates: list[float] | None, out: Path, quiet: bool) -> None:
    """`--seeds N` / several `--lr`: train them together, one summary line per model and the best."""
    from ..training.seeds import train_seeds
    from ..training.trainer import accuracy_text

    runs = train_seeds(task, model_cfg, train_cfg, seeds=seeds, lrs=rates, out_dir=out, progress=not quiet)
    for r in runs:
        t = r.log
        val = "none" if t["final_val_accuracy"] is None else accuracy_text(t["final_val_accuracy"])
        console.print(f"seed {r.train_config.seed}, lr {r.train_config.lr:g}: {t['steps']} steps, "
                      f"validation accuracy {val}, {t['stop_reason']} -> {r.directory}")
    best = max(runs, key=lambda r: (r.log["final_val_accuracy"] or 0.0, bool(r.learned), -r.log["steps"]))
    line = f"best: seed {best.train_config.seed}, lr {best.train_config.lr:g} -> {best.directory}"
    console.print(line if best.learned else f"{line} (did not learn in distribution)",
                  style=None if best.learned else "bold red")


@app.command("eval")
@_user_errors
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    lengths: Annotated[str, typer.Option("--lengths")] = "41,100,500",
    n: Annotated[int, typer.Option("--n", help="Sequences per length.")] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 12345,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate a checkpoint per length (per-position and final-position accuracy)."""
    from ..models.config import check_eval_memory
    from ..training.checkpoint import load
    from ..training.evaluation import evaluate
    from ..training.verdict import length_verdict

    wanted = _parse_lengths(lengths)
    run = load(run_dir)
    trained = run.trained_length
    lengths_run = sorted({*wanted, *([trained] if trained else [])})
    check_eval_memory(run.model_config, n, max(lengths_run))
    # in distribution first: the longest training length is always measured
    report = evaluate(run.model, run.task, lengths_run, n=n, seed=seed)
    verdict = length_verdict(report, trained) if trained else None
    if as_json:
        print(json.dumps({"lengths": {str(k): v for k, v in report.items()},
                          "verdict": verdict.to_dict() if verdict else None}))
        return
    table = Table(title=f"{run_dir}: {run.model_config.arch} on {run.task.spec}")
    for col in ("length", "accuracy", "final accuracy", "sequence accuracy"):
        table.add_column(col, justify="right")
    for length, r in report.items():
        tag = f"{length} (longest trained)" if length == trained else str(length)
        table.add_row(tag, f"{r['accuracy']:.4f}", f"{r['final_accuracy']:.4f}", f"{r['sequence_accuracy']:.4f}")
    console.print(table)
    if verdict is not None:
        console.print(verdict.text)


@app.command("predict")
@_user_errors
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    sequences: Annotated[list[str], typer.Argument(help="Input words, symbols separated by spaces or given as one string of 1-char symbols.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the model's label after every prefix of each input word, next to the true one."""
    from ..models import predict_logits
    from ..training.checkpoint import load

    run = load(run_dir)
    a = run.task.automaton
    rows = []
    for text in sequences:
        tokens = a.encode(text.split() if " " in text.strip() else text)
        if len(tokens) == 0:
            raise ConfigError(f"input word {text!r} is empty; give at least one symbol")
        pred = predict_logits(run.model, tokens[None]).argmax(-1)[0].tolist()
        true = a.run_outputs(tokens[None])[0].tolist()
        rows.append(
            {
                "input": a.decode(tokens),
                "predicted": [a.labels[i] for i in pred],
                "true": [a.labels[i] for i in true],
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        console.print(" ".join(r["input"]))
        console.print("  predicted: " + " ".join(r["predicted"]))
        console.print("  true:      " + " ".join(r["true"]))


@app.command("demo")
@_user_errors
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the demo runs are written.")] = Path("runs/demo"),
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """The main job, end to end: GRU vs Transformer on flip-flop, trained to length 40, tested to 400, with a verdict and evidence per model."""
    from ..demo import run_demo

    run_demo(out, console=console, progress=not quiet)

"""The `fsm-probe` command line. Errors caused by the user exit with code 2 and one line."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, FsmProbeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Did the network learn the state machine, or a shortcut?",
)
# User strings (task names, symbols, labels, paths) are printed literally: no markup, emoji or
# highlighting (rich's highlighter also took minutes on a 50 MB task name).
console = Console(markup=False, emoji=False, highlight=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False)


@app.callback()
def _global_options(
    threads: Annotated[
        int, typer.Option("--threads", help="Torch CPU threads (small models run best on 1).")
    ] = 1,
) -> None:
    """Did the network learn the state machine, or a shortcut?"""
    if threads < 1:
        raise typer.BadParameter(f"must be at least 1, got {threads}", param_hint="--threads")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:  # read by torch's thread pools when a command first imports it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def _fail(message: str) -> None:
    first = " ".join(str(message).split())
    print(f"fsm-probe: error: {first}", file=sys.stderr)
    raise typer.Exit(2)


def _user_errors(fn):
    """Turn project errors (and unreadable files) into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FsmProbeError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except KeyboardInterrupt:
            _fail("interrupted; nothing half-written was kept")

    return wrapper


def _parse_range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"{what} must look like MIN:MAX, got {text!r}") from None
    return lo, hi


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"lengths must be comma-separated integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ConfigError(f"lengths must be positive integers, got {text!r}")
    return lengths


def _resolve_task(task: str | None, task_file: Path | None):
    from .tasks import get_task, task_from_file

    if (task is None) == (task_file is None):
        raise ConfigError("give exactly one of --task NAME[:PARAMS] or --task-file FILE.json")
    return get_task(task) if task is not None else task_from_file(task_file)


@app.command("tasks")
@_user_errors
def tasks_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the task zoo with parameters and sources."""
    from .tasks import get_task, list_tasks

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


ARCHS = "rnn, gru, lstm, transformer, rmt (recurrent memory Transformer), scratchpad (feeds back its own state outputs)"


@app.command("train")
@_user_errors
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoint + logs).")],
    arch: Annotated[str, typer.Option("--arch", help=ARCHS)] = "gru",
    task: Annotated[str | None, typer.Option("--task", help="NAME[:k=v,...], see `fsm-probe tasks`.")] = None,
    task_file: Annotated[Path | None, typer.Option("--task-file", help="Automaton JSON file.")] = None,
    layers: Annotated[int, typer.Option("--layers")] = 1,
    hidden: Annotated[int | None, typer.Option("--hidden", help="State size / d_model.")] = None,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    d_mlp: Annotated[int | None, typer.Option("--d-mlp", help="0 = attention only.")] = None,
    positional: Annotated[str, typer.Option("--positional", help="learned, rotary, none")] = "learned",
    n_ctx: Annotated[int, typer.Option("--n-ctx")] = 512,
    train_lengths: Annotated[str, typer.Option("--train-lengths")] = "1:40",
    max_steps: Annotated[int, typer.Option("--max-steps")] = 3000,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    target: Annotated[float, typer.Option("--target", help="Stop at this validation accuracy.")] = 1.0,
    final_only: Annotated[bool | None, typer.Option("--final-only/--every-position")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    segment_length: Annotated[int, typer.Option("--segment-length", help="rmt: tokens per segment.")] = 2,
    memory: Annotated[int, typer.Option("--memory", help="rmt: number of memory vectors.")] = 1,
    bptt_segments: Annotated[int, typer.Option("--bptt-segments", help="rmt: back-propagate through this many segments (0 = all).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a model on a task and save the checkpoint to --out."""
    from .models import ModelConfig
    from .training import TrainConfig, train

    the_task = _resolve_task(task, task_file)
    a = the_task.automaton
    model_cfg = ModelConfig(
        arch=arch, d_vocab=a.n_symbols, d_out=a.n_labels, n_layers=layers,
        d_hidden=64 if hidden is None else hidden, n_heads=heads, d_mlp=d_mlp, positional=positional,
        n_ctx=n_ctx, seed=seed, segment_length=segment_length, n_memory=memory,
        bptt_segments=bptt_segments,
    )
    train_cfg = TrainConfig(
        train_lengths=_parse_range(train_lengths, "--train-lengths"), batch_size=batch_size,
        max_steps=max_steps, lr=lr, target_accuracy=target, final_only=final_only, seed=seed,
    )
    model = train(the_task, model_cfg, train_cfg, out_dir=out, progress=not quiet)
    t = model.fsm_training
    console.print(
        f"trained {arch} on {the_task.spec}: {t['steps']} steps, {t['seconds']:.1f}s, "
        f"validation accuracy {t['final_val_accuracy']:.4f} -> {out}"
    )


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
    from .checkpoint import load
    from .evaluation import evaluate

    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    wanted = _parse_lengths(lengths)
    model = load(run_dir)
    report = evaluate(model, model.fsm_task, wanted, n=n, seed=seed)
    if as_json:
        print(json.dumps({"lengths": {str(k): v for k, v in report.items()}}))
        return
    table = Table(title=f"{run_dir}: {model.fsm_config.arch} on {model.fsm_task.spec}")
    for col in ("length", "accuracy", "final accuracy", "sequence accuracy"):
        table.add_column(col, justify="right")
    for length, r in report.items():
        table.add_row(str(length), f"{r['accuracy']:.4f}", f"{r['final_accuracy']:.4f}", f"{r['sequence_accuracy']:.4f}")
    console.print(table)


@app.command("predict")
@_user_errors
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    sequences: Annotated[list[str], typer.Argument(help="Input words, symbols separated by spaces or given as one string of 1-char symbols.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the model's label after every prefix of each input word, next to the true one."""
    from .checkpoint import load
    from .models import predict_logits

    model = load(run_dir)
    a = model.fsm_task.automaton
    rows = []
    for text in sequences:
        tokens = a.encode(text.split() if " " in text.strip() else text)
        pred = predict_logits(model, tokens[None]).argmax(-1)[0].tolist()
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
    from .demo import run_demo

    run_demo(out, console=console, progress=not quiet)


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's exception base, plus the copy of click that newer typer releases vendor."""
    import click

    types: list[type[BaseException]] = [click.exceptions.ClickException]
    vendored = typer.BadParameter.__mro__
    types += [t for t in vendored if t.__name__ == "ClickException"]
    return tuple(types)


@app.command("extract")
@_user_errors
def extract_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for fsm.json, fsm.graphml, fsm.dot, figures.html, extraction.json.")],
    method: Annotated[str, typer.Option("--method", help="kmeans, grid, gmm, agglomerative or lstar.")] = "kmeans",
    site: Annotated[str | None, typer.Option("--site", help="Hook name(s), comma-separated; default: the full recurrent state (rmt: hook_memory, the automaton then reads segments).")] = None,
    components: Annotated[float, typer.Option("--components", help="PCA dimensions (>= 1) or variance fraction (< 1).")] = 10,
    max_states: Annotated[int | None, typer.Option("--max-states", help="Largest automaton to return (default: no limit; the number of states grows while held-out fidelity improves).")] = None,
    lengths: Annotated[str, typer.Option("--lengths", help="Held-out lengths for the checks.")] = "50,100",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print extraction.json.")] = False,
) -> None:
    """Recover the automaton a trained model implements, check it, and write it to --out."""
    from .checkpoint import load
    from .extraction import FSMExtractor, check_extraction, save_extraction
    from .figures.extraction import extraction_figures, figures_html

    model = load(run_dir)
    sites = [s.strip() for s in site.split(",") if s.strip()] if site else None
    n_components = int(components) if components >= 1 else float(components)
    ex = FSMExtractor(
        method=method, site=sites, n_components=n_components, max_states=max_states, seed=seed
    ).fit(model)
    report = check_extraction(model, ex, lengths=tuple(_parse_lengths(lengths)))
    summary = (
        f"{run_dir}: {model.fsm_config.arch} on {model.fsm_task.spec}, method {method}\n"
        f"states {report['n_states']} (raw {report['n_states_raw']}), fidelity {report['fidelity']:.4f}, "
        f"equivalent to task: {report['equivalent_to_task']}"
    )
    page = figures_html(extraction_figures(ex), title=f"fsm-probe extract {run_dir}", summary=summary)
    save_extraction(out, ex, report, page)
    if as_json:
        print(json.dumps(json.loads((out / "extraction.json").read_text(encoding="utf-8"))))
        return
    ic = report["interchange_accuracy"]
    console.print(summary + (f", interchange accuracy {ic:.4f}" if ic is not None else "")
                  + f", {report['seconds']:.2f}s -> {out}")
    cm = report.get("counter_machine")
    if cm is not None:
        console.print(f"not finite-state: the state count grows with length; counter machine with "
                      f"{cm['n_counters']} counter(s) and {cm['n_control_states']} control states, "
                      f"fidelity {cm['fidelity']:.4f} -> {out / 'counter_machine.json'}")
    if report.get("capped"):
        cap = report["cap"]
        flag = "--max-states" if cap["limit"] == "max_states" else "the time limit"
        console.print(f"capped: the search for more states stopped at {flag} = {cap['value']} while "
                      "fidelity was still improving; the automaton may be too small")
    if report.get("counterexample") is not None:
        sep = " " if report.get("segment_length") else ""
        console.print(f"counterexample: {sep.join(report['counterexample']) or '(empty word)'}")


def _pairs(model: Any, length: int | None, n: int, position: int | None, seed: int):
    """Clean/corrupted pairs from the run's task at the report's default length."""
    from .patching import corruption_pairs
    from .report import analysis_length

    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    if length is not None and length < 2:
        raise ConfigError(f"--length must be at least 2, got {length}")
    n_ctx = None if model.fsm_config.is_rnn else model.fsm_config.n_ctx
    if length is not None and n_ctx is not None and length > n_ctx:
        raise ConfigError(f"--length {length} exceeds the model's context n_ctx={n_ctx}")
    return corruption_pairs(model.fsm_task, analysis_length(model, length), n, seed, position)


def _write_json(out: Path | None, payload: dict[str, Any], as_json: bool) -> None:
    from .io import atomic_write_text

    text = json.dumps(payload)
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a directory; give a file name such as result.json")
        atomic_write_text(out, text + "\n")
        if not as_json:
            console.print(f"written to {out}")
    if as_json:
        print(text)


def _cell(axes: tuple[str, ...], idx: tuple[int, ...]) -> str:
    return " ".join(f"{a}={i}" for a, i in zip(axes, idx, strict=True))


# Options `patch` and `trace` share.
_RunDir = Annotated[Path, typer.Argument(help="Checkpoint directory.")]
_Length = Annotated[int | None, typer.Option("--length", help="Sequence length (default: min(training max, 16)).")]
_Position = Annotated[int | None, typer.Option("--position", help="Input position to corrupt (default: the middle one).")]
_Seed = Annotated[int, typer.Option("--seed")]
_JsonOut = Annotated[Path | None, typer.Option("--out", help="JSON file for every value.")]
_PrintJson = Annotated[bool, typer.Option("--json", help="Print the JSON instead of the table.")]


@app.command("patch")
@_user_errors
def patch_cmd(
    run_dir: _RunDir,
    site: Annotated[str | None, typer.Option("--site", help="Comma-separated sites. Default: resid_pre,attn_out,mlp_out,head_out (Transformer), hidden[,cell] (RNN), memory[,memory_slot] (RMT).")] = None,
    direction: Annotated[str, typer.Option("--direction", help="denoise (patch clean into corrupted) or noise.")] = "denoise",
    method: Annotated[str, typer.Option("--method", help="exact (activation patching) or attribution (first-order estimate).")] = "exact",
    steps: Annotated[int, typer.Option("--steps", help="attribution: integrated-gradient steps (1 = plain).")] = 1,
    length: _Length = None,
    n: Annotated[int, typer.Option("--n", help="Clean/corrupted pairs.")] = 16,
    position: _Position = None,
    top: Annotated[int, typer.Option("--top", help="Cells to list.")] = 10,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
) -> None:
    """Activation patching (or its attribution estimate) on symmetric-corruption pairs of the
    run's task; lists the cells with the largest effect (normalised: 0 = corrupted, 1 = clean)."""
    import numpy as np

    from . import patching
    from .checkpoint import load

    if method not in ("exact", "attribution"):
        raise ConfigError(f"--method must be exact or attribution, got {method!r}")
    if top < 1:
        raise ConfigError(f"--top must be positive, got {top}")
    model = load(run_dir)
    cfg = model.fsm_config
    sites = patching.default_sites(cfg) if site is None else [x.strip() for x in site.split(",") if x.strip()]
    if not sites:
        raise ConfigError(f"--site names no site: {site!r}")
    for name in sites:
        patching.check_site(cfg, name)
    clean, corrupted, pos = _pairs(model, length, n, position, seed)
    a = model.fsm_task.automaton
    metric = patching.logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    if method == "exact":
        results = {
            s: patching.activation_patching(model, clean, corrupted, metric, site=s, direction=direction)
            for s in sites
        }
    else:
        results = patching.attribution_patching(
            model, clean, corrupted, metric, sites=sites, direction=direction, steps=steps
        )
    first = next(iter(results.values()))
    payload = {
        "run": str(run_dir), "task": model.fsm_task.spec, "arch": cfg.arch, "method": method,
        "steps": steps if method == "attribution" else None, "length": int(clean.shape[1]),
        "position": pos, "n_pairs": len(clean), "metric": "logit difference, clean - corrupted final label",
        "results": {s: r.to_dict() for s, r in results.items()},
    }
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(
        f"{cfg.arch} on {model.fsm_task.spec}: {len(clean)} pairs of length {clean.shape[1]}, symbol at "
        f"position {pos} replaced; logit difference clean {first.clean_value:.3f}, corrupted "
        f"{first.corrupted_value:.3f} ({direction}, {method})"
    )
    gap = first.clean_value - first.corrupted_value
    if abs(gap) < 1e-2:
        console.print(f"note: the clean and corrupted runs differ by only {gap:+.2g} in logit difference "
                      "(the model barely tells them apart); normalised effects are not meaningful.")
    cells = [
        (abs(float(r.effect()[idx])), s, r, idx)
        for s, r in results.items() for idx in np.ndindex(*r.values.shape)
    ]
    table = Table(title=f"top {min(top, len(cells))} cells by |effect|")
    for col in ("site", "cell", "metric", "effect", "normalised"):
        table.add_column(col, justify="right" if col not in ("site", "cell") else "left")
    for _, s, r, idx in sorted(cells, key=lambda c: -c[0])[:top]:
        value = float(r.values[idx])
        norm = f"{(value - first.corrupted_value) / gap:.3f}" if gap else "n/a"
        table.add_row(s, _cell(r.axes, idx), f"{value:.3f}", f"{value - r.baseline:+.3f}", norm)
    console.print(table)


@app.command("trace")
@_user_errors
def trace_cmd(
    run_dir: _RunDir,
    kind: Annotated[str, typer.Option("--kind", help="resid (hidden state / memory), mlp or attn.")] = "resid",
    noise: Annotated[str, typer.Option("--noise", help="Multiple of the embedding std, or 'symmetric' (swap the symbol).")] = "3.0",
    window: Annotated[int, typer.Option("--window", help="Layers restored together (mlp/attn).")] = 1,
    samples: Annotated[int, typer.Option("--samples", help="Noise draws per sequence.")] = 10,
    length: _Length = None,
    n: Annotated[int, typer.Option("--n", help="Sequences.")] = 16,
    position: _Position = None,
    top: Annotated[int, typer.Option("--top", help="States to list.")] = 10,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
) -> None:
    """ROME-style causal tracing: corrupt one input position, restore one state at a time and
    list the states whose restoration brings back the most of p(clean prediction)."""
    import torch

    from .checkpoint import load
    from .tracing import causal_tracing

    if noise != "symmetric":
        try:
            level: float | str = float(noise)
        except ValueError:
            raise ConfigError(f"--noise must be a number or 'symmetric', got {noise!r}") from None
    else:
        level = noise
    if top < 1:
        raise ConfigError(f"--top must be positive, got {top}")
    model = load(run_dir)
    clean, _, pos = _pairs(model, length, n, position, seed)
    result = causal_tracing(
        model, clean, corrupt_positions=pos, noise=level, kind=kind, window=window, n_samples=samples,
        seed=seed, automaton=model.fsm_task.automaton,
    )
    payload = {"run": str(run_dir), "task": model.fsm_task.spec, "arch": model.fsm_config.arch,
               "length": int(clean.shape[1]), **result.to_dict()}
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(
        f"{model.fsm_config.arch} on {model.fsm_task.spec}: {len(clean)} sequences of length "
        f"{clean.shape[1]}, position {pos} corrupted ({'symbol swap' if level == 'symmetric' else f'noise {level} x std'}); "
        f"p(clean prediction): clean {result.high_score:.3f}, corrupted {result.low_score:.3f}"
    )
    effect = result.indirect_effect()
    by_segment = result.segment_length is not None
    table = Table(title=f"top {min(top, effect.numel())} restored {kind} states by indirect effect")
    for col in (*(["segment"] if by_segment else ["layer", "position"]), "p(restored)", "indirect effect"):
        table.add_column(col, justify="right")
    for flat in torch.argsort(-effect.flatten())[:top].tolist():
        li, p = divmod(flat, effect.shape[1])
        cells = [str(p)] if by_segment else [str(li), str(p)]
        table.add_row(*cells, f"{float(result.scores[li, p]):.3f}", f"{float(effect[li, p]):+.3f}")
    console.print(table)


@app.command("report")
@_user_errors
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default RUN_DIR/report.html).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small samples: a first look in seconds.")] = False,
    length: Annotated[int | None, typer.Option("--length", help="Sequence length analysed (default: min(training max, 16)).")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Sequences for the lens, probes and attention.")] = None,
    extraction: Annotated[bool, typer.Option("--extraction/--no-extraction", help="Extract the automaton (RNNs).")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines on stderr.")] = False,
) -> None:
    """Write one self-contained HTML report: verdict, lens, probes, attention, patching, tracing,
    circuit and the extracted automaton."""
    from .report import ReportSettings, write_report

    if length is not None and length < 2:
        raise ConfigError(f"--length must be at least 2, got {length}")
    if n is not None and n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}")
    settings = ReportSettings.quick() if quick else ReportSettings()
    overrides = {"length": length, "extraction": extraction, "seed": seed}
    if n is not None:
        overrides["n"] = n
    progress = None if quiet else (lambda section: err_console.print(f"report: {section}"))
    path = write_report(run_dir, out, settings, progress=progress, **overrides)
    console.print(f"report written to {path}")


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `fsm-probe` console script; usage errors also print one line."""
    try:
        code = app(args=argv, prog_name="fsm-probe", standalone_mode=False)
    except _usage_error_types() as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        if e.format_message():
            print(f"fsm-probe: error: {e.format_message()}{hint}", file=sys.stderr)
        code = getattr(e, "exit_code", 2) or 2
    except (typer.Abort, KeyboardInterrupt):
        print("fsm-probe: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()

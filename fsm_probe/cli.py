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
# highlighting (rich's highlighter also took minutes on a 50 MB task name), and long lines are
# not wrapped (paths stay copyable).
console = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)


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


def _check_options(kwargs: dict[str, Any]) -> None:
    """The checks every command shares, by option name (seeds, counts, sizes)."""

    for name, value in kwargs.items():
        check = _OPTION_CHECKS.get(name)
        if check is not None and value is not None:
            check(value, "--" + name.replace("_", "-"))


def _option_checks() -> dict[str, Any]:
    from . import _validate as v

    positive = ("n", "layers", "hidden", "heads", "n_ctx", "max_steps", "batch_size", "segment_length",
                "memory", "max_states", "window", "samples", "top")
    return {"seed": v.seed, "bptt_segments": v.non_negative_int, **dict.fromkeys(positive, v.positive_int)}


_OPTION_CHECKS = _option_checks()


def _user_errors(fn):
    """Turn project errors (and unreadable files) into one line on stderr and exit code 2;
    an interrupt propagates to `main` as `Interrupted` (exit 130)."""
    from ._interrupt import Interrupted

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_options(kwargs)
            return fn(*args, **kwargs)
        except FsmProbeError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except MemoryError:
            _fail("out of memory; lower the sizes (--n, --batch-size, --hidden, --n-ctx, --lengths)")
        except RuntimeError as e:  # torch's allocator failures are RuntimeErrors
            if "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            _fail(f"out of memory ({str(e).splitlines()[0][:120]}); lower the sizes "
                  "(--n, --batch-size, --hidden, --n-ctx, --lengths)")
        except KeyboardInterrupt:
            # click would print a blank line and turn it into Abort: report it in `main` instead
            raise Interrupted("SIGINT") from None

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


def _recipe_help(text: str, key: str) -> str:
    from .training.recipes import describe

    sized = (" Recurrent nets on automata above 16 states or 4 symbols, and on counter tasks, take "
             "sized defaults (fsm_probe.training.recipes).") if key in ("d_hidden", "lr", "max_steps") else ""
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
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: Annotated[float | None, typer.Option("--lr", help=_recipe_help("Peak learning rate (warmup, then cosine).", "lr"), show_default=False)] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help=_recipe_help("Warmup steps.", "warmup_steps"), show_default=False)] = None,
    full_length: Annotated[bool | None, typer.Option("--full-length/--sampled-lengths", help=_recipe_help("Draw every batch at the longest training length (every prefix is still a training example when every position is supervised).", "full_length"), show_default=False)] = None,
    curriculum: Annotated[int | None, typer.Option("--curriculum", help=_recipe_help("Length curriculum: first maximum training length, grown as validation passes 0.99 (0 = off).", "curriculum"), show_default=False)] = None,
    final_weight: Annotated[float | None, typer.Option("--final-weight", help=_recipe_help("Extra weight of the final-position loss.", "final_weight"), show_default=False)] = None,
    target: Annotated[float, typer.Option("--target", help="Stop at this validation accuracy (per-position and final-position, at the longest training length).")] = 1.0,
    final_only: Annotated[bool | None, typer.Option("--final-only/--every-position", help="Supervise the final position only or every position. Default: the task's protocol.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    segment_length: Annotated[int | None, typer.Option("--segment-length", help="rmt: tokens per segment. Default: 2.", show_default=False)] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="rmt: number of memory vectors. Default: 1.", show_default=False)] = None,
    bptt_segments: Annotated[int, typer.Option("--bptt-segments", help="rmt: back-propagate through this many segments (0 = all).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a model on a task and save the checkpoint to --out.

    Options left unset take the architecture's recipe (fsm_probe.training.recipes: the settings measured to learn). The last line says why training stopped and whether the model learned in distribution.
    """
    from .training.recipes import recipe
    from .training.trainer import TrainConfig, train

    the_task = _resolve_task(task, task_file)
    model_cfg = recipe(arch, the_task).model_config(
        the_task, n_layers=layers, d_hidden=hidden, n_heads=heads, d_mlp=d_mlp, positional=positional,
        n_ctx=n_ctx, seed=seed, segment_length=segment_length, n_memory=memory, bptt_segments=bptt_segments,
    )
    train_cfg = TrainConfig(
        train_lengths=_parse_range(train_lengths, "--train-lengths"), batch_size=batch_size,
        max_steps=max_steps, lr=lr, warmup_steps=warmup, curriculum=curriculum, final_weight=final_weight,
        full_length=full_length,
        target_accuracy=target, final_only=final_only, seed=seed,
    )
    t = train(the_task, model_cfg, train_cfg, out_dir=out, progress=not quiet).log
    val = "none" if t["final_val_accuracy"] is None else f"{t['final_val_accuracy']:.4f}"
    console.print(
        f"trained {arch} on {the_task.spec}: {t['steps']} steps, {t['seconds']:.1f}s, "
        f"validation accuracy {val} -> {out}"
    )
    if t["learned"]:
        console.print(t["stop_reason"])
    else:
        console.print(f"{t['stop_reason']}; try more --max-steps, another --lr or --seed", style="bold red")


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
    from .training.checkpoint import load
    from .training.evaluation import evaluate
    from .training.verdict import length_verdict

    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    from .models.config import check_eval_memory

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
    from .models import predict_logits
    from .training.checkpoint import load

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
    components: Annotated[str, typer.Option("--components", help="PCA: 'auto' (a rotation keeping up to 256 axes, so rare states of large automata survive), dimensions (>= 1) or a variance fraction (< 1).")] = "auto",
    max_states: Annotated[int | None, typer.Option("--max-states", help="Largest automaton to return (default: no limit; the number of states grows while held-out fidelity improves).")] = None,
    lengths: Annotated[str, typer.Option("--lengths", help="Held-out lengths for the checks.")] = "50,100",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print extraction.json.")] = False,
) -> None:
    """Recover the automaton a trained model implements, check it, and write it to --out."""
    from .extraction import FSMExtractor, check_extraction, save_extraction
    from .figures.extraction import extraction_figures, figures_html
    from .training.checkpoint import load

    run = load(run_dir)
    sites = [s.strip() for s in site.split(",") if s.strip()] if site else None
    n_components = _parse_components(components)
    ex = FSMExtractor(
        method=method, site=sites, n_components=n_components, max_states=max_states, seed=seed
    ).fit(run.model, run.task)
    report = check_extraction(run.model, ex, lengths=tuple(_parse_lengths(lengths)))
    summary = (
        f"{run_dir}: {run.model_config.arch} on {run.task.spec}, method {method}\n"
        f"states {report['n_states']} (raw {report['n_states_raw']}), fidelity {report['fidelity']:.4f}, "
        f"equivalent to task: {report['equivalent_to_task']}"
    )
    page = figures_html(extraction_figures(ex), title=f"fsm-probe extract {run_dir}", summary=summary)
    save_extraction(out, ex, report, page)
    if as_json:
        print(json.dumps(json.loads((out / "extraction.json").read_text(encoding="utf-8"))))
        return
    ic = report["interchange_accuracy"]
    _warn_not_learned(_in_distribution(run), "the automaton below and its checks")
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


def _in_distribution(run: Any):
    """The length verdict at the longest training length (None without a training record), so
    that commands showing a model's internals can say when it did not learn its task."""
    from .training.evaluation import evaluate
    from .training.verdict import length_verdict

    trained = run.trained_length
    if trained is None:
        return None
    return length_verdict(evaluate(run.model, run.task, [trained], n=256), trained)


def _warn_not_learned(verdict: Any, what: str) -> None:
    if verdict is not None and not verdict.learned:
        console.print(f"note: {verdict.text}; {what} describe a model that does not solve its task.")


def _parse_components(text: str) -> int | float | str:
    """`--components`: "auto", a number of dimensions >= 1, or a variance fraction in (0, 1)."""
    if text.strip() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--components must be 'auto', a dimension count or a fraction, got {text!r}") from None
    if not (value >= 1 and value == int(value)) and not 0 < value < 1:
        raise ConfigError(f"--components must be 'auto', an integer >= 1 or a fraction in (0, 1), got {text!r}")
    return int(value) if value >= 1 else value


def _pairs(run: Any, length: int | None, n: int, position: int | None, seed: int):
    """Clean/corrupted pairs from the run's task at the report's default length."""
    from .circuits.patching import corruption_pairs
    from .report.document import analysis_length

    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    if length is not None and length < 2:
        raise ConfigError(f"--length must be at least 2, got {length}")
    n_ctx = run.model_config.max_length
    if length is not None and n_ctx is not None and length > n_ctx:
        raise ConfigError(f"--length {length} exceeds the model's context n_ctx={n_ctx}")
    if length is not None:
        _check_patch_work(run.model_config, length, n)
    return corruption_pairs(run.task, analysis_length(run, length), n, seed, position)


PATCH_WORK_LIMIT = 2e9  # position-steps of patched runs: about a minute of a small network


def _check_patch_work(cfg: Any, length: int, n: int) -> None:
    """Refuse a patch/trace whose cost (one patched run of `length` per position and layer, for
    `n` sequences; quadratic in `length`) or memory cannot finish in reasonable time."""
    from .models.config import check_memory

    work = float(n) * cfg.n_layers * length * length
    if work > PATCH_WORK_LIMIT:
        raise ConfigError(
            f"--length {length} with --n {n} means about {work:.1e} position-steps of patched runs "
            f"(more than {PATCH_WORK_LIMIT:.0e}: hours on a CPU); lower --length or --n"
        )
    check_memory(cfg, n, length, lower="--length or --n")


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
    from .circuits import patching, sites
    from .training.checkpoint import load

    if method not in ("exact", "attribution"):
        raise ConfigError(f"--method must be exact or attribution, got {method!r}")
    if top < 1:
        raise ConfigError(f"--top must be positive, got {top}")
    run = load(run_dir)
    model = run.model
    cfg = run.model_config
    names = sites.patch_sites(cfg) if site is None else [x.strip() for x in site.split(",") if x.strip()]
    if not names:
        raise ConfigError(f"--site names no site: {site!r}")
    for name in names:
        sites.check_site(cfg, name)
    clean, corrupted, pos = _pairs(run, length, n, position, seed)
    a = run.task.automaton
    metric = patching.logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    if method == "exact":
        results = {
            s: patching.activation_patching(model, clean, corrupted, metric, site=s, direction=direction)
            for s in names
        }
    else:
        results = patching.attribution_patching(
            model, clean, corrupted, metric, sites=names, direction=direction, steps=steps
        )
    first = next(iter(results.values()))
    learned = _in_distribution(run)
    payload = {
        "run": str(run_dir), "task": run.task.spec, "arch": cfg.arch, "method": method,
        "in_distribution": learned.to_dict() if learned else None,
        "steps": steps if method == "attribution" else None, "length": int(clean.shape[1]),
        "position": pos, "n_pairs": len(clean), "metric": "logit difference, clean - corrupted final label",
        "results": {s: r.to_dict() for s, r in results.items()},
    }
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(
        f"{cfg.arch} on {run.task.spec}: {len(clean)} pairs of length {clean.shape[1]}, symbol at "
        f"position {pos} replaced; logit difference clean {first.clean_value:.3f}, corrupted "
        f"{first.corrupted_value:.3f} ({direction}, {method})"
    )
    _warn_not_learned(learned, "the effects below")
    gap = first.clean_value - first.corrupted_value
    if abs(gap) < 1e-2:
        console.print(f"note: the clean and corrupted runs differ by only {gap:+.2g} in logit difference "
                      "(the model barely tells them apart); normalised effects are not meaningful.")
    cells = patching.top_cells(results, top)
    table = Table(title=f"top {len(cells)} cells by |effect|")
    for col in ("site", "cell", "metric", "effect", "normalised"):
        table.add_column(col, justify="right" if col not in ("site", "cell") else "left")
    for c in cells:
        norm = "n/a" if c.normalized is None else f"{c.normalized:.3f}"
        table.add_row(c.site, c.label(), f"{c.value:.3f}", f"{c.effect:+.3f}", norm)
    console.print(table)


@app.command("trace")
@_user_errors
def trace_cmd(
    run_dir: _RunDir,
    site: Annotated[str | None, typer.Option("--site", help="State restored: the model's state (resid_pre, RNN hidden, RMT memory; the default), or a Transformer sublayer's output, attn_out or mlp_out.", show_default=False)] = None,
    noise: Annotated[str, typer.Option("--noise", help="Multiple of the embedding std, or 'symmetric' (swap the symbol).")] = "3.0",
    window: Annotated[int, typer.Option("--window", help="Layers restored together (attn_out/mlp_out).")] = 1,
    samples: Annotated[int, typer.Option("--samples", help="Noise draws per sequence.")] = 10,
    length: _Length = None,
    n: Annotated[int, typer.Option("--n", help="Sequences.")] = 16,
    position: _Position = None,
    top: Annotated[int, typer.Option("--top", help="States to list.")] = 10,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
    kind: Annotated[str | None, typer.Option("--kind", hidden=True, help="Renamed --site.")] = None,
) -> None:
    """ROME-style causal tracing: corrupt one input position, restore one state at a time and
    list the states whose restoration brings back the most of p(clean prediction)."""
    from .circuits import sites
    from .circuits.tracing import causal_tracing
    from .training.checkpoint import load

    if kind is not None:
        new = {"resid": "resid_pre (RNN: hidden, RMT: memory)", "mlp": "mlp_out", "attn": "attn_out"}
        hint = new.get(kind, "resid_pre (RNN: hidden, RMT: memory), mlp_out or attn_out")
        raise ConfigError(f"trace --kind is now --site, as in patch: use --site {hint} instead of --kind {kind!r}")
    if noise != "symmetric":
        try:
            level: float | str = float(noise)
        except ValueError:
            raise ConfigError(f"--noise must be a number or 'symmetric', got {noise!r}") from None
        if not 0 <= level < float("inf"):
            raise ConfigError(f"--noise must be a non-negative finite number or 'symmetric', got {noise!r}")
    else:
        level = noise
    if top < 1:
        raise ConfigError(f"--top must be positive, got {top}")
    run = load(run_dir)
    model = run.model
    trace_kind = "resid" if site is None else sites.trace_kind(run.model_config, site)
    clean, _, pos = _pairs(run, length, n, position, seed)
    result = causal_tracing(
        model, clean, corrupt_positions=pos, noise=level, kind=trace_kind, window=window, n_samples=samples,
        seed=seed, automaton=run.task.automaton,
    )
    learned = _in_distribution(run)
    payload = {"run": str(run_dir), "task": run.task.spec, "arch": run.model_config.arch,
               "length": int(clean.shape[1]), "in_distribution": learned.to_dict() if learned else None,
               **result.to_dict()}
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(
        f"{run.model_config.arch} on {run.task.spec}: {len(clean)} sequences of length "
        f"{clean.shape[1]}, position {pos} corrupted ({'symbol swap' if level == 'symmetric' else f'noise {level} x std'}); "
        f"p(clean prediction): clean {result.high_score:.3f}, corrupted {result.low_score:.3f}"
    )
    _warn_not_learned(learned, "the indirect effects below")
    by_segment = result.segment_length is not None
    states = result.top_cells(top)
    table = Table(title=f"top {len(states)} restored {trace_kind} states by indirect effect")
    for col in (*(["segment"] if by_segment else ["layer", "position"]), "p(restored)", "indirect effect"):
        table.add_column(col, justify="right")
    for state in states:
        cells = [str(state.position)] if by_segment else [str(state.layer), str(state.position)]
        table.add_row(*cells, f"{state.score:.3f}", f"{state.effect:+.3f}")
    console.print(table)


@app.command("explain")
@_user_errors
def explain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    n: Annotated[int, typer.Option("--n", help="Sequences per length for accuracy.")] = 128,
    iia_n: Annotated[int, typer.Option("--iia-n", help="Base/source pairs for interchange interventions.")] = 64,
    extraction: Annotated[bool, typer.Option("--extraction/--no-extraction", help="Extract the automaton (RNNs, RMTs).")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
) -> None:
    """Does the model implement the automaton? The verdict (implements, shortcut, not_learned,
    unverified) with its evidence: accuracy per length, the state's site and IIA, the failure's
    mechanism, the extracted automaton."""
    from .explain import explain
    from .training.checkpoint import load

    for name, value in (("--n", n), ("--iia-n", iia_n)):
        if value < 2:
            raise ConfigError(f"{name} must be at least 2, got {value}")
    if seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")
    result = explain(load(run_dir), n=n, iia_n=iia_n, extraction=extraction, seed=seed)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    console.print(result.text())


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
    from .report.document import ReportSettings, write_report

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


# ----- compiled models and circuit discovery (issue 14) -----


@app.command("compile")
@_user_errors
def compile_cmd(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory (plus circuit.json).")],
    task: Annotated[str | None, typer.Option("--task", help="NAME[:k=v,...], see `fsm-probe tasks`.")] = None,
    task_file: Annotated[Path | None, typer.Option("--task-file", help="Automaton JSON file.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="transformer (RNNs: fsm_probe.models.compiled.compile_rnn).")] = "transformer",
    construction: Annotated[str, typer.Option("--construction", help="scan (any automaton with a small monoid) or shortcut (counters mod n, reset automata).")] = "scan",
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Longest input the model is exact on.")] = 32,
    heads: Annotated[int, typer.Option("--heads", help="Heads per layer: head 0 is the circuit's, the others decoys.")] = 2,
    max_monoid: Annotated[int, typer.Option("--max-monoid", help="scan: largest transformation monoid tabulated.")] = 64,
    lengths: Annotated[str, typer.Option("--lengths", help="Lengths to check accuracy at.")] = "8,32",
    as_json: Annotated[bool, typer.Option("--json", help="Print circuit.json and the accuracies.")] = False,
) -> None:
    """Compile an automaton into Transformer weights: a checkpoint that evaluates, patches and
    loads in plain TransformerLens like a trained one, plus its ground-truth circuit.json."""
    from .models import model_config
    from .models.compiled_transformer import compile_transformer
    from .training.checkpoint import save
    from .training.evaluation import evaluate

    if arch != "transformer":
        raise ConfigError(f"--arch must be transformer (compiled RNNs come from compile_rnn), got {arch!r}")
    the_task = _resolve_task(task, task_file)
    built = compile_transformer(the_task.automaton, construction, n_ctx=n_ctx, n_heads=heads, max_monoid=max_monoid)
    model = built.model
    wanted = [x for x in _parse_lengths(lengths) if x <= n_ctx]
    report = evaluate(model, the_task, wanted, n=256) if wanted else {}
    circuit = built.circuit.to_dict()
    training = {"compiled": {"construction": construction, "kind": circuit["kind"], "n_ctx": n_ctx},
                "accuracy": {str(k): v["accuracy"] for k, v in report.items()}}
    text = json.dumps(circuit, indent=2) + "\n"
    save(model, out, task=the_task, training=training,
         extra_files={"circuit.json": lambda tmp: tmp.write_text(text, encoding="utf-8")})
    if as_json:
        print(json.dumps({"circuit": circuit, "accuracy": training["accuracy"]}))
        return
    cfg = model_config(model)
    acc = ", ".join(f"{k}: {v['accuracy']:.4f}" for k, v in report.items())
    console.print(
        f"compiled {the_task.spec} ({construction}: {circuit['kind']}) into a Transformer: "
        f"{cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_hidden}, d_mlp {cfg.d_mlp}, "
        f"n_ctx {n_ctx}; accuracy {acc} -> {out}"
    )
    console.print(f"circuit: {', '.join(circuit['components'])}  ({circuit['description']})")


@app.command("circuit")
@_user_errors
def circuit_cmd(
    run_dir: _RunDir,
    method: Annotated[str, typer.Option("--method", help="exact (activation patching), attribution, verified (attribution + exact top-k) or acdc (greedy pruning).")] = "exact",
    length: Annotated[int | None, typer.Option("--length", help="Sequence length (default 16; compiled models: n_ctx).")] = None,
    n: Annotated[int, typer.Option("--n", help="Clean/corrupted pairs.")] = 32,
    threshold: Annotated[float, typer.Option("--threshold", help="Normalised score to be in the circuit.")] = 0.1,
    top_k: Annotated[int, typer.Option("--top-k", help="verified: cells checked exactly.")] = 10,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
) -> None:
    """Rank every head and MLP (RNN: every state) by its causal importance for the final label
    and print the circuit; with RUN_DIR/circuit.json (a compiled model), score it (ROC-AUC)."""
    from .circuits.discovery import discover_circuit, roc_auc
    from .training.checkpoint import load

    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    run = load(run_dir)
    found = discover_circuit(run, method=method, length=length, n=n, seed=seed, threshold=threshold, top_k=top_k)
    payload = {"run": str(run_dir), "task": run.task.spec, "arch": run.model_config.arch, **found.to_dict()}
    truth_file = Path(run_dir) / "circuit.json"
    if truth_file.is_file():
        try:
            truth = json.loads(truth_file.read_text(encoding="utf-8"))["components"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{truth_file} is not a circuit file ({e})") from None
        payload["truth"] = truth
        payload["roc_auc"] = roc_auc(found.scores(), truth)
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(
        f"{run.model_config.arch} on {run.task.spec}: {found.n_pairs} pairs of length {found.length}, "
        f"one symbol changed per pair at positions {found.settings['corrupted_positions'][:8]}"
        f"{'...' if len(found.settings['corrupted_positions']) > 8 else ''}; method {method}, {found.seconds:.2f}s"
    )
    table = Table(title=f"components by causal importance (normalised; circuit: score >= {threshold})")
    for col in ("component", "score", "peak position", "effect", "in circuit"):
        table.add_column(col, justify="left" if col == "component" else "right")
    kept = set(found.circuit())
    for c in found.components:
        effect = "" if c.effect is None else f"{c.effect:+.3f}"
        table.add_row(c.name, f"{c.score:.3f}", "" if c.position is None else str(c.position), effect,
                      "yes" if c.name in kept else "")
    console.print(table)
    console.print(f"circuit: {', '.join(found.circuit()) or '(empty)'}")
    if "roc_auc" in payload:
        console.print(f"ground truth ({truth_file}): {', '.join(payload['truth'])}; ROC-AUC {payload['roc_auc']:.3f}")


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `fsm-probe` console script; usage errors also print one line, and an
    interrupt (SIGINT/SIGTERM) one line about what is on disk with exit code 130."""
    from . import _interrupt
    from . import io as _io

    _io.reset_output_state()
    previous = _interrupt.running()
    try:
        code = app(args=argv, prog_name="fsm-probe", standalone_mode=False)
    except _usage_error_types() as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        if e.format_message():
            print(f"fsm-probe: error: {e.format_message()}{hint}", file=sys.stderr)
        code = getattr(e, "exit_code", 2) or 2
    except (typer.Abort, KeyboardInterrupt, _interrupt.Interrupted):
        print(f"fsm-probe: {_interrupt.message()}", file=sys.stderr)
        code = 130
    finally:
        _interrupt.restore(previous)
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()

"""Circuit commands: activation patching, causal tracing, compiled Transformers, circuit discovery,
interchange interventions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import ConfigError
from .app import (
    _in_distribution,
    _JsonOut,
    _Length,
    _parse_lengths,
    _Position,
    _PrintJson,
    _resolve_task,
    _RunDir,
    _Seed,
    _user_errors,
    _warn_not_learned,
    _write_json,
    app,
    console,
)


def _pairs(run: Any, length: int | None, n: int, position: int | None, seed: int):
    """Clean/corrupted pairs from the run's task at the report's default length."""
    from ..circuits.patching import corruption_pairs
    from ..report.document import analysis_length

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
    from ..models.config import check_memory

    work = float(n) * cfg.n_layers * length * length
    if work > PATCH_WORK_LIMIT:
        raise ConfigError(
            f"--length {length} with --n {n} means about {work:.1e} position-steps of patched runs "
            f"(more than {PATCH_WORK_LIMIT:.0e}: hours on a CPU); lower --length or --n"
        )
    check_memory(cfg, n, length, lower="--length or --n")


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
    from ..circuits import patching, sites
    from ..training.checkpoint import load

    if method not in ("exact", "attribution"):
        raise ConfigError(f"--method must be exact or attribution, got {method!r}")
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
    from ..circuits import sites
    from ..circuits.tracing import causal_tracing
    from ..training.checkpoint import load

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


@app.command("compile")
@_user_errors
def compile_cmd(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory (plus circuit.json for a Transformer).")],
    task: Annotated[str | None, typer.Option("--task", help="NAME[:k=v,...], see `fsm-probe tasks`.")] = None,
    task_file: Annotated[Path | None, typer.Option("--task-file", help="Automaton JSON file.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="transformer, rnn (one unit per state and last symbol) or second_order (one unit per state).")] = "transformer",
    construction: Annotated[str | None, typer.Option("--construction", help="Transformer: scan (default; any automaton with a small monoid) or shortcut (counters mod n, reset automata).")] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Transformer: longest input the model is exact on (RNNs: any).")] = 32,
    heads: Annotated[int, typer.Option("--heads", help="Transformer: heads per layer: head 0 is the circuit's, the others decoys.")] = 2,
    max_monoid: Annotated[int, typer.Option("--max-monoid", help="Transformer scan: largest transformation monoid tabulated.")] = 64,
    lengths: Annotated[str, typer.Option("--lengths", help="Lengths to check accuracy at.")] = "8,32",
    as_json: Annotated[bool, typer.Option("--json", help="Print circuit.json (a Transformer's) and the accuracies.")] = False,
) -> None:
    """Compile an automaton into Transformer weights (a checkpoint that evaluates, patches and
    loads in plain TransformerLens like a trained one, plus its ground-truth circuit.json) or
    into RNN weights (`fsm_probe.models.compiled.compile_rnn`; exact at every length)."""
    from ..models import model_config
    from ..models.compiled_transformer import compile_transformer
    from ..training.checkpoint import save
    from ..training.evaluation import evaluate

    if arch not in ("transformer", "rnn", "second_order"):
        raise ConfigError(f"--arch must be transformer, rnn or second_order, got {arch!r}")
    the_task = _resolve_task(task, task_file)
    if arch != "transformer":
        if construction is not None:
            raise ConfigError(f"--construction is for --arch transformer; the {arch} net has one construction")
        _compile_rnn(the_task, arch, out, _parse_lengths(lengths), as_json)
        return
    construction = construction or "scan"
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


def _compile_rnn(task: Any, arch: str, out: Path, lengths: list[int], as_json: bool) -> None:
    from ..models.compiled import compile_rnn
    from ..training.checkpoint import save
    from ..training.evaluation import evaluate

    model = compile_rnn(task.automaton, arch=arch)
    report = evaluate(model, task, lengths, n=256)
    training = {"compiled": {"construction": f"compile_rnn(arch={arch!r})"},
                "accuracy": {str(k): v["accuracy"] for k, v in report.items()}}
    save(model, out, task=task, training=training)
    if as_json:
        print(json.dumps({"accuracy": training["accuracy"], "d_hidden": model.cfg.d_hidden}))
        return
    acc = ", ".join(f"{k}: {v['accuracy']:.4f}" for k, v in report.items())
    console.print(f"compiled {task.spec} into a {arch} net of {model.cfg.d_hidden} units; accuracy {acc} -> {out}")


@app.command("circuit")
@_user_errors
def circuit_cmd(
    run_dir: _RunDir,
    method: Annotated[str, typer.Option("--method", help="exact (activation patching), attribution, attribution_mlp, atp_star (AtP*), verified (AtP* with integrated gradients + exact patching of an adaptive shortlist) or acdc (greedy pruning).")] = "exact",
    length: Annotated[int | None, typer.Option("--length", help="Sequence length (default 16; compiled models: n_ctx).")] = None,
    n: Annotated[int, typer.Option("--n", help="Clean/corrupted pairs.")] = 32,
    threshold: Annotated[float, typer.Option("--threshold", help="Normalised score to be in the circuit.")] = 0.1,
    top_k: Annotated[int, typer.Option("--top-k", help="verified: how many best cells to find (the exactly checked shortlist grows until they stop changing).")] = 10,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
) -> None:
    """Rank every head and MLP (RNN: every state) by its causal importance for the final label
    and print the circuit; with RUN_DIR/circuit.json (a compiled model), score it (ROC-AUC)."""
    from ..circuits.discovery import discover_circuit, roc_auc
    from ..training.checkpoint import load

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


@app.command("iia")
@_user_errors
def iia_cmd(
    run_dir: _RunDir,
    length: Annotated[int | None, typer.Option("--length", help="Sequence length (default: the longest training length, or the context).")] = None,
    n: Annotated[int, typer.Option("--n", help="Base/source pairs.")] = 128,
    site: Annotated[str | None, typer.Option("--site", help="One state site (layers.0, hook_memory, blocks.1.hook_resid_pre, ...); default: all.")] = None,
    das_k: Annotated[str | None, typer.Option("--das", help="Also learn a k-dimensional subspace (distributed alignment search) at the best site: 'auto' or k values, comma-separated.")] = None,
    seed: _Seed = 0,
    out: _JsonOut = None,
    as_json: _PrintJson = False,
) -> None:
    """Interchange intervention accuracy per state site: swap the site between two inputs and
    check that the outputs follow the automaton run from the swapped-in state (causal
    abstraction); with --das, the smallest subspace of the best site that carries the state."""
    from ..circuits.causal_abstraction import interchange_intervention_accuracy
    from ..circuits.das import das
    from ..explain import iia_settings
    from ..models.protocol import is_stateful
    from ..training.checkpoint import load

    ks: list[int] | None = None
    if das_k is not None and das_k != "auto":
        try:
            ks = [int(x) for x in das_k.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--das must be 'auto' or comma-separated integers, got {das_k!r}") from None
        if not ks:
            raise ConfigError("--das needs at least one k")
    run = load(run_dir)
    learned = _in_distribution(run)
    final_only, default_length = iia_settings(run)  # as explain measures it
    length = default_length if length is None else length
    local = not is_stateful(run.model)  # a Transformer recomputes its answer at every position
    result = interchange_intervention_accuracy(run.model, run.task, length, n=n, seed=seed,
                                               sites=None if site is None else [site], final_only=final_only)
    best, best_iia = result.best(local=local)
    if das_k is not None and best_iia is None:
        raise ConfigError(f"--das: no site scored any position at length {result.length} (try a longer --length)")
    payload: dict[str, Any] = {"run": str(run_dir), "task": run.task.spec, "arch": run.model_config.arch,
                               "scored": "output at the intervened position" if local else "every later output",
                               "best_site": best, "best_iia": best_iia, **result.to_dict()}
    found = None
    if das_k is not None:
        found = das(run.model, run.task, site=best, k=ks, length=length, n_test=n, seed=seed, local=local,
                    final_only=final_only)
        payload["das"] = found.to_dict()
    _write_json(out, payload, as_json)
    if as_json:
        return
    console.print(f"{run.model_config.arch} on {run.task.spec}: {n} pairs of length {result.length}, "
                  f"scored on: {payload['scored']}")
    table = Table(title=f"interchange intervention accuracy per site (mean over {len(result.positions)} {result.unit}s)")
    for col in ("site", "IIA"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for s, v in result.site_mean(local=local).items():
        table.add_row(s, "-" if v != v else f"{v:.3f}")
    console.print(table)
    console.print(f"best site: {best} ({'-' if best_iia is None else f'{best_iia:.3f}'})")
    if found is not None:
        scores = ", ".join(f"k={k}: {'-' if v is None else f'{v:.3f}'}" for k, v in found.score().items())
        console.print(f"DAS at {found.site} (dim {found.dim}): {scores}; state dimension: "
                      f"{found.dimension if found.dimension is not None else 'not found'}")
    _warn_not_learned(learned, "the accuracies above")

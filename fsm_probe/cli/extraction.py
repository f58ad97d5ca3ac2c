"""Commands that read a trained model: extract its automaton, explain it, report on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .app import (
    _in_distribution,
    _parse_lengths,
    _user_errors,
    _warn_not_learned,
    app,
    console,
    err_console,
)


@app.command("extract")
@_user_errors
def extract_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for fsm.json, fsm.graphml, fsm.dot, figures.html, extraction.json.")],
    method: Annotated[str, typer.Option("--method", help="kmeans, grid, gmm, agglomerative or lstar.")] = "kmeans",
    hook: Annotated[str | None, typer.Option("--hook", help="Hook name(s) to read, comma-separated (layers.0.hook_h, ...); default: the full recurrent state (rmt: hook_memory, the automaton then reads segments).")] = None,
    components: Annotated[str, typer.Option("--components", help="PCA: 'auto' (a rotation keeping up to 256 axes, so rare states of large automata survive), dimensions (>= 1) or a variance fraction (< 1).")] = "auto",
    max_states: Annotated[int | None, typer.Option("--max-states", help="Largest automaton to return (default: no limit; the number of states grows while held-out fidelity improves).")] = None,
    lengths: Annotated[str, typer.Option("--lengths", help="Held-out lengths for the checks.")] = "50,100",
    geometry: Annotated[str, typer.Option("--geometry", help="auto (as they are; once more in the sensitivity metric when that runs out of time below the fidelity target), euclidean (the states as they are) or sensitivity (each direction weighted by how much it moves the next outputs: for wide networks whose states do not cluster by state).")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print extraction.json.")] = False,
    site: Annotated[str | None, typer.Option("--site", hidden=True, help="Renamed --hook.")] = None,
) -> None:
    """Recover the automaton a trained model implements, check it, and write it to --out."""
    from ..extraction import FSMExtractor, check_extraction, save_extraction
    from ..figures.extraction import extraction_figures, figures_html
    from ..training.checkpoint import load

    if site is not None:
        raise ConfigError(f"extract --site is now --hook (it takes hook names, such as layers.0.hook_h; "
                          f"--site takes site names in patch and trace): use --hook {site}")
    run = load(run_dir)
    sites = [s.strip() for s in hook.split(",") if s.strip()] if hook else None
    n_components = _parse_components(components)
    ex = FSMExtractor(
        method=method, site=sites, n_components=n_components, max_states=max_states, geometry=geometry, seed=seed
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


@app.command("explain")
@_user_errors
def explain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    n: Annotated[int, typer.Option("--n", help="Sequences per length for accuracy.")] = 128,
    iia_n: Annotated[int, typer.Option("--iia-n", help="Base/source pairs for interchange interventions.")] = 64,
    extraction: Annotated[bool, typer.Option("--extraction/--no-extraction", help="Extract the automaton (RNNs, RMTs).")] = True,
    das: Annotated[bool, typer.Option("--das", help="Where the whole vector's IIA at the best site is below 0.99 (trained models): distributed alignment search there (a minute on a small Transformer).")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
) -> None:
    """Does the model implement the automaton? The verdict (implements, shortcut, not_learned,
    unverified) with its evidence: accuracy per length, the state's site and IIA, the failure's
    mechanism, the extracted automaton. A compiled model is tested at the cells where its
    construction (circuit.json) puts the state."""
    from ..explain import explain
    from ..training.checkpoint import load

    for name, value in (("--n", n), ("--iia-n", iia_n)):
        if value < 2:
            raise ConfigError(f"{name} must be at least 2, got {value}")
    if seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")
    result = explain(load(run_dir), n=n, iia_n=iia_n, extraction=extraction, das=das, seed=seed)
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
    from ..report.document import ReportSettings, write_report

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

"""`fsm-probe explain` on the zoo: verdicts, the state's site and IIA, and the time it takes.

Every trained model comes from `fsm-probe train` with default settings (the product), cached
under runs/bench_explain/; compiled models are built on the spot. Prints a markdown table and
writes analyses/results/bench_explain.md.

    python analyses/bench_explain.py [--quick | --compiled]

`--compiled` reruns the compiled models only and replaces their rows in the results file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_explain"
RESULTS = ROOT / "analyses" / "results"

TRAINED = [
    ("gru", "parity"), ("gru", "tomita3"), ("gru", "cyclic:n=5"), ("gru", "flipflop"),
    ("transformer", "cyclic:n=5"), ("transformer", "flipflop"), ("transformer", "even_pairs"),
    ("transformer", "tomita4"), ("rmt", "parity"), ("compressive", "parity"), ("hmt", "parity"),
    ("scratchpad", "parity"),
]
QUICK = [("gru", "parity"), ("gru", "cyclic:n=5"), ("transformer", "flipflop")]


def trained_run(arch: str, task: str) -> Path:
    """The run of `fsm-probe train --arch ARCH --task TASK` with defaults (trained once)."""
    from fsm_probe.cli import main

    out = RUNS / f"{arch}_{task.replace(':', '_').replace('=', '')}"
    if not (out / "config.json").is_file():
        with contextlib.suppress(SystemExit):
            main(["train", "--arch", arch, "--task", task, "--out", str(out), "--quiet"])
    return out


def compiled_models() -> list[tuple[str, object, object]]:
    """(name, model, task) for every compiled model available in this installation."""
    from fsm_probe.models.compiled import compile_rnn
    from fsm_probe.tasks import get_task

    found = []
    for spec in ("parity", "tomita4", "cyclic:n=3"):
        task = get_task(spec)
        model = compile_rnn(task.automaton)
        found.append((f"compiled rnn, {spec}", model, task))
    from fsm_probe.models import model_config
    from fsm_probe.models.compiled_transformer import compile_transformer
    from fsm_probe.training import Run

    for spec, construction in (("parity", "shortcut"), ("parity", "scan"), ("cyclic:n=3", "scan"),
                               ("flipflop", "shortcut"), ("symmetric:n=3", "scan")):
        task = get_task(spec)
        built = compile_transformer(task.automaton, construction=construction)
        run = Run(built.model, task, model_config(built.model), circuit=built.circuit)
        found.append((f"compiled transformer ({construction}), {spec}", run, task))
    return found


def row(name: str, model, task, seconds_train: float | None) -> dict:
    from fsm_probe.explain import explain

    start = time.perf_counter()
    e = explain(model, task)
    took = time.perf_counter() - start
    s = e.state_site or {}
    site = s.get("site")
    if site == "construction":
        site = f"construction ({sum(map(len, s['cells'].values()))} cells)"
    return {
        "model": name, "verdict": e.verdict, "in_dist": e.length["in_distribution_accuracy"],
        "train_max": e.train_max, "breaks_at": e.breaks_at_length, "site": site,
        "iia": s.get("iia"), "iia_beyond": s.get("iia_beyond"), "length_beyond": s.get("length_beyond"),
        "equivalent": (e.extraction or {}).get("equivalent_to_task"),
        "explain_s": took, "train_s": seconds_train,
    }


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="three trained models, no compiled ones")
    which.add_argument("--compiled", action="store_true", help="compiled models only (their rows replaced)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import fsm_probe

    rows = []
    for arch, task in [] if args.compiled else QUICK if args.quick else TRAINED:
        run = trained_run(arch, task)
        loaded = fsm_probe.load(run)
        rows.append(row(f"{arch} (defaults), {task}", loaded, loaded.task, loaded.log.get("seconds")))
        print(rows[-1], flush=True)
    if not args.quick:
        models = compiled_models()
        if args.compiled:  # untimed: the imports a full run has done by the time it gets here
            row(*models[0][:3], None)
        for name, model, task in models:
            rows.append(row(name, model, task, None))
            print(rows[-1], flush=True)
    head = ["model", "verdict", "accuracy at train max", "breaks at", "state site", "IIA",
            "IIA beyond (length)", "extraction equivalent", "explain (s)", "training (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        beyond = f"{fmt(r['iia_beyond'])} ({r['length_beyond']})" if r["iia_beyond"] is not None else "-"
        lines.append("| " + " | ".join([
            r["model"], r["verdict"], f"{fmt(r['in_dist'])} ({r['train_max']})", fmt(r["breaks_at"]),
            fmt(r["site"]), fmt(r["iia"]), beyond, fmt(r["equivalent"]), fmt(r["explain_s"], 1),
            fmt(r["train_s"], 0),
        ]) + " |")
    if args.compiled:  # keep the other models' rows from the last full run
        old = (RESULTS / "bench_explain.md").read_text(encoding="utf-8").splitlines()
        kept = [x for x in old if x.startswith("| ") and not x.startswith("| compiled") and x not in lines[:1]]
        lines = lines[:2] + kept + lines[2:]
    table = "\n".join(lines)
    flag = " --quick" if args.quick else " --compiled (the other rows: the last full run)" if args.compiled else ""
    text = f"`python analyses/bench_explain.py{flag}` (torch {torch.__version__}, 1 thread)\n\n{table}\n"
    print(text)
    if not args.quick:
        from fsm_probe.io import atomic_write_text

        atomic_write_text(RESULTS / "bench_explain.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Length generalization: does working memory close the gap between RNNs and Transformers?

Protocol after Deletang et al. 2023 ("Neural Networks and the Chomsky Hierarchy", arXiv
2207.02098), at a CPU budget: train on lengths 1-40, test on longer inputs (41-500 by default).
The score of a run is its final-position accuracy (the paper's metric) averaged over the test
lengths; each (task, model) reports the best run over `--seeds` seeds x `--lrs` learning rates,
chosen on that test score as the paper does (its Table 2 is the maximum score over seeds and
learning rates; ties here go to the higher in-distribution accuracy). A chosen run whose
final-position accuracy at length 40 (the longest training length, 256 sequences) is below 99%
is marked "did not learn" in the table. Recurrent and memory models train for at most `--steps`
(early stop after two validations at 100% at length 40, or all steps with `--full-budget`);
plain Transformers until two validations at >= 99% or `--transformer-steps`. Deviations from
the paper, all for the CPU budget: every position is supervised during training (the paper
supervises only the final output), 3 seeds instead of 10, hundreds to thousands of steps instead
of 1,000,000, and a grid of test lengths instead of every length from 41 to 500.

    python analyses/length_generalization.py --quick --out /tmp/lg   # a few CPU minutes
    python analyses/length_generalization.py --engine ray            # full: 3 seeds x 3 lrs

Jobs run through `fsm_probe.training.sweep` (`--engine local` in this process or `--jobs N`
processes; `--engine ray` on a local Ray cluster, or the cluster at `--address`). Every finished
job is appended to `OUT/STEM.jsonl`; a rerun with the same settings skips the jobs already there
(to start afresh, delete that file or choose another `--out`). Then `STEM.csv` (per-length
rows), `STEM_dilution.csv`, `STEM.md` (the table next to the paper's Table 2, failure lengths,
the Transformers' attention dilution on failing inputs, CPU time), `STEM.html` (plotly figure,
plotly.js beside it) and `STEM.json` (settings, times) are written from that file. STEM is
`length_generalization` (`_quick` in quick mode, or `--name`).

Overwriting: `--out` defaults to analyses/results. If OUT lies inside this repository and already
holds any of STEM's files, the run stops before training unless `--out` was given explicitly or
`--overwrite` is passed: the committed results change only when asked. Outside the repository
the files are yours and are replaced (the results file resumed) without asking.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fsm_probe.errors import FsmProbeError  # noqa: E402
from fsm_probe.io import atomic_write_json, atomic_write_text  # noqa: E402
from fsm_probe.models.config import RNN_ARCHS  # noqa: E402
from fsm_probe.training.sweep import Job, sweep, train_job  # noqa: E402

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"

# Deletang et al. 2023, Table 2 (regular tasks): score in % over lengths 41-500.
PAPER = {
    "even_pairs": {"rnn": 100.0, "lstm": 100.0, "transformer": 96.4},
    "modular_arithmetic": {"rnn": 100.0, "lstm": 100.0, "transformer": 24.2},
    "parity_check": {"rnn": 100.0, "lstm": 100.0, "transformer": 52.0},
    "cycle_navigation": {"rnn": 100.0, "lstm": 100.0, "transformer": 61.9},
}

# name -> (ModelConfig fields, learning rate or None for the default)
MODELS: dict[str, tuple[dict, float | None]] = {
    "rnn": ({"arch": "rnn", "d_hidden": 64}, None),
    "gru": ({"arch": "gru", "d_hidden": 32}, None),
    "lstm": ({"arch": "lstm", "d_hidden": 32}, None),
    "transformer_learned": ({"arch": "transformer", "n_layers": 2, "d_hidden": 32, "positional": "learned"}, 3e-3),
    "transformer_rotary": ({"arch": "transformer", "n_layers": 2, "d_hidden": 32, "positional": "rotary"}, 3e-3),
    "transformer_nope": ({"arch": "transformer", "n_layers": 2, "d_hidden": 32, "positional": "none"}, 3e-3),
    "rmt": ({"arch": "rmt", "n_layers": 2, "d_hidden": 32, "segment_length": 2, "n_memory": 1}, 3e-3),
    "scratchpad": ({"arch": "scratchpad", "n_layers": 1, "d_hidden": 32, "positional": "none"}, 1e-3),
    "compressive": ({"arch": "compressive", "n_layers": 2, "d_hidden": 32, "segment_length": 2, "n_memory": 2,
                     "n_compressed": 2, "compression_rate": 2}, 3e-3),
    "hmt": ({"arch": "hmt", "n_layers": 2, "d_hidden": 32, "segment_length": 2, "n_memory": 4}, 3e-3),
}
TRANSFORMER_FAMILY = ("transformer_learned", "transformer_rotary", "transformer_nope", "scratchpad")
# Plain Transformers: trained until >= 99% in distribution or their own budget (`transformer_steps`).
TRANSFORMERS = tuple(m for m, (fields, _) in MODELS.items() if fields["arch"] == "transformer")

FULL = {
    "tasks": ["parity_check", "even_pairs", "cycle_navigation", "modular_arithmetic",
              "cyclic", "dihedral", "flipflop", "gridworld"],
    "models": list(MODELS),
    "lengths": [41, 60, 100, 200, 300, 500],
    "steps": 600,
    "transformer_steps": 2000,
    "seeds": 3,
    "lrs": [1e-3, 3e-3, 1e-2],
    "n": 128,
}
QUICK = {
    "tasks": ["parity_check"],
    "models": ["gru", "transformer_learned", "rmt", "scratchpad"],
    "lengths": [41, 100, 200],
    "steps": 500,
    "transformer_steps": 500,
    "seeds": 2,
    "lrs": None,  # one per model (MODELS)
    "n": 64,
}
TRAIN_MAX = 40
THRESHOLD = 0.99


def _dilution(model, task, length: int, tokens: np.ndarray, failing: np.ndarray) -> dict:
    """Attention at the last query on the failing inputs (all inputs if none fail)."""
    from fsm_probe.models import model_config

    pick = np.flatnonzero(failing) if failing.any() else np.arange(len(tokens))
    pick = pick[:32]
    cfg = model_config(model)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(tokens[pick]), names_filter=names)
    p = torch.stack([cache[n][:, :, -1, :] for n in names], 1).double()  # [b, layer, head, key]
    n_keys = p.shape[-1]
    ent = -(p.clamp_min(1e-30).log() * p).sum(-1) / np.log(max(n_keys, 2))
    return {
        "n_failing": int(failing.sum()),
        "max_weight": float(p.max(-1).values.mean()),
        "min_head_max_weight": float(p.max(-1).values.mean(0).min()),
        "entropy": float(ent.mean()),
        "uniform": 1.0 / n_keys,
    }


def make_job(task: str, model: str, seed: int, lr: float | None, settings: dict) -> Job:
    """One (task, model, seed, learning rate) of the study as a sweep job."""
    fields, default_lr = MODELS[model]
    fields = dict(fields)
    if settings.get("hidden"):
        fields["d_hidden"] = settings["hidden"]
    if fields["arch"] not in RNN_ARCHS:
        fields["n_ctx"] = max(512, max(settings["lengths"]) + 2)  # the longest input accepted
    transformer = model in TRANSFORMERS
    steps = settings["transformer_steps"] if transformer else settings["steps"]
    patience = steps // 100 + 1 if settings.get("full_budget") else 2
    train = {
        "train_lengths": [1, TRAIN_MAX], "batch_size": 64, "max_steps": steps, "warmup_steps": 50,
        "eval_every": 100, "val_lengths": [TRAIN_MAX], "val_size": 256,
        "target_accuracy": 0.99 if transformer else 1.0, "patience": patience,
        "final_only": False, "curriculum": 0, "final_weight": 0.0,  # the published protocol
    }
    return Job(task, fields, train, seed=seed, lr=lr if lr is not None else default_lr,
               lengths=tuple(settings["lengths"]), n_eval=settings["n"], name=model,
               extra={"dilution": model in TRANSFORMER_FAMILY})


def run_one(job: Job) -> dict:
    """Train one job, evaluate it at every test length and at length 40 (in distribution)."""
    from fsm_probe.models import predict_logits
    from fsm_probe.tasks.datasets import eval_set
    from fsm_probe.training.evaluation import accuracy_report

    run = train_job(job)
    model, task = run.model, run.task
    lr = run.train_config.lr
    in_dist = eval_set(task, TRAIN_MAX, n=max(256, job.n_eval), seed=12345, final_only=False)
    pred = predict_logits(model, in_dist.tokens, batch_size=64).argmax(-1).numpy()
    in_acc = accuracy_report(pred, in_dist.labels)["final_accuracy"]
    rows, dilution = [], []
    for length in job.lengths:
        batch = eval_set(task, length, n=job.n_eval, seed=12345, final_only=False)
        pred = predict_logits(model, batch.tokens, batch_size=64).argmax(-1).numpy()
        rows.append({
            "task": job.task, "model": job.name, "seed": job.seed, "lr": lr,
            "length": int(batch.length), **accuracy_report(pred, batch.labels),
            "train_steps": run.log["steps"], "train_seconds": round(run.log["seconds"], 1),
            "val_accuracy": run.log["final_val_accuracy"], "in_distribution_accuracy": in_acc,
        })
        if job.extra.get("dilution"):
            failing = pred[:, -1] != batch.labels[:, -1]
            d = _dilution(model, task, length, batch.tokens, failing)
            dilution.append({"task": job.task, "model": job.name, "seed": job.seed, "lr": lr,
                             "length": int(batch.length), **d})
    return {"rows": rows, "dilution": dilution, "stop_reason": run.log["stop_reason"]}


def score(rows: list[dict]) -> float:
    return float(np.mean([r["final_accuracy"] for r in rows]))


def failure_length(rows: list[dict]) -> int | None:
    for r in sorted(rows, key=lambda r: r["length"]):
        if r["final_accuracy"] < THRESHOLD:
            return r["length"]
    return None


def in_distribution(rows: list[dict]) -> float | None:
    """Final-position accuracy at length 40 (older tables: the trainer's validation there)."""
    value = rows[0].get("in_distribution_accuracy")
    return rows[0].get("val_accuracy") if value is None else value


def learned(rows: list[dict]) -> bool:
    value = in_distribution(rows)
    return value is None or value >= THRESHOLD


def best_rows(all_rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Per (task, model): the rows of the (seed, learning rate) run with the best test score;
    ties go to the higher in-distribution accuracy, then to the first run."""
    by: dict[tuple, list[dict]] = {}
    for r in all_rows:
        by.setdefault((r["task"], r["model"], r["seed"], r.get("lr")), []).append(r)
    best: dict[tuple[str, str], list[dict]] = {}

    def rank(rows: list[dict]) -> tuple[float, float]:
        return score(rows), in_distribution(rows) or 0.0

    for (t, m, _, _), rows in by.items():
        if (t, m) not in best or rank(rows) > rank(best[(t, m)]):
            best[(t, m)] = rows
    return best


def markdown(all_rows: list[dict], dilution: list[dict], tasks: list[str], models: list[str],
             settings: dict, wall: float, *, cpu: float | None = None, engine: str = "local") -> str:
    best = best_rows(all_rows)
    lengths = sorted({r["length"] for r in all_rows})
    lrs = settings.get("lrs")
    out = io.StringIO()
    w = out.write
    w("## Length generalization (trained on lengths 1-40)\n\n")
    w(f"Score: final-position accuracy (%) averaged over test lengths {', '.join(map(str, lengths))}; "
      f"per (task, model) the best run of {settings['seeds']} seed(s) x "
      + (f"learning rates {', '.join(f'{x:g}' for x in lrs)}" if lrs else "one learning rate per model")
      + " chosen on this test score, as the paper takes the maximum over seeds and learning rates. "
      f"Batch 64; at most {settings['steps']} steps for recurrent and memory models (early stop at 100% "
      f"in distribution), {settings.get('transformer_steps', settings['steps'])} for plain Transformers "
      "(early stop at >= 99%); "
      + (f"d_hidden {settings['hidden']} for every model; " if settings.get("hidden") else "")
      + ("trained for the full budget (no early stop); " if settings.get("full_budget") else "")
      + "every position supervised. \"did not learn\": the chosen run's final-position accuracy at "
      f"length 40 is below {100 * THRESHOLD:.0f}%. "
      + (f"CPU time {cpu / 3600:.2f} h (sum over the {len({(r['task'], r['model'], r['seed'], r.get('lr')) for r in all_rows})} "
         f"runs); " if cpu is not None else "")
      + f"wall time {wall / 60:.1f} min (engine {engine}). "
      "Paper: Deletang et al. 2023, Table 2 (lengths 41-500, max over 10 seeds x 3 learning rates, "
      "1M steps).\n\n")
    w("| task | " + " | ".join(models) + " | paper RNN / LSTM | paper Transformer |\n")
    w("|---|" + "---:|" * len(models) + "---:|---:|\n")
    for t in tasks:
        cells = []
        for m in models:
            rows = best.get((t, m))
            cells.append("" if not rows else f"{100 * score(rows):.1f}" + ("" if learned(rows) else " (did not learn)"))
        p = PAPER.get(t)
        paper = (f"{p['rnn']:.1f} / {p['lstm']:.1f}", f"{p['transformer']:.1f}") if p else ("", "")
        w(f"| {t} | " + " | ".join(cells) + f" | {paper[0]} | {paper[1]} |\n")
    w(f"\n### Failure length (first test length with final-position accuracy < {100 * THRESHOLD:.0f}%; "
      "'-' = never fails; 'in-dist' = below 99% already at length 40)\n\n")
    w("| task | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models) + "\n")
    for t in tasks:
        cells = []
        for m in models:
            rows = best.get((t, m))
            if not rows:
                cells.append("")
                continue
            f = failure_length(rows)
            cells.append("in-dist" if not learned(rows) else ("-" if f is None else str(f)))
        w(f"| {t} | " + " | ".join(cells) + " |\n")
    if dilution:
        w("\n### Attention dilution of the Transformers at the last position, on failing inputs\n\n")
        w("Mean over failing inputs (all inputs where none fail), layers and heads: the largest "
          "attention weight of the last query, and the normalised entropy of its attention row "
          "(1 = uniform). Uniform averaging gives every key 1/T.\n\n")
        w("| task | model | length | failing | max weight | 1/T | entropy |\n|---|---|---:|---:|---:|---:|---:|\n")
        runs = {(t, m): (rows[0]["seed"], rows[0].get("lr")) for (t, m), rows in best.items()}
        for d in dilution:
            if runs.get((d["task"], d["model"])) != (d["seed"], d.get("lr")):
                continue
            w(f"| {d['task']} | {d['model']} | {d['length']} | {d['n_failing']} | "
              f"{d['max_weight']:.3f} | {d['uniform']:.3f} | {d['entropy']:.3f} |\n")
    return out.getvalue()


def figure(all_rows: list[dict], tasks: list[str], models: list[str], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best = best_rows(all_rows)
    cols = min(4, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=tasks, shared_yaxes=True)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, t in enumerate(tasks):
        for j, m in enumerate(models):
            rows = sorted(best.get((t, m), []), key=lambda r: r["length"])
            if not rows:
                continue
            fig.add_trace(go.Scatter(
                x=[r["length"] for r in rows], y=[r["final_accuracy"] for r in rows],
                mode="lines+markers", name=m, legendgroup=m, showlegend=i == 0,
                line={"color": palette[j % len(palette)]},
            ), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(range=[0, 1.02], title_text="final-position accuracy", col=1)
    fig.update_xaxes(title_text="length")
    fig.update_layout(title="Length generalization: trained on lengths 1-40", height=320 * nrows + 80)
    # plotly.js ships beside the pages (one copy for all of them), so they open offline
    from plotly.offline import get_plotlyjs

    script = path.parent / "plotly.min.js"
    if not script.is_file() or script.read_text(encoding="utf-8") != get_plotlyjs():
        atomic_write_text(script, get_plotlyjs())
    atomic_write_text(path, fig.to_html(include_plotlyjs="directory"))


def read_csv(path: Path) -> list[dict]:
    """Rows written by `write_csv`, numbers parsed back."""
    def parse(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return None if v == "" else v

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO(newline="")
    wr = csv.DictWriter(buf, fieldnames=list(rows[0]))
    wr.writeheader()
    wr.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def outputs(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in
            (".jsonl", ".csv", "_dilution.csv", ".md", ".html", ".json")]


def refuse_overwrite(out: Path, stem: str) -> str | None:
    """Why writing STEM's files into `out` needs --out or --overwrite, or None when it does not."""
    out = out.resolve()
    if out != REPO and REPO not in out.parents:
        return None
    clash = [p.name for p in outputs(out, stem) if p.exists()]
    if not clash:
        return None
    return (f"{out} is in the repository and holds {', '.join(clash)}; pass --out DIR to write "
            "elsewhere (or --out there explicitly), or --overwrite to replace them")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few CPU minutes: parity_check, 4 models, 2 seeds")
    ap.add_argument("--tasks", help="comma-separated task specs")
    ap.add_argument("--models", help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--lengths", help="comma-separated test lengths")
    ap.add_argument("--steps", type=int, help="budget of recurrent and memory models")
    ap.add_argument("--transformer-steps", type=int, help="budget of plain Transformers")
    ap.add_argument("--seeds", type=int, help="seeds per (task, model, learning rate), 0..N-1")
    ap.add_argument("--n", type=int, help="test sequences per length")
    ap.add_argument("--hidden", type=int, help="d_hidden / d_model of every model (default: per model)")
    ap.add_argument("--lrs", "--lr", dest="lrs", help="comma-separated learning rates tried for every "
                    "model, best run kept (full default 1e-3,3e-3,1e-2; 'model' = one per model)")
    ap.add_argument("--full-budget", action="store_true",
                    help="train every model for its whole budget (no early stop)")
    ap.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local: this process or --jobs processes; ray: a local Ray cluster or --address")
    ap.add_argument("--address", help="join the Ray cluster at this address (with --engine ray)")
    ap.add_argument("--jobs", type=int, help="parallel workers (local: processes, default 1; "
                    "ray: CPUs of the local cluster, default all)")
    ap.add_argument("--out", type=Path, help="output directory (default analyses/results)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace this stem's files in the repository when --out is not given")
    ap.add_argument("--name", help="output file stem (default length_generalization[_quick])")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw STEM.html from the existing STEM.csv (no training)")
    args = ap.parse_args(argv)
    if args.address and args.engine != "ray":
        ap.error("--address needs --engine ray")
    if args.models:
        unknown = {m.strip() for m in args.models.split(",")} - set(MODELS) - {""}
        if unknown:
            ap.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    for key in ("steps", "transformer_steps", "seeds", "n", "hidden", "jobs"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    for key, kind in (("lengths", int), ("lrs", float)):
        text = getattr(args, key)
        if text and not (key == "lrs" and text == "model"):
            try:
                values = [kind(x) for x in text.split(",")]
            except ValueError:
                ap.error(f"--{key} must be comma-separated numbers, got {text!r}")
            if any(v <= 0 for v in values):
                ap.error(f"--{key} must be positive, got {text!r}")
    return args


def settings_from(args: argparse.Namespace) -> dict:
    settings = dict(QUICK if args.quick else FULL)
    if args.tasks:
        settings["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.models:
        settings["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.lengths:
        settings["lengths"] = [int(x) for x in args.lengths.split(",")]
    if args.lrs:
        settings["lrs"] = None if args.lrs == "model" else [float(x) for x in args.lrs.split(",")]
    settings["full_budget"] = args.full_budget
    for key in ("steps", "transformer_steps", "seeds", "n", "hidden"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    out = args.out or RESULTS
    stem = args.name or ("length_generalization_quick" if args.quick else "length_generalization")
    if args.replot:
        rows = read_csv(out / f"{stem}.csv")
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        models = list(dict.fromkeys(r["model"] for r in rows))
        figure(rows, tasks, models, out / f"{stem}.html")
        print(f"redrew {out}/{stem}.html from {stem}.csv")
        return 0
    if args.out is None and not args.overwrite and (why := refuse_overwrite(out, stem)):
        print(f"length_generalization: {why}", file=sys.stderr)
        return 2
    jobs = [make_job(t, m, s, lr, settings) for t in settings["tasks"] for m in settings["models"]
            for lr in (settings.get("lrs") or [None]) for s in range(settings["seeds"])]
    torch.set_num_threads(1)
    start = time.perf_counter()

    def report(job: Job, row: dict) -> None:
        res = row["result"]
        accs = " ".join(f"{r['length']}:{r['final_accuracy']:.3f}" for r in res["rows"])
        first = res["rows"][0]
        line = (f"[{time.perf_counter() - start:6.0f}s] {job.label():<50} ({row['cpu_seconds']:.0f} CPU s, "
                f"{first['train_steps']} steps, 40:{first['in_distribution_accuracy']:.3f}) {accs}")
        from tqdm.auto import tqdm

        tqdm.write(line)

    try:
        result = sweep(jobs, out, fn=run_one, engine=args.engine, workers=args.jobs or 1,
                       address=args.address, num_cpus=args.jobs, results=f"{stem}.jsonl", on_result=report)
    except FsmProbeError as e:
        print(f"length_generalization: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    all_rows = [r for row in result.rows for r in row["result"]["rows"]]
    dilution = [d for row in result.rows for d in row["result"]["dilution"]]
    write_csv(all_rows, out / f"{stem}.csv")
    if dilution:
        write_csv(dilution, out / f"{stem}_dilution.csv")
    md = markdown(all_rows, dilution, settings["tasks"], settings["models"], settings, wall,
                  cpu=result.cpu_seconds, engine=args.engine)
    atomic_write_text(out / f"{stem}.md", md)
    figure(all_rows, settings["tasks"], settings["models"], out / f"{stem}.html")
    atomic_write_json(out / f"{stem}.json", {
        "settings": settings, "engine": args.engine, "workers": args.jobs, "wall_seconds": round(wall, 1),
        "cpu_seconds": result.cpu_seconds, "runs": len(result.rows), "ran": result.ran,
        "skipped": result.skipped,
    })
    print(md)
    print(f"{result.ran} runs trained, {result.skipped} already in {stem}.jsonl; CPU time "
          f"{result.cpu_seconds / 3600:.2f} h over all {len(result.rows)} runs; wall {wall / 60:.1f} min; "
          f"written to {out}/{stem}.{{jsonl,csv,md,html,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Length generalization: does working memory close the gap between RNNs and Transformers?

Protocol after Deletang et al. 2023 ("Neural Networks and the Chomsky Hierarchy", arXiv
2207.02098), at a CPU budget: train on lengths 1-40, test on longer inputs (41-500 by default),
best of `--seeds` seeds (chosen on the test score, as the paper's max over seeds), the same
training budget (`--steps`, batch 64, early stop once validation accuracy at length 40 is 100%)
for every model. Deviations from the paper, all for the CPU budget: every position is
supervised during training (the paper supervises only the final output), 1 seed by default
instead of 10 seeds x 3 learning rates, at most a few hundred to a thousand steps instead of
1,000,000, and a grid of test lengths instead of every length from 41 to 500. The score is the
final-position accuracy (the paper's metric) averaged over the test lengths.

    python analyses/length_generalization.py --quick          # a few CPU minutes
    python analyses/length_generalization.py                  # full mode (see --help; ~40-60 min)

Writes `analyses/results/length_generalization.{csv,md,html}` (quick mode: `*_quick.*`): the
per-length accuracies, a markdown table next to the paper's Table 2, the failure length of every
model (first test length whose final-position accuracy is below 99%), the attention dilution of
the Transformers on their failing inputs, and a plotly figure of accuracy against length.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fsm_probe.io import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent
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
}
TRANSFORMER_FAMILY = ("transformer_learned", "transformer_rotary", "transformer_nope", "scratchpad")

FULL = {
    "tasks": ["parity_check", "even_pairs", "cycle_navigation", "modular_arithmetic",
              "cyclic", "dihedral", "flipflop", "gridworld"],
    "models": list(MODELS),
    "lengths": [41, 60, 100, 200, 300, 500],
    "steps": 600,
    "seeds": 1,
    "n": 128,
}
QUICK = {
    "tasks": ["parity_check"],
    "models": ["gru", "transformer_learned", "rmt", "scratchpad"],
    "lengths": [41, 100, 200],
    "steps": 500,
    "seeds": 1,
    "n": 64,
}
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


def run_one(job: dict) -> dict:
    """Train one (task, model, seed) and evaluate it at every test length."""
    torch.set_num_threads(1)
    from fsm_probe.models import ModelConfig, predict_logits
    from fsm_probe.tasks import get_task
    from fsm_probe.tasks.datasets import eval_set
    from fsm_probe.training import TrainConfig, train
    from fsm_probe.training.evaluation import accuracy_report

    task = get_task(job["task"])
    a = task.automaton
    fields, lr = MODELS[job["model"]]
    lr = job.get("lr") or lr
    fields = dict(fields)
    if job.get("hidden"):
        fields["d_hidden"] = job["hidden"]
    n_ctx = max(512, max(job["lengths"]) + 2)
    if fields["arch"] not in ("rnn", "gru", "lstm"):
        fields["n_ctx"] = n_ctx  # the longest input accepted (RMT positions restart per segment)
    cfg = ModelConfig(d_vocab=a.n_symbols, d_out=a.n_labels, seed=job["seed"], **fields)
    tcfg = TrainConfig(
        train_lengths=(1, 40), batch_size=64, max_steps=job["steps"], lr=lr, warmup_steps=50,
        eval_every=100, val_lengths=(40,), val_size=256, target_accuracy=1.0,
        patience=job["steps"] // 100 + 1 if job.get("full_budget") else 2,
        final_only=False, seed=job["seed"], curriculum=0, final_weight=0.0,  # the published protocol
    )
    t0 = time.perf_counter()
    run = train(task, cfg, tcfg, progress=False)
    model = run.model
    train_s = time.perf_counter() - t0
    rows, dilution = [], []
    for length in job["lengths"]:
        batch = eval_set(task, length, n=job["n"], seed=12345, final_only=False)
        pred = predict_logits(model, batch.tokens, batch_size=64).argmax(-1).numpy()
        rep = accuracy_report(pred, batch.labels)
        rows.append({
            "task": job["task"], "model": job["model"], "seed": job["seed"], "lr": lr,
            "length": int(batch.length), **rep,
            "train_steps": run.log["steps"], "train_seconds": round(train_s, 1),
            "val_accuracy": run.log["final_val_accuracy"],
        })
        if job["model"] in TRANSFORMER_FAMILY:
            failing = pred[:, -1] != batch.labels[:, -1]
            d = _dilution(model, task, length, batch.tokens, failing)
            dilution.append({"task": job["task"], "model": job["model"], "seed": job["seed"], "lr": lr,
                             "length": int(batch.length), **d})
    return {"rows": rows, "dilution": dilution, "seconds": time.perf_counter() - t0}


def score(rows: list[dict]) -> float:
    return float(np.mean([r["final_accuracy"] for r in rows]))


def failure_length(rows: list[dict]) -> int | None:
    for r in sorted(rows, key=lambda r: r["length"]):
        if r["final_accuracy"] < THRESHOLD:
            return r["length"]
    return None


def best_rows(all_rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Per (task, model): the rows of the (seed, learning rate) run with the best score."""
    by: dict[tuple, list[dict]] = {}
    for r in all_rows:
        by.setdefault((r["task"], r["model"], r["seed"], r.get("lr")), []).append(r)
    best: dict[tuple[str, str], list[dict]] = {}
    for (t, m, _, _), rows in by.items():
        if (t, m) not in best or score(rows) > score(best[(t, m)]):
            best[(t, m)] = rows
    return best


def markdown(all_rows: list[dict], dilution: list[dict], tasks: list[str], models: list[str],
             settings: dict, wall: float) -> str:
    best = best_rows(all_rows)
    lengths = sorted({r["length"] for r in all_rows})
    out = io.StringIO()
    w = out.write
    w("## Length generalization (trained on lengths 1-40)\n\n")
    w(f"Score: final-position accuracy (%) averaged over test lengths {', '.join(map(str, lengths))}; "
      f"best of {settings['seeds']} seed(s); at most {settings['steps']} training steps of batch 64, "
      + (f"d_hidden {settings['hidden']} for every model; " if settings.get("hidden") else "")
      + (f"best over learning rates {', '.join(map(str, settings['lrs']))}; " if settings.get("lrs") else "")
      + ("trained for the full budget (no early stop); " if settings.get("full_budget") else "")
      + f"every position supervised; wall time {wall / 60:.1f} min. "
      "Paper: Deletang et al. 2023, Table 2 (lengths 41-500, max over 10 seeds x 3 learning rates, "
      "1M steps).\n\n")
    w("| task | " + " | ".join(models) + " | paper RNN / LSTM | paper Transformer |\n")
    w("|---|" + "---:|" * len(models) + "---:|---:|\n")
    for t in tasks:
        cells = [f"{100 * score(best[(t, m)]):.1f}" if (t, m) in best else "" for m in models]
        p = PAPER.get(t)
        paper = (f"{p['rnn']:.1f} / {p['lstm']:.1f}", f"{p['transformer']:.1f}") if p else ("", "")
        w(f"| {t} | " + " | ".join(cells) + f" | {paper[0]} | {paper[1]} |\n")
    w(f"\n### Failure length (first test length with final-position accuracy < {100 * THRESHOLD:.0f}%; "
      "'-' = never fails; 'in-dist' = below 99% already at length 40 in validation)\n\n")
    w("| task | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models) + "\n")
    for t in tasks:
        cells = []
        for m in models:
            rows = best.get((t, m))
            if not rows:
                cells.append("")
                continue
            f = failure_length(rows)
            val = rows[0]["val_accuracy"]
            tag = "in-dist" if val is not None and val < THRESHOLD else None
            cells.append(tag or ("-" if f is None else str(f)))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few CPU minutes: parity_check, 4 models")
    ap.add_argument("--tasks", help="comma-separated task specs")
    ap.add_argument("--models", help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--lengths", help="comma-separated test lengths")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--n", type=int, help="test sequences per length")
    ap.add_argument("--hidden", type=int, help="d_hidden / d_model of every model (default: per model)")
    ap.add_argument("--lr", help="comma-separated learning rates tried for every model, best run kept "
                    "(default: one per model)")
    ap.add_argument("--full-budget", action="store_true",
                    help="train every model for all --steps (no early stop at 100%% validation)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", help="output file stem (default length_generalization[_quick])")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw STEM.html from the existing STEM.csv (no training)")
    args = ap.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.tasks:
        settings["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.models:
        settings["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = set(settings["models"]) - set(MODELS)
        if unknown:
            ap.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.lengths:
        settings["lengths"] = [int(x) for x in args.lengths.split(",")]
    if args.lr:
        settings["lrs"] = [float(x) for x in args.lr.split(",")]
    settings["full_budget"] = args.full_budget
    for key in ("steps", "seeds", "n", "hidden"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    stem = args.name or ("length_generalization_quick" if args.quick else "length_generalization")
    if args.replot:
        rows = read_csv(args.out / f"{stem}.csv")
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        models = list(dict.fromkeys(r["model"] for r in rows))
        figure(rows, tasks, models, args.out / f"{stem}.html")
        print(f"redrew {args.out}/{stem}.html from {stem}.csv")
        return 0
    jobs = [
        {"task": t, "model": m, "seed": s, "lengths": settings["lengths"], "steps": settings["steps"],
         "n": settings["n"], "hidden": settings.get("hidden"), "lr": lr,
         "full_budget": settings.get("full_budget", False)}
        for t in settings["tasks"] for s in range(settings["seeds"]) for lr in settings.get("lrs", [None])
        for m in settings["models"]
    ]
    torch.set_num_threads(1)
    start = time.perf_counter()
    all_rows, dilution = [], []

    def collect(job: dict, res: dict) -> None:
        all_rows.extend(res["rows"])
        dilution.extend(res["dilution"])
        accs = " ".join(f"{r['length']}:{r['final_accuracy']:.3f}" for r in res["rows"])
        lr = f" lr {job['lr']}" if job.get("lr") else ""
        print(f"[{time.perf_counter() - start:6.0f}s] {job['task']:<20} {job['model']:<20} seed {job['seed']}{lr} "
              f"({res['seconds']:.0f}s, {res['rows'][0]['train_steps']} steps) {accs}", flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for job, res in zip(jobs, pool.map(run_one, jobs), strict=True):
                collect(job, res)
    else:
        for job in jobs:
            collect(job, run_one(job))
    wall = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(all_rows, args.out / f"{stem}.csv")
    if dilution:
        write_csv(dilution, args.out / f"{stem}_dilution.csv")
    md = markdown(all_rows, dilution, settings["tasks"], settings["models"], settings, wall)
    atomic_write_text(args.out / f"{stem}.md", md)
    figure(all_rows, settings["tasks"], settings["models"], args.out / f"{stem}.html")
    atomic_write_json(args.out / f"{stem}.json", {"settings": settings, "wall_seconds": wall})
    print(md)
    print(f"written to {args.out}/{stem}.{{csv,md,html}} in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

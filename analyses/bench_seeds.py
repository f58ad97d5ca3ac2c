"""Batched seeds (`train_seeds`) against the same models trained one after the other with `train()`.

Trains N models on parity with the recipe's defaults for a fixed number of steps (no early
stop, so both sides do the same work), on 1 thread, and prints a markdown table (also written to
`analyses/results/bench_seeds.md`). Goal: 8 GRUs >= 3x faster batched. Transformers are not
batched (`train_seeds` trains them one after the other), so their row measures that fallback.

    python analyses/bench_seeds.py [--models 8] [--steps 300] [--transformer-steps 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from fsm_probe.io import atomic_write_text  # noqa: E402
from fsm_probe.tasks import get_task  # noqa: E402
from fsm_probe.training import TrainConfig, train, train_seeds  # noqa: E402
from fsm_probe.training.recipes import recipe  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_seeds.md"


def _batched(task, model_cfg, train_cfg, n):
    return train_seeds(task, model_cfg, train_cfg, seeds=n, progress=False)


def _singles(task, model_cfg, train_cfg, n):
    return [train(task, replace(model_cfg, seed=s), replace(train_cfg, seed=s), progress=False) for s in range(n)]


def measure(arch: str, n: int, steps: int, repeats: int) -> dict:
    """Seconds for `n` models of `arch` on parity, batched and one after the other, alternating
    which goes first in each repeat (the machine is shared: its load moves); medians."""
    task = get_task("parity")
    model_cfg = recipe(arch, task).model_config(task)
    train_cfg = TrainConfig(max_steps=steps, patience=10**6)  # no early stop: same work both ways
    times: dict[str, list[float]] = {"batched": [], "single": []}
    for rep in range(repeats):
        for name in (("batched", "single") if rep % 2 == 0 else ("single", "batched")):
            start = time.perf_counter()
            runs = (_batched if name == "batched" else _singles)(task, model_cfg, train_cfg, n)
            times[name].append(time.perf_counter() - start)
            if name == "batched":
                batched = runs
            else:
                singles = runs
    diff = max(
        (a - b).abs().max().item()
        for r, q in zip(batched, singles, strict=True)
        for a, b in zip(r.model.state_dict().values(), q.model.state_dict().values(), strict=True)
    )
    t_single, t_batched = statistics.median(times["single"]), statistics.median(times["batched"])
    ratios = [a / b for a, b in zip(times["single"], times["batched"], strict=True)]
    return {"arch": arch, "models": n, "steps": steps, "single": t_single, "batched": t_batched,
            "speedup": t_single / t_batched, "ratios": ratios, "diff": diff,
            "val": sum(r.log["final_val_accuracy"] for r in batched) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--transformer-steps", type=int, default=50, help="0 = no Transformer row")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure("gru", args.models, args.steps, args.repeats)]
    if args.transformer_steps:
        rows.append(measure("transformer", args.models, args.transformer_steps, 1))
    lines = [
        f"# Batched seeds: {args.models} models on parity, recipe defaults, fixed steps, 1 thread",
        "",
        "| arch | models | steps | one after the other (s) | batched (s) | speedup (median) | per repeat | max weight diff | mean val acc |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['models']} | {r['steps']} | {r['single']:.1f} | {r['batched']:.1f} | "
                     f"{r['speedup']:.2f}x | {', '.join(f'{x:.2f}x' for x in r['ratios'])} | {r['diff']:.1e} | {r['val']:.4f} |")
    lines += ["", "Goal: gru >= 3x. The transformer is not batched (train_seeds falls back to train() per model): both columns run the same code, so its ratio shows how far the shared machine's load moves a measurement.",
              f"Load average while measuring: {os.getloadavg()[0]:.1f} (2 cores, shared)."]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(RESULTS, text)


if __name__ == "__main__":
    main()

"""Batched seeds (`train_seeds`) against the same models trained one after the other with `train()`.

Trains N models on parity with the recipe's defaults for a fixed number of steps (no early
stop, so both sides do the same work), on 1 thread, and prints a markdown table (also written to
`analyses/results/bench_seeds.md`). Goal: 8 GRUs >= 3x faster batched. Transformers are not
batched (`train_seeds` trains them one after the other), so their row measures that fallback.

    python analyses/bench_seeds.py [--models 8] [--steps 300] [--transformer-steps 50]
"""

from __future__ import annotations

import argparse
import os
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


def measure(arch: str, n: int, steps: int) -> dict:
    """Seconds for `n` models of `arch` on parity: batched, and one after the other."""
    task = get_task("parity")
    model_cfg = recipe(arch, task).model_config(task)
    train_cfg = TrainConfig(max_steps=steps, patience=10**6)  # no early stop: same work both ways
    start = time.perf_counter()
    batched = train_seeds(task, model_cfg, train_cfg, seeds=n, progress=False)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    singles = [train(task, replace(model_cfg, seed=s), replace(train_cfg, seed=s), progress=False) for s in range(n)]
    t_single = time.perf_counter() - start
    diff = max(
        (a - b).abs().max().item()
        for r, q in zip(batched, singles, strict=True)
        for a, b in zip(r.model.state_dict().values(), q.model.state_dict().values(), strict=True)
    )
    return {"arch": arch, "models": n, "steps": steps, "single": t_single, "batched": t_batched,
            "speedup": t_single / t_batched, "diff": diff,
            "val": sum(r.log["final_val_accuracy"] for r in batched) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--transformer-steps", type=int, default=50, help="0 = no Transformer row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure("gru", args.models, args.steps)]
    if args.transformer_steps:
        rows.append(measure("transformer", args.models, args.transformer_steps))
    lines = [
        f"# Batched seeds: {args.models} models on parity, recipe defaults, fixed steps, 1 thread",
        "",
        "| arch | models | steps | one after the other (s) | batched (s) | speedup | max weight diff | mean val acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['models']} | {r['steps']} | {r['single']:.1f} | {r['batched']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['diff']:.1e} | {r['val']:.4f} |")
    lines += ["", "Goal: gru >= 3x. The transformer is not batched (train_seeds falls back to train() per model).",
              f"Load average while measuring: {os.getloadavg()[0]:.1f} (2 cores, shared)."]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(RESULTS, text)


if __name__ == "__main__":
    main()

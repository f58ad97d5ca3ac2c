"""Training throughput of `HookedRNN` against a plain torch RNN of the same size.

Times forward + backward + AdamW step on random tokens and labels, interleaving the two models
so that machine load affects both alike, and reports the median tokens/s over several repeats.
Goal: HookedRNN reaches at least 0.8x the plain model's throughput. Also times a GRU(32) trained
on parity (lengths 1-40) until it is 99.9% accurate at length 500 (goal: under 60 s).

    python analyses/bench_training.py [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fsm_probe.io import atomic_write_text  # noqa: E402
from fsm_probe.models.config import ModelConfig  # noqa: E402
from fsm_probe.models.rnn import HookedRNN  # noqa: E402
from fsm_probe.tasks import get_task  # noqa: E402
from fsm_probe.training import TrainConfig, train  # noqa: E402
from fsm_probe.training.evaluation import evaluate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_training.md"
D_VOCAB, D_OUT = 2, 2
TORCH_MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class PlainRNN(nn.Module):
    """The baseline: nn.Embedding + nn.GRU/LSTM/RNN + nn.Linear."""

    def __init__(self, arch: str, d_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(D_VOCAB, d_hidden)
        self.rnn = TORCH_MODULES[arch](d_hidden, d_hidden, n_layers, batch_first=True)
        self.unembed = nn.Linear(d_hidden, D_OUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(tokens))
        return self.unembed(hidden)


def time_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
) -> float:
    """Seconds for `steps` training steps (forward, backward, AdamW)."""
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, D_OUT), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def bench_pair(arch: str, d_hidden: int, args: argparse.Namespace) -> tuple[float, float]:
    """Median tokens/s of (HookedRNN, plain) for one architecture and size."""
    cfg = ModelConfig(arch=arch, d_vocab=D_VOCAB, d_out=D_OUT, n_layers=1, d_hidden=d_hidden)
    models = {"hooked": HookedRNN(cfg), "plain": PlainRNN(arch, d_hidden, 1)}
    assert models["hooked"].n_params == sum(p.numel() for p in models["plain"].parameters())
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, D_VOCAB, (args.batch, args.length), generator=gen)
    labels = torch.randint(0, D_OUT, (args.batch, args.length), generator=gen)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    for name, model in models.items():
        time_steps(model, opts[name], tokens, labels, args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            seconds = time_steps(model, opts[name], tokens, labels, args.steps)
            rates[name].append(args.steps * tokens.numel() / seconds)
    return statistics.median(rates["hooked"]), statistics.median(rates["plain"])


def time_to_solve_parity(seed: int = 0) -> dict[str, float]:
    """Wall time for a GRU(32) trained on parity lengths 1-40 to reach 99.9% at length 500.

    Validation runs at length 500 (fixed set), so the clock includes it; the reported accuracy is
    measured afterwards on a separate evaluation set.
    """
    task = get_task("parity")
    cfg = ModelConfig("gru", 2, 2, d_hidden=32, seed=seed)
    tc = TrainConfig(
        train_lengths=(1, 40), max_steps=3000, val_lengths=(500,), val_size=256,
        target_accuracy=0.999, patience=1, eval_every=100, seed=seed,
    )
    start = time.perf_counter()
    run = train(task, cfg, tc, progress=False)
    model = run.model
    seconds = time.perf_counter() - start
    acc = evaluate(model, task, [500], n=512, seed=999)[500]["accuracy"]
    return {"seconds": seconds, "steps": run.log["steps"], "accuracy_500": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--archs", nargs="+", default=["gru", "lstm"], choices=list(TORCH_MODULES))
    parser.add_argument("--solve-seeds", type=int, default=3, help="seeds for the time-to-solve run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    lines = [
        f"Training throughput, batch {args.batch} x length {args.length}, 1 layer, "
        f"{torch.get_num_threads()} thread, median of {args.repeats} x {args.steps} steps "
        f"(torch {torch.__version__}).",
        "",
        "| arch | d_hidden | HookedRNN tok/s | plain tok/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for arch in args.archs:
        for d_hidden in args.sizes:
            hooked, plain = bench_pair(arch, d_hidden, args)
            lines.append(
                f"| {arch} | {d_hidden} | {hooked:,.0f} | {plain:,.0f} | {hooked / plain:.2f}x |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "Time for GRU(32), parity, lengths 1-40, to reach >= 99.9% per-position accuracy at length 500:",
        "",
        "| seed | steps | seconds | accuracy at 500 (held-out set) |",
        "|---:|---:|---:|---:|",
    ]
    for seed in range(args.solve_seeds):
        r = time_to_solve_parity(seed)
        lines.append(f"| {seed} | {r['steps']} | {r['seconds']:.1f} | {r['accuracy_500']:.4f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()

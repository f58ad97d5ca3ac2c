"""Benchmark automaton extraction on trained GRU(32) / LSTM(32) networks.

For each task and architecture: train (cached under runs/bench_extraction/), then extract with
every method (kmeans, grid, gmm, agglomerative, our L*) and, when the optional `aalpy` extra is
installed, AALpy's L* on the same network in the same run. Columns: minimized states,
equivalent to the task's minimal automaton, fidelity (min over held-out lengths 50 and 100),
interchange accuracy, seconds (extraction and export; training excluded). An under-trained
network (few training steps) checks graceful degradation.

    OMP_NUM_THREADS=1 python analyses/bench_extraction.py [--tasks tomita1,parity] [--archs gru]

writes analyses/results/bench_extraction.md (the README table: one row per network, one
`states / equivalent? / fidelity / interchange / seconds` cell per method) and .json (every number).

`--large` (default: the zoo's large groups and the counter tasks) adds GRUs trained with the
defaults of `fsm-probe train --arch gru` (the size-aware recipe) and the default extraction (plus AALpy's L* when installed):
states, equivalence, fidelity, seconds, whether the network was found finite-state and the
counter machine's fidelity; written to OUT_large.md / .json. A spec written `SPEC@ARCH` trains that
architecture's defaults instead (`--large random:n=100,n_symbols=10@second_order`).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import queue  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fsm_probe.automata import Automaton  # noqa: E402
from fsm_probe.extraction import (  # noqa: E402
    DEFAULT_METHOD,
    METHODS,
    FSMExtractor,
    check_extraction,
    save_extraction,
)
from fsm_probe.extraction.checks import agreement, compare_to_task  # noqa: E402
from fsm_probe.extraction.collect import model_labels  # noqa: E402
from fsm_probe.io import atomic_write_json, atomic_write_text  # noqa: E402
from fsm_probe.models import ModelConfig  # noqa: E402
from fsm_probe.tasks import get_task  # noqa: E402
from fsm_probe.training import TrainConfig, train  # noqa: E402
from fsm_probe.training.checkpoint import load  # noqa: E402

torch.set_num_threads(1)

TASKS = (
    "tomita1", "tomita2", "tomita3", "tomita4", "tomita5", "tomita6", "tomita7",
    "parity", "cyclic:n=3", "flipflop", "gridworld:n=4", "quaternion",
)
LARGE = ("symmetric:n=4", "dihedral:n=15", "alternating:n=5", "symmetric:n=5", "dihedral:n=50", "gridworld:n=30",
         "cyclic:n=19,n_actions=19", "dyck1", "majority", "anbn")
LARGE_AALPY_TIMEOUT = 60.0  # seconds per network in the large table (L* does not end on counters)
ROOT = Path("runs/bench_extraction")
RESULTS = Path("analyses/results/bench_extraction")


def trained(spec: str, arch: str, steps: int | None = None, seed: int = 0):
    """A cached network: trained to 99.9% validation accuracy (or for `steps` steps only)."""
    tag = f"{arch}32_{spec.replace(':', '_').replace('=', '')}" + (f"_{steps}steps" if steps else "")
    run = ROOT / tag
    if not (run / "config.json").is_file():
        task = get_task(spec)
        a = task.automaton
        cfg = ModelConfig(arch=arch, d_vocab=a.n_symbols, d_out=a.n_labels, d_hidden=32, seed=seed)
        tcfg = TrainConfig(
            val_lengths=(40, 100), target_accuracy=0.999, max_steps=steps or 3000, seed=seed,
            eval_every=min(100, steps or 100),
        )
        train(task, cfg, tcfg, out_dir=run, progress=False)
    return load(run), tag


def trained_default(spec: str, seed: int = 0, arch: str = "gru"):
    """A cached net trained as `fsm-probe train --task SPEC --arch ARCH` does with default flags."""
    from fsm_probe.training.recipes import recipe

    task = get_task(spec)
    cfg = recipe(arch, task).model_config(task, seed=seed)
    tag = f"{arch}{cfg.d_hidden}_{spec.replace(':', '_').replace('=', '').replace(',', '_')}_defaults"
    run = ROOT / tag
    wanted = recipe(arch, task).train
    cached = json.loads((run / "config.json").read_text())["training"] if (run / "config.json").is_file() else None
    # absent, or older defaults (a net from before `mixed_inputs` trained on the task's sampler only)
    if cached is None or any(cached.get(k, 0.0 if k == "mixed_inputs" else None) != v for k, v in wanted.items()):
        train(task, cfg, TrainConfig(seed=seed), out_dir=run, progress=False)
    return load(run).model, tag, task


def large_row(spec: str, aalpy: bool) -> list[dict]:
    """Default extraction (and AALpy L*) on a recipe-trained GRU (or `SPEC@ARCH`); in-distribution
    accuracy from the task's own sampler at length 40."""
    spec, _, arch = spec.partition("@")
    model, tag, task = trained_default(spec, arch=arch or "gru")
    a = task.automaton
    tok = task.sampler.sample(np.random.default_rng(7), 500, 40)
    acc = float((model_labels(model, tok)[:, 1:] == a.run_outputs(tok)).mean())
    t0 = time.perf_counter()
    ex = FSMExtractor().fit(model, task)
    seconds = time.perf_counter() - t0
    rep = check_extraction(model, ex, task, lengths=(40, 80), n=500)
    cm = rep.get("counter_machine")
    row = {"network": tag, "task": spec, "network_accuracy": acc, "task_states": a.minimize().n_states,
           "method": DEFAULT_METHOD, "states": rep["n_states"], "equivalent": rep["equivalent_to_task"],
           "fidelity": rep["fidelity"], "seconds": seconds, "finite_state": rep["finite_state"],
           "capped": rep["capped"], "counter_fidelity": None if cm is None else cm["fidelity"],
           "counter_fidelity_by_length": None if cm is None else cm["fidelity_by_length"],
           "n_counters": None if cm is None else cm["n_counters"],
           "control_states": None if cm is None else cm["n_control_states"]}
    rows = [row]
    if aalpy:
        r = aalpy_lstar(model, a, timeout=LARGE_AALPY_TIMEOUT)
        if r is not None:
            rows.append({"network": tag, "task": spec, "method": "aalpy L*", **r})
    return rows


def large_markdown(rows: list[dict]) -> str:
    out = [
        "# Extraction of large automata and counter tasks",
        "",
        "Written by `analyses/bench_extraction.py --large` (1 thread). Networks trained with the defaults of "
        "`fsm-probe train --arch A` (GRUs unless the name says; the size-aware recipe); net acc: in distribution (the task's sampler, length 40). "
        "Fidelity: min over held-out lengths 40 and 80. Counter fidelity: the fitted counter machine "
        "against the network at lengths 40 / 80.",
        "",
        "| network | task states | net acc | method | states | equivalent | fidelity | finite-state | "
        "counters / control | counter fidelity (40 / 80) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] != DEFAULT_METHOD:
            states = r["note"] if r.get("note") else fmt(r.get("states"))
            out.append(f"| {r['network']} | | | {r['method']} | {states} | {fmt(r.get('equivalent'))} | "
                       f"{fmt(r.get('fidelity'))} | | | | {r['seconds']:.2f} |")
            continue
        cf = r["counter_fidelity_by_length"]
        counters = "-" if r["n_counters"] is None else f"{r['n_counters']} / {r['control_states']}"
        out.append(
            f"| {r['network']} | {r['task_states']} | {r['network_accuracy']:.4f} | {r['method']} | {r['states']} | "
            f"{fmt(r['equivalent'])} | {fmt(r['fidelity'])} | {fmt(r['finite_state'])} | "
            f"{counters} | "
            f"{'-' if cf is None else ' / '.join(f'{v:.4f}' for v in cf.values())} | {r['seconds']:.2f} |"
        )
    return "\n".join(out) + "\n"


def network_accuracy(model, a: Automaton, seed: int = 7) -> float:
    rng = np.random.default_rng(seed)
    accs = []
    for length in (50, 100):
        tok = rng.integers(0, a.n_symbols, (500, length))
        pred = model_labels(model, tok)[:, 1:]
        accs.append(float((pred == a.run_outputs(tok)).mean()))
    return min(accs)


def ours(run, method: str, out: Path) -> dict:
    t0 = time.perf_counter()
    ex = FSMExtractor(method=method).fit(run)
    save_extraction(out, ex, {"method": method})
    seconds = time.perf_counter() - t0
    rep = check_extraction(run, ex, lengths=(50, 100), n=500)
    return {
        "states": rep["n_states"], "raw": rep["n_states_raw"], "equivalent": rep["equivalent_to_task"],
        "fidelity": rep["fidelity"], "interchange": rep["interchange_accuracy"], "seconds": seconds,
    }


def numpy_cell(model):
    """`(step, init)` for a 1-layer GRU/LSTM/second-order HookedRNN: the same equations as torch, in numpy."""
    layer = model.layers[0]
    d = model.cfg.d_hidden
    if model.cfg.arch == "second_order":
        w = layer.weight_hh.detach().numpy().astype(np.float64)  # [symbol, from, to]
        drive = (layer.weight_ih.detach().numpy().T + layer.bias.detach().numpy()).astype(np.float64)

        def step_2nd(state, a):
            return (np.tanh(state[0] @ w[a] + drive[a]),)
        return step_2nd, lambda: (np.zeros(d),)
    cell = layer.cell
    emb = model.embed.weight.detach().numpy().astype(np.float64)
    w_ih, w_hh = (getattr(cell, n).detach().numpy().astype(np.float64) for n in ("weight_ih_l0", "weight_hh_l0"))
    b_ih, b_hh = (getattr(cell, n).detach().numpy().astype(np.float64) for n in ("bias_ih_l0", "bias_hh_l0"))
    gi_table = emb @ w_ih.T + b_ih

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    if model.cfg.arch == "gru":
        def step(state, a):
            h = state[0]
            gi, gh = gi_table[a], w_hh @ h + b_hh
            r = sigmoid(gi[:d] + gh[:d])
            z = sigmoid(gi[d:2 * d] + gh[d:2 * d])
            n = np.tanh(gi[2 * d:] + r * gh[2 * d:])
            return ((1 - z) * n + z * h,)
        return step, lambda: (np.zeros(d),)

    def step(state, a):
        h, c = state
        g = gi_table[a] + w_hh @ h + b_hh
        i, f, gg, o = sigmoid(g[:d]), sigmoid(g[d:2 * d]), np.tanh(g[2 * d:3 * d]), sigmoid(g[3 * d:])
        c = f * c + i * gg
        return (o * np.tanh(c), c)
    return step, lambda: (np.zeros(d), np.zeros(d))


def aalpy_lstar(model, a: Automaton, max_rounds: int = 20, timeout: float = 120.0) -> dict | None:
    """AALpy's L* (Moore machine) with a state-prefix oracle (100 walks of 20 per state)."""
    try:
        from aalpy.base import SUL
        from aalpy.learning_algs import run_Lstar
        from aalpy.oracles import StatePrefixEqOracle
    except ImportError:
        return None

    step_fn, init = numpy_cell(model)

    class NetworkSUL(SUL):
        """One network step per letter, in numpy (a torch call per step would dominate)."""

        def __init__(self) -> None:
            super().__init__()
            self.state = init()

        def pre(self) -> None:
            self.state = init()

        def post(self) -> None:
            pass

        def step(self, letter):
            if letter is not None:
                self.state = step_fn(self.state, letter)
            return int(np.argmax(w_out @ self.state[0] + b_out))

    w_out = model.unembed.weight.detach().numpy().astype(np.float64)
    b_out = model.unembed.bias.detach().numpy().astype(np.float64)

    alphabet = list(range(a.n_symbols))
    sul = NetworkSUL()
    oracle = StatePrefixEqOracle(alphabet, sul, walks_per_state=100, walk_len=20)
    channel = multiprocessing.get_context("fork").Queue()

    def work() -> None:
        learned = run_Lstar(
            alphabet, sul, oracle, automaton_type="moore", max_learning_rounds=max_rounds,
            print_level=0,
        )
        ids = {s: i for i, s in enumerate(learned.states)}
        channel.put(([[ids[s.transitions[x]] for x in alphabet] for s in learned.states],
                     [int(s.output) for s in learned.states], ids[learned.initial_state]))

    # a process, not a thread: one that runs past the limit is killed, instead of competing for
    # the interpreter with every later extraction (whose 20 s time limit it would eat into)
    t0 = time.perf_counter()
    proc = multiprocessing.get_context("fork").Process(target=work, daemon=True)
    proc.start()
    try:
        table, out_ids, start = channel.get(timeout=timeout)
    except queue.Empty:
        table = None
    seconds = time.perf_counter() - t0
    proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if table is None:
        return {"states": None, "equivalent": None, "fidelity": None, "interchange": None,
                "seconds": seconds, "note": f"no result within {timeout:.0f}s"}
    outputs = [a.labels[o] for o in out_ids]
    auto = Automaton(a.alphabet, [f"q{i}" for i in range(len(table))], start, table, outputs, a.labels).minimize()
    rng = np.random.default_rng(12345)
    fid = min(
        agreement(auto, tok, model_labels(model, tok)[:, 1:])["per_position"]
        for tok in (rng.integers(0, a.n_symbols, (500, n)) for n in (50, 100))
    )
    return {"states": auto.n_states, "equivalent": compare_to_task(auto, a)["equivalent_to_task"],
            "fidelity": fid, "interchange": None, "seconds": seconds}


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cell(r: dict) -> str:
    """`states / equivalent? / fidelity / interchange / seconds` for one method."""
    if r.get("note"):
        return f"- ({r['note']}, {r['seconds']:.0f} s)"
    return " / ".join([fmt(r["states"]), fmt(r["equivalent"]), fmt(r["fidelity"]), fmt(r["interchange"]),
                       f"{r['seconds']:.2f}"])


def goals(rows: list[dict]) -> list[str]:
    """One line per goal of the extraction issue, measured on the default method's rows."""
    default = [r for r in rows if r["method"] == DEFAULT_METHOD]
    good = [r for r in default if r["steps"] is None and r["network_accuracy"] >= 0.999]
    tomita = [r for r in default if r["steps"] is None and r["task"].startswith("tomita")]
    under = [r for r in default if r["steps"] is not None]
    lines = []
    if good:
        eq = sum(bool(r["equivalent"]) for r in good)
        ic = min((r["interchange"] for r in good if r["interchange"] is not None), default=None)
        lines.append(f"- exact recovery ({DEFAULT_METHOD}, networks >= 99.9% accurate): {eq} / {len(good)}")
        lines.append(f"- interchange accuracy on those networks: min {fmt(ic, 4)} (goal >= 0.99)")
    if tomita:
        lines.append(f"- default extraction seconds per Tomita network: max {max(r['seconds'] for r in tomita):.2f} "
                     "(goal < 1 s)")
        lstar = {r["network"]: r["seconds"] for r in rows if r["method"] == "aalpy L*"}
        faster = [r for r in tomita if r["network"] in lstar]
        if faster:
            n = sum(r["seconds"] < lstar[r["network"]] for r in faster)
            lines.append(f"- faster than AALpy L* on the same network: {n} / {len(faster)} Tomita networks")
    for r in under:
        ok = r["seconds"] <= 10 and r["states"] <= 20 and r["fidelity"] >= 0.90
        lines.append(f"- under-trained {r['network']} (accuracy {r['network_accuracy']:.3f}): {r['states']} states, "
                     f"fidelity {r['fidelity']:.3f}, {r['seconds']:.2f} s -> "
                     f"{'met' if ok else '**not met**'} (goal <= 10 s, <= 20 states, fidelity >= 0.90)")
    return lines


def markdown(rows: list[dict], methods: list[str]) -> str:
    nets: dict[str, list[dict]] = {}
    for r in rows:
        nets.setdefault(r["network"], []).append(r)
    head = ["network", "task states", "net acc", *methods]
    out = [
        "# Automaton extraction benchmark",
        "",
        "Written by `analyses/bench_extraction.py` (1 thread). Each method cell: minimized states / "
        "equivalent to the task's minimal automaton / fidelity (min over held-out lengths 50 and 100) / "
        "interchange accuracy / seconds (extraction and export; AALpy: learning only). Networks named "
        "`..._Nsteps` are under-trained GRUs stopped after N steps.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for net, rs in nets.items():
        by = {r["method"]: r for r in rs}
        r0 = rs[0]
        out.append("| " + " | ".join([net, str(r0["task_states"]), f"{r0['network_accuracy']:.4f}",
                                      *(cell(by[m]) if m in by else "-" for m in methods)]) + " |")
    out += ["", f"Goals (default method `{DEFAULT_METHOD}`):", "", *goals(rows), ""]
    return "\n".join(out)


def split_specs(text: str) -> list[str]:
    """`"cyclic:n=19,n_actions=19,dyck1"` -> the two specs: a `key=value` part without a task
    name continues the spec before it."""
    specs: list[str] = []
    for part in filter(None, text.split(",")):
        if specs and "=" in part and ":" not in part:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated; empty for none")
    parser.add_argument("--archs", default="gru,lstm")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-aalpy", action="store_true")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--large", nargs="?", const=",".join(LARGE), default=None,
                        help="comma-separated specs for the large/counter table (default list if no value)")
    parser.add_argument("--undertrained", default="tomita5@72,tomita6@150",
                        help="SPEC@STEPS,...: GRUs stopped early (empty for none)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="writes OUT.md (the table) and OUT.json (every number)")
    args = parser.parse_args()
    if args.large is not None:
        rows = []
        for spec in split_specs(args.large):
            rs = large_row(spec, not args.no_aalpy)
            print(rs, flush=True)
            rows += rs
        md = large_markdown(rows)
        out = args.out.with_name(args.out.name + "_large")
        atomic_write_text(out.with_suffix(".md"), md)
        atomic_write_json(out.with_suffix(".json"), {"threads": torch.get_num_threads(), "rows": rows})
        print(md)
        return
    nets = [(spec, arch, None) for spec in split_specs(args.tasks)
            for arch in args.archs.split(",")]
    for item in filter(None, args.undertrained.split(",")):
        spec, _, steps = item.partition("@")
        nets.append((spec, "gru", int(steps)))
    methods = args.methods.split(",")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_extraction_"))
    for spec, arch, steps in nets:
        run, tag = trained(spec, arch, steps)
        model = run.model
        if args.train_only:
            print(f"trained {tag}: {network_accuracy(model, get_task(spec).automaton):.4f}", flush=True)
            continue
        a = get_task(spec).automaton
        acc = network_accuracy(model, a)
        n_min = a.minimize().n_states
        results = [(m, ours(run, m, tmp / tag / m)) for m in methods]
        if not args.no_aalpy:
            r = aalpy_lstar(model, a)
            if r is not None:
                results.append(("aalpy L*", r))
        for method, r in results:
            rows.append({"network": tag, "task": spec, "arch": arch, "steps": steps,
                         "network_accuracy": acc, "task_states": n_min, "method": method, **r})
        print(f"{tag} (acc {acc:.4f}): " + "; ".join(f"{m} {cell(r)}" for m, r in results), flush=True)
    if rows:
        cols = methods + (["aalpy L*"] if any(r["method"] == "aalpy L*" for r in rows) else [])
        md = markdown(rows, cols)
        atomic_write_text(args.out.with_suffix(".md"), md)
        atomic_write_json(args.out.with_suffix(".json"), {"threads": torch.get_num_threads(), "rows": rows})
        print(md)


if __name__ == "__main__":
    main()

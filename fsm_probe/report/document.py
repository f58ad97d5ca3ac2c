"""`fsm-probe report`: one self-contained HTML file that locates what a trained model computes.

Sections: model card, length generalization, logit lens (and tuned lens), probes, attention,
activation patching (with attribution patching checked against it), causal tracing, circuit
summary and, for RNNs and RMTs (from the memory), the extracted automaton. On an RMT the lens and
probes read the inner Transformer's stream at the token positions, attention is shown per
segment, and patching and tracing act on the memory each segment writes. plotly.js is inlined once in the head, so the
file opens offline; every figure has a caption telling the reader how to read it. A section
that cannot be computed says why instead of failing the whole report.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from torch import nn

from ..circuits.attention import (
    attention_dilution,
    attention_patterns,
    head_stats,
    segment_patterns,
    token_labels,
)
from ..circuits.graph import circuit_graph, rank_components
from ..circuits.lens import fit_tuned_lens, logit_lens
from ..circuits.probes import probe_model
from ..errors import ConfigError, FsmProbeError, InputError
from ..explain import explain, train_max_length
from ..figures import circuits as figs
from ..figures.html import figure_block, page
from ..io import atomic_write_text, output_lock
from ..models import model_config
from ..tasks.datasets import eval_set
from ..training.checkpoint import load
from ..training.evaluation import evaluate

SECTIONS = (
    ("verdict", "Verdict"),
    ("model", "Model card"),
    ("length", "Length generalization"),
    ("lens", "Logit lens"),
    ("probes", "Probes"),
    ("attention", "Attention"),
    ("patching", "Activation patching"),
    ("tracing", "Causal tracing"),
    ("circuit", "Circuit summary"),
    ("automaton", "Extracted automaton"),
)


CIRCUIT_THRESHOLD = 0.2
CIRCUIT_TOP_K = 10


@dataclass
class ReportSettings:
    """How much data each analysis uses. `length=None`: min(training max length, 16)."""

    length: int | None = None
    n: int = 256
    eval_n: int = 256
    patch_n: int = 32
    trace_samples: int = 5
    tuned_steps: int = 300
    probe_samples: int = 3000
    dilution_n: int = 32
    extraction: bool = True
    extraction_max_states: int = 16
    extraction_seconds: float = 10.0
    iia_n: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> ReportSettings:
        """Small settings for tests and a first look (seconds on a CPU)."""
        return cls(n=64, eval_n=64, patch_n=8, trace_samples=2, tuned_steps=40,
                   probe_samples=600, dilution_n=8, extraction_max_states=8,
                   extraction_seconds=2.0, iia_n=16)


class _Doc:
    """Sections of HTML fragments; figures become plotly divs without their own plotly.js."""

    def __init__(self) -> None:
        self.parts: dict[str, list[str]] = {key: [] for key, _ in SECTIONS}
        self.current = "verdict"

    def section(self, key: str) -> None:
        self.current = key

    def text(self, text: str) -> None:
        self.parts[self.current].append(f"<p>{text}</p>")

    def note(self, text: str) -> None:
        self.parts[self.current].append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, fig: go.Figure, caption: str) -> None:
        self.parts[self.current].append(figure_block(fig, caption))

    def verdict(self, text: str) -> None:
        self.parts[self.current].append(f'<p class="verdict">{text}</p>')

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        self.parts[self.current].append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def _render(doc: _Doc, title: str, subtitle: str) -> str:
    return page(title, subtitle, [(key, name, "".join(doc.parts[key])) for key, name in SECTIONS])


def _guarded(doc: _Doc, key: str, fn: Callable[[], None]) -> None:
    doc.section(key)
    try:
        fn()
    except (FsmProbeError, ValueError, RuntimeError) as e:
        doc.note(f"Section not computed: {type(e).__name__}: {e}")


def analysis_length(model: nn.Module, length: int | None = None) -> int:
    """The sequence length the report (and `fsm-probe patch`/`trace`) analyses: `length`, else
    min(training max, 16), within a Transformer's context and at least 2."""
    length = length or min(train_max_length(model), 16)
    if not model_config(model).is_rnn:
        length = min(length, model_config(model).n_ctx)
    return max(length, 2)


def report_html(
    model: nn.Module,
    settings: ReportSettings | None = None,
    run_dir: str | os.PathLike | None = None,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The full report for `model` (with `fsm_task`, as `load` or `train` returns it).

    `progress`, when given, is called with the name of each section as it starts."""
    from ..circuits import patching
    from ..circuits.tracing import causal_tracing

    s = settings or ReportSettings()
    cfg = model_config(model)
    task = getattr(model, "fsm_task", None)
    if task is None:
        raise InputError("the model has no task (fsm_task); load it with fsm_probe.load")
    a = task.automaton
    train_max = train_max_length(model)
    length = analysis_length(model, s.length)
    doc = _Doc()
    state: dict[str, Any] = {}
    started = time.perf_counter()

    def model_card() -> None:
        training = dict(getattr(model, "fsm_training", {}) or {})
        n_params = sum(p.numel() for p in model.parameters())
        rows = [("task", task.spec), ("states / symbols / labels", f"{a.n_states} / {a.n_symbols} / {a.n_labels}")]
        rows += list(cfg.relevant_fields().items())
        rows.append(("parameters", n_params))
        doc.table(rows, ["model", "value"])
        keys = ("train_lengths", "steps", "max_steps", "batch_size", "lr", "seconds",
                "final_val_accuracy", "stopped_early", "final_only", "seed")
        if training:
            doc.table([(k, training.get(k)) for k in keys if k in training], ["training", "value"])
        else:
            doc.note("No training record: the model was not trained by fsm_probe.train.")
        log_path = Path(run_dir) / "train_log.jsonl" if run_dir is not None else None
        if log_path is not None and log_path.is_file():
            log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            if log:
                doc.figure(
                    figs.training_figure(log),
                    "Training loss (left axis, log scale) and accuracy on the validation lengths "
                    "(right axis) against the optimisation step. Training stops once validation "
                    "accuracy reaches the target for a few evaluations in a row.",
                )

    cap = cfg.n_ctx if not cfg.is_rnn else 10**9
    lengths = sorted({x for x in (max(2, train_max // 2), train_max, 2 * train_max, 4 * train_max,
                                   10 * train_max) if x <= cap})

    def verdict_section() -> None:
        explanation = explain(model, task, n=s.eval_n, iia_n=s.iia_n, extraction=False,
                              lengths=lengths, seed=s.seed)
        state["explanation"] = explanation
        doc.verdict(f"<b>{html.escape(explanation.verdict)}</b>: {html.escape(explanation.length['text'])} "
                    f"(final-position accuracy, threshold {explanation.length['threshold']}; tested "
                    f"lengths {', '.join(map(str, explanation.accuracy))}).")
        doc.parts["verdict"].append(f"<pre>{html.escape(explanation.text())}</pre>")
        if not explanation.length["learned"]:
            doc.note("The model did not learn its training lengths, so the analyses below describe a "
                     "model that does not solve the task: read them as a diagnosis of the training "
                     "failure, not as the circuit of a solution.")

    def length_section() -> None:
        report = evaluate(model, task, lengths, n=s.eval_n, seed=12345)
        state["length"] = report
        doc.table(
            [(k, v["accuracy"], v["final_accuracy"], v["sequence_accuracy"]) for k, v in report.items()],
            ["length", "per-position accuracy", "final-position accuracy", "sequence accuracy"],
        )
        doc.figure(
            figs.length_figure(report, train_max),
            f"Accuracy against input length (log scale); the shaded band is the training range "
            f"(up to {train_max}). A model that tracks the automaton's state stays at 1 to the right "
            "of the band; a length-bound shortcut falls towards chance (about "
            f"{1 / a.n_labels:.2f} for this task's {a.n_labels} labels at the final position) as "
            "soon as it leaves it.",
        )
        if not cfg.is_rnn and 10 * train_max > cfg.n_ctx:
            doc.note(f"Lengths above the Transformer's context (n_ctx={cfg.n_ctx}) are not evaluated.")

    def lens_section() -> None:
        res = logit_lens(model, length=length, n=s.n, seed=s.seed)
        state["lens"] = res
        what = ("the readout applied to each layer's hidden state" if cfg.is_rnn else
                "each residual-stream point decoded through the final norm and the unembedding")
        if cfg.arch == "rmt":
            what += " of the inner Transformer, at the token positions of every segment"
        doc.text(f"Logit lens: {html.escape(what)}. Earliest site right 99% of the time: "
                 f"<b>{html.escape(str(res.first_site()))}</b>.")
        doc.figure(
            figs.logit_lens_figure(res, "accuracy"),
            "Rows are sites from the input (top) to the output (bottom), columns positions. Colour "
            "is how often the decoded argmax equals the true label. The first row that turns "
            "bright is where the answer becomes readable; a row bright only at short positions "
            "marks a computation that depends on position (a shortcut).",
        )
        doc.figure(
            figs.logit_lens_figure(res, "prob"),
            "Same layout; colour is the mean probability the decoded distribution gives the true "
            f"label (chance: 1/{a.n_labels} = {1 / a.n_labels:.2f}, uniform over the task's "
            f"{a.n_labels} labels).",
        )
        if s.tuned_steps > 0 and len(res.sites) > 2:
            tuned = fit_tuned_lens(model, steps=s.tuned_steps, length=length, n=s.n, seed=s.seed + 7)
            tres = logit_lens(model, lens=tuned, length=length, n=s.n, seed=s.seed)
            state["tuned"] = tres
            doc.figure(
                figs.logit_lens_figure(tres, "accuracy"),
                "Tuned lens: each site first goes through an affine map trained to match the "
                "model's final output (Belrose et al. 2023). Where the tuned lens is accurate but "
                "the logit lens is not, the answer is present but in a different basis.",
            )

    def probe_section() -> None:
        res = probe_model(model, length=length, n=s.n, seed=s.seed, max_samples=s.probe_samples)
        state["probes"] = res
        rows = [(t, res.best_site(t), float(res.accuracy[:, j].max()), float(res.chance[j]),
                 res.first_site(t)) for j, t in enumerate(res.targets)]
        doc.table(rows, ["hypothesis", "best site", "best accuracy", "chance", "first site >= 0.95"])
        doc.figure(
            figs.probe_figure(res),
            "Held-out accuracy of a linear probe (logistic regression on standardised activations, "
            "split by sequence) for each hypothesis at each site; dotted lines are the majority-"
            "class baselines. A site where 'state' is decodable but prefix counts are not holds the "
            "automaton's state; a count ('count[1]') decodable before the state is the signature of "
            "'sum first, reduce later' (the parity shortcut).",
        )

    def attention_section() -> None:
        if cfg.is_rnn:
            doc.note(f"A {cfg.arch.upper()} has no attention; see the patching section for how "
                     "information moves through its state.")
            return
        tokens = eval_set(task, length, n=s.n, seed=s.seed).tokens
        stats = head_stats(model, tokens)
        state["heads"] = stats
        if cfg.arch == "rmt":
            rmt_attention(tokens, stats)
            return
        lay, head = stats.most_uniform()
        doc.text(f"Head closest to uniform causal averaging: <b>L{lay}H{head}</b> "
                 f"(distance {stats.uniform_distance[lay, head]:.3f}, normalised entropy "
                 f"{stats.entropy[lay, head]:.3f}).")
        example = tokens[:1]
        patt = attention_patterns(model, example)[0]
        doc.figure(
            figs.attention_head_grid(patt, token_labels(task, example[0]),
                                     title="Attention patterns of one sequence"),
            "One panel per layer (rows) and head (columns): row = query position, column = key "
            "position, darker = more weight; hover for the symbol and position. A lower triangle "
            "of even shade is uniform averaging over the prefix; a bright sub-diagonal attends to "
            "the previous token; a bright first column attends to the first token.",
        )
        doc.figure(
            figs.head_stats_figure(stats),
            "Per-head statistics averaged over sequences and query positions. Distance from "
            "uniform near 0 with entropy near 1 is the head of a counting "
            "shortcut (parity, cyclic groups): it averages all previous symbols. Previous- and first-token scores near 1 mark positional heads.",
        )
        d_lengths = sorted({x for x in (4, 8, 16, 32, 64, 128, 256, 512) if x <= cfg.n_ctx} | {length})
        dil = attention_dilution(model, d_lengths, n=s.dilution_n, seed=s.seed)
        state["dilution"] = dil
        doc.figure(
            figs.dilution_figure(dil),
            "Largest attention weight on any single token at the last position against sequence "
            "length, log-log, one line per head; the dashed line is 1/T. Heads that follow the "
            "dashed line (slope about -1) dilute: one symbol's contribution to their output "
            "shrinks like 1/T, so beyond the training lengths it falls below what the next layer "
            "can resolve, which is why the shortcut breaks on longer inputs.",
        )

    def rmt_attention(tokens: np.ndarray, stats: Any) -> None:
        S, M = cfg.segment_length, cfg.n_memory
        lay, head = np.unravel_index(int(np.argmax(stats.memory_read)), stats.memory_read.shape)
        doc.text(f"Each segment attends over [read memory ({M}) | {S} tokens | write memory ({M})]. "
                 f"Head reading the memory most from the token positions: <b>L{lay}H{head}</b> "
                 f"(weight {stats.memory_read[lay, head]:.3f}).")
        seg = (tokens.shape[1] // S) // 2
        toks = token_labels(task, tokens[0])[seg * S : (seg + 1) * S]
        labels = [f"read{i}" for i in range(M)] + toks + [f"write{i}" for i in range(M)]
        doc.figure(
            figs.attention_head_grid(segment_patterns(model, tokens[:1])[0, seg], labels,
                                     title=f"Attention patterns of segment {seg} of one sequence"),
            "One panel per layer (rows) and head (columns) of the inner Transformer on one "
            "segment: row = query, column = key, darker = more weight. 'read' columns are the "
            "memory written by the previous segment; the 'write' rows compute the memory the next "
            "segment reads.",
        )
        doc.figure(
            figs.head_stats_figure(stats),
            "Per-head statistics over the token queries of every complete segment. 'tokens -> "
            "read memory' is the weight the segment's tokens put on the incoming memory; 'write "
            "slots -> read memory' is how much the new memory copies the old one rather than the "
            "segment's tokens. A state-tracking RMT combines the two in its write slots.",
        )
        doc.note("No attention dilution: every segment has the same segment_length + 2 * n_memory "
                 "keys at any input length.")

    def patching_section() -> None:
        clean, corrupted, pos = patching.corruption_pairs(task, length, s.patch_n, s.seed)
        right = a.run_outputs(clean)[:, -1]
        wrong = a.run_outputs(corrupted)[:, -1]
        metric = patching.logit_diff(right, wrong)
        state["pairs"] = (clean, corrupted, pos)
        doc.text(
            f"{len(clean)} clean sequences of length {length}; each corrupted copy changes the "
            f"symbol at position <b>{pos}</b> so that the final label changes (symmetric "
            "replacement). Metric: logit difference between the clean and the corrupted final "
            "label at the last position. Normalised: 0 = corrupted run, 1 = clean run."
        )
        sites = patching.default_sites(cfg)
        cell = "segment" if cfg.arch == "rmt" else "(layer, position)"
        results: dict[str, Any] = {}
        for site in sites:
            results[site] = patching.activation_patching(model, clean, corrupted, metric, site=site)
        main = sites[0]
        noised = patching.activation_patching(model, clean, corrupted, metric, site=main, direction="noise")
        state["patching"] = results
        state["noised"] = noised
        r0 = results[main]
        doc.table([("clean", r0.clean_value), ("corrupted", r0.corrupted_value)], ["run", "logit difference"])
        described = {
            "resid_pre": "the residual stream entering each block",
            "attn_out": "each attention layer's output",
            "mlp_out": "each MLP's output",
            "head_out": "each head's output (rows L{layer}H{head})",
            "hidden": "the hidden state of each layer after each step",
            "cell": "the LSTM cell state of each layer after each step",
            "memory": "the memory written by each segment (all memory vectors)",
            "memory_slot": "one vector (row) of the memory written by each segment",
        }
        for site, res in results.items():
            doc.figure(
                figs.patching_figure(res),
                f"Denoising: run the corrupted input and copy in the clean value of "
                f"{described[site]} at one {'(segment, vector)' if site == 'memory_slot' else cell}. "
                "Colour is how much of the clean "
                "logit difference that single patch restores (1, dark blue = all of it; red = "
                "pushes further towards the corrupted answer). The cells that restore everything "
                "form a cross-section of the circuit: they show where, and at which position, the "
                f"information about position {pos} travels.",
            )
        doc.figure(
            figs.patching_figure(noised),
            "Noising (the reverse experiment): run the clean input and copy in the corrupted value "
            f"at one {cell}. Colour is the normalised metric after the patch: values near 0 mark "
            "cells whose corruption alone destroys the answer (necessary); near 1, unimportant.",
        )
        attrib = patching.attribution_patching(model, clean, corrupted, metric, sites=sites)
        rows = []
        for site in sites:
            cmp = patching.compare(attrib[site], results[site], k=min(10, results[site].values.numel()))
            rows.append((site, cmp["spearman"], cmp["spearman_abs"], cmp["pearson"], cmp["topk_agreement"]))
        state["attribution"] = rows
        doc.table(rows, ["site", "Spearman", "Spearman of |effect|", "Pearson", "top-10 agreement"])
        doc.figure(
            figs.attribution_scatter(attrib[main], results[main]),
            "Attribution patching (a first-order estimate from a forward of each input and one "
            f"backward) against exact activation patching, one point per {cell}. Points on the "
            "dashed diagonal are estimated exactly; the table above gives the rank correlations "
            "(signed, and of |effect|, the order that matters for finding the circuit). Use "
            "attribution to screen, exact patching to confirm.",
        )

    def tracing_section() -> None:
        if "pairs" not in state:
            doc.note("Causal tracing needs the corruption pairs of the patching section.")
            return
        clean, _, pos = state["pairs"]
        rmt = cfg.arch == "rmt"
        kinds = ["resid"] if cfg.is_rnn or rmt else ["resid", "attn"] + (["mlp"] if cfg.d_mlp != 0 else [])
        labels = [lab.split("·")[1] for lab in token_labels(task, clean[0])]
        if rmt:
            S, n = cfg.segment_length, len(labels)
            labels = [f"s{k} (tokens {k * S}-{min(n, (k + 1) * S) - 1})" for k in range(cfg.n_segments(n))]
        for kind in kinds:
            res = causal_tracing(model, clean, corrupt_positions=(pos,), noise=3.0, kind=kind,
                                 n_samples=s.trace_samples, seed=s.seed)
            state.setdefault("tracing", {})[kind] = res
            resid = "the residual stream entering the block"
            state_name = "the hidden and cell state" if cfg.arch == "lstm" else "the hidden state"
            resid = state_name if cfg.is_rnn else "the memory written by the segment" if rmt else resid
            what = {"resid": resid,
                    "attn": "the attention output", "mlp": "the MLP output"}[kind]
            doc.figure(
                figs.tracing_figure(res, labels),
                f"ROME-style causal tracing: Gaussian noise (3x the embedding std) is added at "
                f"position {pos} (starred); then {what} at one {'segment' if rmt else '(layer, position)'} "
                "is restored to its "
                f"clean value. Colour is p(clean prediction) at the last position, from "
                f"{res.low_score:.2f} (all corrupted, lightest) to {res.high_score:.2f} (clean, "
                "darkest). Dark cells carry the corrupted symbol's information to the answer.",
            )

    def circuit_section() -> None:
        if "patching" not in state:
            doc.note("The circuit summary needs the patching results.")
            return
        results = dict(state["patching"])
        if "memory_slot" in results:  # rank the memory once, per vector
            del results["memory"]
        ranked = rank_components(results)
        state["components"] = ranked
        rmt = cfg.arch == "rmt"
        graph = circuit_graph(ranked, threshold=CIRCUIT_THRESHOLD, top_k=CIRCUIT_TOP_K)
        state["graph"] = graph
        members = [c for c in ranked if c.name in graph]
        doc.text(f"{len(members)} of {len(ranked)} components restore at least "
                 f"{CIRCUIT_THRESHOLD:.0%} of the clean logit difference with a single denoising "
                 f"patch (at most {CIRCUIT_TOP_K} are kept):")
        doc.table(
            [(c.name, c.kind, c.layer, c.head, c.position, c.effect) for c in members],
            ["component", "kind", "layer", "memory vector" if rmt else "head",
             "segment" if rmt else "peak position", "normalised effect"],
        )
        if not members:
            doc.note("No single component restores that much: the information is spread over "
                     "several components, or the model does not use the corrupted symbol.")
            return
        doc.figure(
            figs.circuit_figure(graph),
            "The components of the table, laid out from input (left) to output (right) by layer. "
            "Node size and colour give the effect (blue restores, red hurts); an edge joins "
            "components the information could pass between, weighted by the weaker of the two "
            "effects.",
        )

    def automaton_section() -> None:
        if cfg.arch == "scratchpad":
            doc.note("The scratchpad carries no state between steps (it feeds back its own label "
                     "outputs), so there is no state to extract an automaton from.")
            return
        if not s.extraction:
            doc.note("Extraction was switched off for this report.")
            return
        try:
            from ..extraction import check_extraction, extract
        except ImportError:
            doc.note("fsm_probe.extraction is not available in this installation.")
            return
        ext = extract(model, task, n_words=min(256, s.n), length=length, n_val=min(256, s.n),
                      val_length=min(2 * length, cap), max_states=s.extraction_max_states,
                      time_limit=s.extraction_seconds, seed=s.seed)
        check = check_extraction(model, ext, task, lengths=(min(2 * train_max, cap),), n=min(500, s.eval_n))
        state["extraction"] = check
        doc.table(
            [("states (minimized)", check.get("n_states")), ("site", check.get("site")),
             ("fidelity to the network", check.get("fidelity")),
             ("accuracy on the task", check.get("accuracy")),
             ("equivalent to the task's automaton", check.get("equivalent_to_task")),
             ("interchange accuracy", check.get("interchange_accuracy"))],
            ["extraction", "value"],
        )
        try:
            from ..figures.extraction import automaton_figure, fidelity_curve_figure
        except ImportError:
            return
        if not cfg.is_rnn and cfg.arch != "rmt":
            doc.note("A Transformer carries no state from step to step: it recomputes the answer "
                     f"from the whole prefix at every position. This automaton (what `fsm-probe "
                     f"extract` gives) clusters the last residual stream ({check.get('site')}) at "
                     "each position, so it summarises the model's behaviour at the sampled lengths "
                     "rather than a mechanism; there is no state to transplant, hence no "
                     "interchange test.")
        read = {"rmt": "memory"}.get(cfg.arch, "hidden" if cfg.is_rnn else "residual-stream")
        doc.figure(
            automaton_figure(ext.graph_),
            f"The automaton read off the clustered {read} "
            "states: nodes are abstract states "
            "labelled with their output, arrows the transitions on each symbol. If it matches "
            "the task's minimal automaton, the network tracks the state rather than a shortcut.",
        )
        if getattr(ext, "curve_", None):
            doc.figure(
                fidelity_curve_figure(ext.curve_),
                "Agreement with the network on held-out sequences against the number of abstract "
                "states tried; the chosen size is the smallest that reaches the target.",
            )

    for key, fn in (
        ("verdict", verdict_section), ("model", model_card), ("length", length_section), ("lens", lens_section),
        ("probes", probe_section), ("attention", attention_section),
        ("patching", patching_section), ("tracing", tracing_section),
        ("circuit", circuit_section), ("automaton", automaton_section),
    ):
        if progress is not None:
            progress(f"{dict(SECTIONS)[key].lower()} ({time.perf_counter() - started:.0f} s)")
        _guarded(doc, key, fn)
    title = title or f"fsm_probe report: {cfg.arch} on {task.spec}"
    subtitle = (f"{Path(run_dir).name if run_dir is not None else 'model'}; analysis length "
                f"{length}, trained up to {train_max}; built in {time.perf_counter() - started:.1f} s")
    return _render(doc, title, subtitle)


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    settings: ReportSettings | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Path:
    """Load the checkpoint in `run_dir`, build its report and write it atomically to `out`
    (default `run_dir/report.html`)."""
    settings = replace(settings or ReportSettings(), **overrides)
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    if target.is_dir():
        raise ConfigError(f"--out {str(target)!r} is a directory; give a file name such as report.html")
    model = load(run_dir)
    text = report_html(model, settings, run_dir=run_dir, progress=progress)
    if target.parent.resolve() == Path(run_dir).resolve():
        # inside the checkpoint directory: not while a run swaps it (the report would be lost)
        with output_lock(run_dir):
            return atomic_write_text(target, text)
    return atomic_write_text(target, text)

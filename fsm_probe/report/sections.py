"""The report's sections: one function each, `ReportContext` in, `Section` (blocks and results) out.

On an RMT the lens and probes read the inner Transformer's stream at the token positions,
attention is shown per segment, and patching and tracing act on the memory each segment writes.
Every figure has a caption telling the reader how to read it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..circuits import patching as patch
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
from ..circuits.tracing import causal_tracing
from ..explain import explain
from ..figures import circuits as figs
from ..tasks.datasets import eval_set
from ..training.evaluation import evaluate
from .context import ReportContext, Section

CIRCUIT_THRESHOLD = 0.2
CIRCUIT_TOP_K = 10

TRAINING_KEYS = ("train_lengths", "steps", "max_steps", "batch_size", "lr", "seconds",
                 "final_val_accuracy", "stopped_early", "final_only", "seed")


def model_card(ctx: ReportContext) -> Section:
    """The task, the architecture's relevant fields, the training record and its loss curve."""
    out = Section("model")
    with out.guarded():
        a, training = ctx.task.automaton, ctx.training
        n_params = sum(p.numel() for p in ctx.model.parameters())
        rows = [("task", ctx.task.spec), ("states / symbols / labels", f"{a.n_states} / {a.n_symbols} / {a.n_labels}")]
        rows += list(ctx.cfg.relevant_fields().items())
        rows.append(("parameters", n_params))
        out.table(rows, ["model", "value"])
        if training:
            out.table([(k, training.get(k)) for k in TRAINING_KEYS if k in training], ["training", "value"])
        else:
            out.note("No training record: the model was not trained by fsm_probe.train.")
        log_path = Path(ctx.run_dir) / "train_log.jsonl" if ctx.run_dir is not None else None
        if log_path is not None and log_path.is_file():
            log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            if log:
                out.figure(
                    figs.training_figure(log),
                    "Training loss (left axis, log scale) and accuracy on the validation lengths "
                    "(right axis) against the optimisation step. Training stops once validation "
                    "accuracy reaches the target for a few evaluations in a row.",
                )
    return out


def verdict(ctx: ReportContext) -> Section:
    """`explain`'s verdict on length generalization, and its full text."""
    out = Section("verdict")
    with out.guarded():
        s = ctx.settings
        explanation = explain(ctx.run, n=s.eval_n, iia_n=s.iia_n, extraction=False,
                              lengths=list(ctx.lengths), seed=s.seed)
        out.results["explanation"] = explanation
        out.verdict(f"<b>{html.escape(explanation.verdict)}</b>: {html.escape(explanation.length['text'])} "
                    f"(final-position accuracy, threshold {explanation.length['threshold']}; tested "
                    f"lengths {', '.join(map(str, explanation.accuracy))}).")
        out.pre(explanation.text())
        if not explanation.length["learned"]:
            out.note("The model did not learn its training lengths, so the analyses below describe a "
                     "model that does not solve the task: read them as a diagnosis of the training "
                     "failure, not as the circuit of a solution.")
    return out


def length(ctx: ReportContext) -> Section:
    """Accuracy at half, 1, 2, 4 and 10 times the longest training length."""
    out = Section("length")
    with out.guarded():
        a, train_max = ctx.task.automaton, ctx.train_max
        report = evaluate(ctx.model, ctx.task, list(ctx.lengths), n=ctx.settings.eval_n, seed=12345)
        out.results["length"] = report
        out.table(
            [(k, v["accuracy"], v["final_accuracy"], v["sequence_accuracy"]) for k, v in report.items()],
            ["length", "per-position accuracy", "final-position accuracy", "sequence accuracy"],
        )
        out.figure(
            figs.length_figure(report, train_max),
            f"Accuracy against input length (log scale); the shaded band is the training range "
            f"(up to {train_max}). A model that tracks the automaton's state stays at 1 to the right "
            "of the band; a length-bound shortcut falls towards chance (about "
            f"{1 / a.n_labels:.2f} for this task's {a.n_labels} labels at the final position) as "
            "soon as it leaves it.",
        )
        if ctx.memory != "state" and 10 * train_max > ctx.cfg.n_ctx:
            out.note(f"Lengths above the Transformer's context (n_ctx={ctx.cfg.n_ctx}) are not evaluated.")
    return out


def lens(ctx: ReportContext) -> Section:
    """The logit lens (accuracy and probability of the true label per site) and the tuned lens."""
    out = Section("lens")
    with out.guarded():
        s, n_labels = ctx.settings, ctx.task.automaton.n_labels
        res = logit_lens(ctx.run, length=ctx.length, n=s.n, seed=s.seed)
        out.results["lens"] = res
        what = ("the readout applied to each layer's hidden state" if ctx.memory == "state" else
                "each residual-stream point decoded through the final norm and the unembedding")
        if ctx.memory == "memory":
            what += " of the inner Transformer, at the token positions of every segment"
        out.text(f"Logit lens: {html.escape(what)}. Earliest site right 99% of the time: "
                 f"<b>{html.escape(str(res.first_site()))}</b>.")
        out.figure(
            figs.logit_lens_figure(res, "accuracy"),
            "Rows are sites from the input (top) to the output (bottom), columns positions. Colour "
            "is how often the decoded argmax equals the true label. The first row that turns "
            "bright is where the answer becomes readable; a row bright only at short positions "
            "marks a computation that depends on position (a shortcut).",
        )
        out.figure(
            figs.logit_lens_figure(res, "prob"),
            "Same layout; colour is the mean probability the decoded distribution gives the true "
            f"label (chance: 1/{n_labels} = {1 / n_labels:.2f}, uniform over the task's "
            f"{n_labels} labels).",
        )
        if s.tuned_steps > 0 and len(res.sites) > 2:
            tuned = fit_tuned_lens(ctx.run, steps=s.tuned_steps, length=ctx.length, n=s.n, seed=s.seed + 7)
            tres = logit_lens(ctx.run, lens=tuned, length=ctx.length, n=s.n, seed=s.seed)
            out.results["tuned"] = tres
            out.figure(
                figs.logit_lens_figure(tres, "accuracy"),
                "Tuned lens: each site first goes through an affine map trained to match the "
                "model's final output (Belrose et al. 2023). Where the tuned lens is accurate but "
                "the logit lens is not, the answer is present but in a different basis.",
            )
    return out


def probes(ctx: ReportContext) -> Section:
    """Linear probes for the automaton's state and for prefix counts at every site."""
    out = Section("probes")
    with out.guarded():
        s = ctx.settings
        res = probe_model(ctx.run, length=ctx.length, n=s.n, seed=s.seed, max_samples=s.probe_samples)
        out.results["probes"] = res
        rows = [(t, res.best_site(t), float(res.accuracy[:, j].max()), float(res.chance[j]),
                 res.first_site(t)) for j, t in enumerate(res.targets)]
        out.table(rows, ["hypothesis", "best site", "best accuracy", "chance", "first site >= 0.95"])
        out.figure(
            figs.probe_figure(res),
            "Held-out accuracy of a linear probe (logistic regression on standardised activations, "
            "split by sequence) for each hypothesis at each site; dotted lines are the majority-"
            "class baselines. A site where 'state' is decodable but prefix counts are not holds the "
            "automaton's state; a count ('count[1]') decodable before the state is the signature of "
            "'sum first, reduce later' (the parity shortcut).",
        )
    return out


def attention(ctx: ReportContext) -> Section:
    """Attention patterns, per-head statistics and dilution with length (per segment on an RMT)."""
    out = Section("attention")
    with out.guarded():
        if ctx.memory == "state":
            out.note(f"A {ctx.name.upper()} has no attention; see the patching section for how "
                     "information moves through its state.")
            return out
        s, cfg = ctx.settings, ctx.cfg
        tokens = eval_set(ctx.task, ctx.length, n=s.n, seed=s.seed).tokens
        stats = head_stats(ctx.model, tokens=tokens)
        out.results["heads"] = stats
        if ctx.memory == "memory":
            _rmt_attention(out, ctx, tokens, stats)
            return out
        lay, head = stats.most_uniform()
        out.text(f"Head closest to uniform causal averaging: <b>L{lay}H{head}</b> "
                 f"(distance {stats.uniform_distance[lay, head]:.3f}, normalised entropy "
                 f"{stats.entropy[lay, head]:.3f}).")
        example = tokens[:1]
        patt = attention_patterns(ctx.model, example)[0]
        out.figure(
            figs.attention_head_grid(patt, token_labels(ctx.task, example[0]),
                                     title="Attention patterns of one sequence"),
            "One panel per layer (rows) and head (columns): row = query position, column = key "
            "position, darker = more weight; hover for the symbol and position. A lower triangle "
            "of even shade is uniform averaging over the prefix; a bright sub-diagonal attends to "
            "the previous token; a bright first column attends to the first token.",
        )
        out.figure(
            figs.head_stats_figure(stats),
            "Per-head statistics averaged over sequences and query positions. Distance from "
            "uniform near 0 with entropy near 1 is the head of a counting "
            "shortcut (parity, cyclic groups): it averages all previous symbols. Previous- and first-token scores near 1 mark positional heads.",
        )
        d_lengths = sorted({x for x in (4, 8, 16, 32, 64, 128, 256, 512) if x <= cfg.n_ctx} | {ctx.length})
        dil = attention_dilution(ctx.run, lengths=d_lengths, n=s.dilution_n, seed=s.seed)
        out.results["dilution"] = dil
        out.figure(
            figs.dilution_figure(dil),
            "Largest attention weight on any single token at the last position against sequence "
            "length, log-log, one line per head; the dashed line is 1/T. Heads that follow the "
            "dashed line (slope about -1) dilute: one symbol's contribution to their output "
            "shrinks like 1/T, so beyond the training lengths it falls below what the next layer "
            "can resolve, which is why the shortcut breaks on longer inputs.",
        )
    return out


def _rmt_attention(out: Section, ctx: ReportContext, tokens: np.ndarray, stats: Any) -> None:
    """The RMT variant: one segment's patterns over [read memory | tokens | write memory]."""
    S, M = ctx.cfg.segment_length, ctx.cfg.n_memory
    lay, head = np.unravel_index(int(np.argmax(stats.memory_read)), stats.memory_read.shape)
    out.text(f"Each segment attends over [read memory ({M}) | {S} tokens | write memory ({M})]. "
             f"Head reading the memory most from the token positions: <b>L{lay}H{head}</b> "
             f"(weight {stats.memory_read[lay, head]:.3f}).")
    seg = (tokens.shape[1] // S) // 2
    toks = token_labels(ctx.task, tokens[0])[seg * S : (seg + 1) * S]
    labels = [f"read{i}" for i in range(M)] + toks + [f"write{i}" for i in range(M)]
    out.figure(
        figs.attention_head_grid(segment_patterns(ctx.model, tokens[:1])[0, seg], labels,
                                 title=f"Attention patterns of segment {seg} of one sequence"),
        "One panel per layer (rows) and head (columns) of the inner Transformer on one "
        "segment: row = query, column = key, darker = more weight. 'read' columns are the "
        "memory written by the previous segment; the 'write' rows compute the memory the next "
        "segment reads.",
    )
    out.figure(
        figs.head_stats_figure(stats),
        "Per-head statistics over the token queries of every complete segment. 'tokens -> "
        "read memory' is the weight the segment's tokens put on the incoming memory; 'write "
        "slots -> read memory' is how much the new memory copies the old one rather than the "
        "segment's tokens. A state-tracking RMT combines the two in its write slots.",
    )
    out.note("No attention dilution: every segment has the same segment_length + 2 * n_memory "
             "keys at any input length.")


PATCHED = {
    "resid_pre": "the residual stream entering each block",
    "attn_out": "each attention layer's output",
    "mlp_out": "each MLP's output",
    "head_out": "each head's output (rows L{layer}H{head})",
    "hidden": "the hidden state of each layer after each step",
    "cell": "the LSTM cell state of each layer after each step",
    "memory": "the memory written by each segment (all memory vectors)",
    "memory_slot": "one vector (row) of the memory written by each segment",
}


def patching(ctx: ReportContext) -> Section:
    """Denoising and noising activation patching at every site, checked against attribution."""
    out = Section("patching")
    with out.guarded():
        model, a = ctx.model, ctx.task.automaton
        clean, corrupted, pos = ctx.corruption_pairs()
        right = a.run_outputs(clean)[:, -1]
        wrong = a.run_outputs(corrupted)[:, -1]
        metric = patch.logit_diff(right, wrong)
        out.text(
            f"{len(clean)} clean sequences of length {ctx.length}; each corrupted copy changes the "
            f"symbol at position <b>{pos}</b> so that the final label changes (symmetric "
            "replacement). Metric: logit difference between the clean and the corrupted final "
            "label at the last position. Normalised: 0 = corrupted run, 1 = clean run."
        )
        sites = list(ctx.sites)
        cell = "segment" if ctx.memory == "memory" else "(layer, position)"
        results: dict[str, Any] = {}
        for site in sites:
            results[site] = patch.activation_patching(model, clean, corrupted, metric, site=site)
        main = sites[0]
        noised = patch.activation_patching(model, clean, corrupted, metric, site=main, direction="noise")
        out.results["patching"] = results
        out.results["noised"] = noised
        r0 = results[main]
        out.table([("clean", r0.clean_value), ("corrupted", r0.corrupted_value)], ["run", "logit difference"])
        for site, res in results.items():
            out.figure(
                figs.patching_figure(res),
                f"Denoising: run the corrupted input and copy in the clean value of "
                f"{PATCHED[site]} at one {'(segment, vector)' if site == 'memory_slot' else cell}. "
                "Colour is how much of the clean "
                "logit difference that single patch restores (1, dark blue = all of it; red = "
                "pushes further towards the corrupted answer). The cells that restore everything "
                "form a cross-section of the circuit: they show where, and at which position, the "
                f"information about position {pos} travels.",
            )
        out.figure(
            figs.patching_figure(noised),
            "Noising (the reverse experiment): run the clean input and copy in the corrupted value "
            f"at one {cell}. Colour is the normalised metric after the patch: values near 0 mark "
            "cells whose corruption alone destroys the answer (necessary); near 1, unimportant.",
        )
        attrib = patch.attribution_patching(model, clean, corrupted, metric, sites=sites)
        rows = []
        for site in sites:
            cmp = patch.compare(attrib[site], results[site], k=min(10, results[site].values.numel()))
            rows.append((site, cmp["spearman"], cmp["spearman_abs"], cmp["pearson"], cmp["topk_agreement"]))
        out.results["attribution"] = rows
        out.table(rows, ["site", "Spearman", "Spearman of |effect|", "Pearson", "top-10 agreement"])
        out.figure(
            figs.attribution_scatter(attrib[main], results[main]),
            "Attribution patching (a first-order estimate from a forward of each input and one "
            f"backward) against exact activation patching, one point per {cell}. Points on the "
            "dashed diagonal are estimated exactly; the table above gives the rank correlations "
            "(signed, and of |effect|, the order that matters for finding the circuit). Use "
            "attribution to screen, exact patching to confirm.",
        )
    return out


def tracing(ctx: ReportContext) -> Section:
    """ROME-style causal tracing of the corrupted position, per kind of component."""
    out = Section("tracing")
    with out.guarded():
        if ctx.pairs is None:
            out.note("Causal tracing needs the corruption pairs of the patching section.")
            return out
        cfg, s = ctx.cfg, ctx.settings
        clean, _, pos = ctx.pairs
        segments = ctx.memory == "memory"
        kinds = ["resid"]
        if ctx.memory not in ("state", "memory"):  # a Transformer's sublayers
            kinds += ["attn"] + (["mlp"] if cfg.d_mlp != 0 else [])
        labels = [lab.split("·")[1] for lab in token_labels(ctx.task, clean[0])]
        if segments:
            S, n = cfg.segment_length, len(labels)
            labels = [f"s{k} (tokens {k * S}-{min(n, (k + 1) * S) - 1})" for k in range(cfg.n_segments(n))]
        resid = {"state": "the hidden and cell state" if "cell" in ctx.sites else "the hidden state",
                 "memory": "the memory written by the segment"}.get(
                     ctx.memory, "the residual stream entering the block")
        for kind in kinds:
            res = causal_tracing(ctx.model, clean, corrupt_positions=(pos,), noise=3.0, kind=kind,
                                 n_samples=s.trace_samples, seed=s.seed)
            out.results.setdefault("tracing", {})[kind] = res
            what = {"resid": resid, "attn": "the attention output", "mlp": "the MLP output"}[kind]
            out.figure(
                figs.tracing_figure(res, labels),
                f"ROME-style causal tracing: Gaussian noise (3x the embedding std) is added at "
                f"position {pos} (starred); then {what} at one {'segment' if segments else '(layer, position)'} "
                "is restored to its "
                f"clean value. Colour is p(clean prediction) at the last position, from "
                f"{res.low_score:.2f} (all corrupted, lightest) to {res.high_score:.2f} (clean, "
                "darkest). Dark cells carry the corrupted symbol's information to the answer.",
            )
    return out


def circuit(ctx: ReportContext, patched: Section) -> Section:
    """The components whose single denoising patch (from the `patched` section) restores most."""
    out = Section("circuit")
    with out.guarded():
        if "patching" not in patched.results:
            out.note("The circuit summary needs the patching results.")
            return out
        results = dict(patched.results["patching"])
        if "memory_slot" in results:  # rank the memory once, per vector
            del results["memory"]
        ranked = rank_components(results)
        out.results["components"] = ranked
        segments = ctx.memory == "memory"
        graph = circuit_graph(ranked, threshold=CIRCUIT_THRESHOLD, top_k=CIRCUIT_TOP_K)
        out.results["graph"] = graph
        members = [c for c in ranked if c.name in graph]
        out.text(f"{len(members)} of {len(ranked)} components restore at least "
                 f"{CIRCUIT_THRESHOLD:.0%} of the clean logit difference with a single denoising "
                 f"patch (at most {CIRCUIT_TOP_K} are kept):")
        out.table(
            [(c.name, c.kind, c.layer, c.head, c.position, c.effect) for c in members],
            ["component", "kind", "layer", "memory vector" if segments else "head",
             "segment" if segments else "peak position", "normalised effect"],
        )
        if not members:
            out.note("No single component restores that much: the information is spread over "
                     "several components, or the model does not use the corrupted symbol.")
            return out
        out.figure(
            figs.circuit_figure(graph),
            "The components of the table, laid out from input (left) to output (right) by layer. "
            "Node size and colour give the effect (blue restores, red hurts); an edge joins "
            "components the information could pass between, weighted by the weaker of the two "
            "effects.",
        )
    return out


def automaton(ctx: ReportContext) -> Section:
    """The automaton extracted from the model's state (or, on a Transformer, its last stream)."""
    out = Section("automaton")
    with out.guarded():
        if ctx.memory == "tokens":
            out.note("The scratchpad carries no state between steps (it feeds back its own label "
                     "outputs), so there is no state to extract an automaton from.")
            return out
        s, length, cap = ctx.settings, ctx.length, ctx.cap
        if not s.extraction:
            out.note("Extraction was switched off for this report.")
            return out
        try:
            from ..extraction import check_extraction, extract
        except ImportError:
            out.note("fsm_probe.extraction is not available in this installation.")
            return out
        ext = extract(ctx.model, ctx.task, n_words=min(256, s.n), length=length, n_val=min(256, s.n),
                      val_length=min(2 * length, cap), max_states=s.extraction_max_states,
                      time_limit=s.extraction_seconds, seed=s.seed)
        check = check_extraction(ctx.model, ext, ctx.task, lengths=(min(2 * ctx.train_max, cap),),
                                 n=min(500, s.eval_n))
        out.results["extraction"] = check
        out.table(
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
            return out
        if ctx.memory == "none":
            out.note("A Transformer carries no state from step to step: it recomputes the answer "
                     f"from the whole prefix at every position. This automaton (what `fsm-probe "
                     f"extract` gives) clusters the last residual stream ({check.get('site')}) at "
                     "each position, so it summarises the model's behaviour at the sampled lengths "
                     "rather than a mechanism; there is no state to transplant, hence no "
                     "interchange test.")
        read = {"memory": "memory", "state": "hidden"}.get(ctx.memory, "residual-stream")
        out.figure(
            automaton_figure(ext.graph_),
            f"The automaton read off the clustered {read} "
            "states: nodes are abstract states "
            "labelled with their output, arrows the transitions on each symbol. If it matches "
            "the task's minimal automaton, the network tracks the state rather than a shortcut.",
        )
        if getattr(ext, "curve_", None):
            out.figure(
                fidelity_curve_figure(ext.curve_),
                "Agreement with the network on held-out sequences against the number of abstract "
                "states tried; the chosen size is the smallest that reaches the target.",
            )
    return out

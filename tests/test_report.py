import contextlib
import dataclasses
import html
import io
import json
import re

import numpy as np
import pytest
import torch

from fsm_probe import (
    ModelConfig,
    TrainConfig,
    build_model,
    evaluate,
    get_task,
    load,
    predict_logits,
    train,
)
from fsm_probe.circuits.graph import circuit_graph, rank_components
from fsm_probe.circuits.patching import activation_patching, corruption_pairs, logit_diff
from fsm_probe.cli import main
from fsm_probe.errors import InputError
from fsm_probe.report import sections
from fsm_probe.report.context import ReportSettings, Section, memory_kind, report_context
from fsm_probe.report.document import SECTIONS

pytestmark = pytest.mark.slow


def _run(tmp_path_factory, arch: str, **kw):
    out = tmp_path_factory.mktemp(arch)
    cfg = ModelConfig(arch, 2, 2, d_hidden=16, n_heads=2, n_ctx=48, **kw)
    train(get_task("parity"), cfg, TrainConfig(train_lengths=(1, 6), max_steps=40, eval_every=20, val_size=64),
          out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    return _run(tmp_path_factory, "transformer", n_layers=2)


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory):
    return _run(tmp_path_factory, "gru")


def _cli_report(run_dir, out) -> tuple[str, str]:
    """`fsm-probe report --quick`: the page and what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--out", str(out), "--quick"])
    assert exc.value.code == 0, err.getvalue()
    assert out.is_file() and not list(out.parent.glob(f".{out.name}.*"))
    return out.read_text(encoding="utf-8"), err.getvalue()


@pytest.fixture(scope="module")
def transformer_page(transformer_run, tmp_path_factory):
    return _cli_report(transformer_run, tmp_path_factory.mktemp("tpage") / "t" / "report.html")


@pytest.fixture(scope="module")
def gru_page(gru_run, tmp_path_factory):
    return _cli_report(gru_run, tmp_path_factory.mktemp("gpage") / "report.html")


def _report(capsys, run_dir, out):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--out", str(out), "--quick"])
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    assert out.is_file() and not list(out.parent.glob(f".{out.name}.*"))
    return out.read_text(encoding="utf-8")


def _check_offline(text: str) -> None:
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[:300]) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, flags=re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']https?:", text, flags=re.I)
    assert text.count("Plotly.newPlot") == text.count("<figure>")
    assert text.count("<figcaption><b>How to read it.</b>") == text.count("<figure>")
    assert "Section not computed" not in text
    assert re.findall(r'<section id="(\w+)">', text) == [s.key for s in SECTIONS]
    assert re.findall(r'<nav>(.*?)</nav>', text)[0].count("<a href=") == len(SECTIONS)
    for spec in SECTIONS:
        assert f'<section id="{spec.key}"><h2>{spec.title}</h2>' in text
    _check_captions(text)


# How each figure (by its plotly title) must be captioned: a figure next to another's caption fails.
CAPTIONS = (
    (r"Training", r"Training loss"),
    (r"Length generalization", r"Accuracy against input length"),
    (r"Logit lens: accuracy of the true label", r"Rows are sites"),
    (r"Logit lens: p\(true label\)", r"Same layout; colour is the mean probability"),
    (r"Tuned lens: accuracy", r"Tuned lens: each site"),
    (r"Linear probes", r"Held-out accuracy of a linear probe"),
    (r"Attention patterns of (one sequence|segment)", r"One panel per layer"),
    (r"Per-head attention statistics", r"Per-head statistics"),
    (r"Attention dilution", r"Largest attention weight"),
    (r"Activation patching, memory_slot, denoise", r"Denoising: .* one vector \(row\) of the memory"),
    (r"Activation patching, memory, denoise", r"Denoising: .* the memory written by each segment"),
    (r"Activation patching, hidden, denoise", r"Denoising: .* the hidden state of each layer"),
    (r"Activation patching, cell, denoise", r"Denoising: .* the LSTM cell state"),
    (r"Activation patching, resid_pre, denoise", r"Denoising: .* the residual stream entering each block"),
    (r"Activation patching, attn_out, denoise", r"Denoising: .* each attention layer's output"),
    (r"Activation patching, mlp_out, denoise", r"Denoising: .* each MLP's output"),
    (r"Activation patching, head_out, denoise", r"Denoising: .* each head's output"),
    (r"Activation patching, \w+, noise", r"Noising \(the reverse experiment\)"),
    (r"Attribution vs exact patching", r"Attribution patching \(a first-order estimate"),
    (r"Restoring resid", r"causal tracing: .* then the (hidden|memory|residual stream|hidden and cell)"),
    (r"Restoring attn", r"causal tracing: .* then the attention output"),
    (r"Restoring mlp", r"causal tracing: .* then the MLP output"),
    (r"Circuit summary", r"The components of the table"),
    (r"Extracted automaton", r"The automaton read off the clustered"),
    (r"Fidelity vs number of abstract states", r"Agreement with the network on held-out sequences"),
)


def _figures(text: str) -> list[tuple[str, str]]:
    """(plotly layout title, caption) of every figure on the page."""
    decoder, out = json.JSONDecoder(), []
    for fig in re.findall(r"<figure>(.*?)</figure>", text, flags=re.S):
        div, caption = fig.split("<figcaption><b>How to read it.</b> ")
        call = div[div.index("Plotly.newPlot(") + len("Plotly.newPlot("):]
        call = call[call.index(",") + 1:].lstrip()  # past the div id
        _, end = decoder.raw_decode(call)  # the traces
        layout, _ = decoder.raw_decode(call[end:].lstrip()[1:].lstrip())
        out.append((layout.get("title", {}).get("text", ""), html.unescape(caption.split("</figcaption>")[0])))
    return out


def _check_captions(text: str) -> None:
    figures = _figures(text)
    assert figures
    for title, caption in figures:
        rules = [cap for pattern, cap in CAPTIONS if re.match(pattern, title)]
        assert rules, f"no caption rule for the figure titled {title!r}"
        assert re.search(rules[0], caption), (title, caption[:120])


def _section(text: str, key: str) -> str:
    return text.split(f'<section id="{key}">')[1].split("</section>")[0]


def _table(section: str, first_header: str) -> list[list[str]]:
    """The rows (cell text) of the table whose first column is headed `first_header`."""
    for table in re.findall(r"<table>(.*?)</table>", section, flags=re.S):
        if table.startswith(f"<thead><tr><th>{first_header}</th>"):
            body = table.split("<tbody>")[1]
            return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
                    for row in re.findall(r"<tr>(.*?)</tr>", body)]
    raise AssertionError(f"no table headed {first_header!r}")


def _g(x: float) -> str:
    return f"{float(x):.4g}"


def test_transformer_report(transformer_page):
    text, _ = transformer_page
    _check_offline(text)
    assert text.count("<figure>") >= 18
    for key, min_figs in (("lens", 2), ("probes", 1), ("attention", 3), ("patching", 5), ("tracing", 3), ("circuit", 1)):
        assert _section(text, key).count("<figure>") >= min_figs, key
    assert "Attention dilution" in _section(text, "attention")
    assert "Spearman" in _section(text, "patching")
    assert "fsm_probe report: transformer on parity" in text


def test_gru_report(gru_page):
    text, _ = gru_page
    _check_offline(text)
    assert "A GRU has no attention" in _section(text, "attention")
    assert _section(text, "patching").count("<figure>") >= 3
    automaton = _section(text, "automaton")
    assert "states (minimized)" in automaton and automaton.count("<figure>") >= 1
    assert "clustered hidden states" in automaton and "recomputes the answer" not in automaton


def test_report_tables_match_independent_computations(gru_page, gru_run):
    """The length table is `evaluate`, the model card counts the parameters, the patching table
    is the metric on the model's own logits, the circuit table is `rank_components`."""
    text, _ = gru_page
    model, task = load(gru_run).model, get_task("parity")
    rows = _table(_section(text, "length"), "length")
    lengths = [int(r[0]) for r in rows]
    assert lengths == [3, 6, 12, 24, 60]
    report = evaluate(model, task, lengths, n=64, seed=12345)
    assert rows == [[str(k), _g(v["accuracy"]), _g(v["final_accuracy"]), _g(v["sequence_accuracy"])]
                    for k, v in report.items()]
    card = dict(map(tuple, _table(_section(text, "model"), "model")))
    assert card["parameters"] == str(sum(p.numel() for p in model.parameters()))
    assert card["task"] == "parity" and card["d_hidden"] == "16"

    clean, corrupted, pos = corruption_pairs(task, 6, 8, 0)
    assert f"position <b>{pos}</b>" in _section(text, "patching")
    right, wrong = task.automaton.run_outputs(clean)[:, -1], task.automaton.run_outputs(corrupted)[:, -1]
    metric = logit_diff(right, wrong)
    with torch.no_grad():
        want = [float(metric(predict_logits(model, x))) for x in (clean, corrupted)]
    run_rows = _table(_section(text, "patching"), "run")
    assert [r[0] for r in run_rows] == ["clean", "corrupted"]
    np.testing.assert_allclose([float(r[1]) for r in run_rows], want, rtol=1e-3, atol=1e-4)

    ranked = rank_components({"hidden": activation_patching(model, clean, corrupted, metric, site="hidden")})
    graph = circuit_graph(ranked, threshold=0.2, top_k=10)
    members = [c for c in ranked if c.name in graph]
    assert _table(_section(text, "circuit"), "component") == [
        [c.name, c.kind, str(c.layer), "" if c.head is None else str(c.head), str(c.position), _g(c.effect)]
        for c in members
    ]
    assert f"{len(members)} of {len(ranked)} components" in _section(text, "circuit")


def test_report_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_report_out_directory_is_a_config_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is a directory" in err


def _verdict_expected(run_dir) -> str:
    """The verdict computed independently: evaluate at the report's lengths, then the threshold."""
    from fsm_probe import evaluate, load

    run = load(run_dir)
    train_max = run.train_config.train_lengths[1]
    cap = 10**9 if run.model_config.is_rnn else run.model_config.n_ctx
    lengths = sorted({x for x in (max(2, train_max // 2), train_max, 2 * train_max, 4 * train_max,
                                   10 * train_max) if x <= cap})
    acc = {k: v["final_accuracy"] for k, v in evaluate(run.model, run.task, lengths, n=64).items()}
    if acc[train_max] < 0.99:
        return "did not learn in distribution"
    beyond = [k for k in lengths if k > train_max and acc[k] < 0.99]
    if not beyond:
        return f"learned; generalises to {lengths[-1]}"
    ok = [k for k in lengths if k < beyond[0]]
    return f"learned up to {ok[-1]}; fails from {beyond[0]}"


@pytest.mark.parametrize("fixture", ["transformer", "gru"])
def test_report_opens_with_the_verdict(request, fixture):
    run_dir = request.getfixturevalue(f"{fixture}_run")
    text, err = request.getfixturevalue(f"{fixture}_page")
    titles = [s.title.lower() for s in SECTIONS]
    progress = re.findall(r"report: (.+?) \(\d+ s\)", err)
    assert progress == titles  # one progress line per section, in order
    first = text.index("<section")
    assert text[first:].startswith('<section id="verdict">')
    verdict = _section(text, "verdict")
    assert _verdict_expected(run_dir) in verdict and verdict.index('class="verdict"') < verdict.index("<pre>")
    assert ("The model did not learn its training lengths" in verdict) == (
        "did not learn in distribution" in _verdict_expected(run_dir))


def test_model_card_and_captions_fit_the_model(capsys, tmp_path, gru_page, tmp_path_factory):
    card = _section(gru_page[0], "model")
    assert "d_hidden" in card and "n_heads" not in card and "positional" not in card
    out = tmp_path_factory.mktemp("c5")
    cfg = ModelConfig("transformer", 2, 5, d_hidden=16, n_heads=2, n_ctx=48)
    train(get_task("cyclic:n=5"), cfg, TrainConfig(train_lengths=(1, 6), max_steps=10, eval_every=10, val_size=32),
          out_dir=out, progress=False)
    text = _report(capsys, out, tmp_path / "c5.html")
    _check_captions(text)
    assert "two labels" not in text and "chance: 1/5 = 0.20" in _section(text, "lens")
    assert "n_heads" in _section(text, "model") and "segment_length" not in _section(text, "model")
    automaton = _section(text, "automaton")
    assert "recomputes the answer" in automaton and "fsm-probe" in automaton


def test_sections_are_functions_of_one_frozen_context(gru_run):
    model = load(gru_run)
    ctx = report_context(model, ReportSettings.quick())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.length = 3
    assert (ctx.memory, ctx.length, ctx.train_max, ctx.lengths, ctx.sites) == ("state", 6, 6, (3, 6, 12, 24, 60), ("hidden",))
    assert ctx.pairs is not None and ctx.pairs[2] == corruption_pairs(ctx.task, 6, 8, 0)[2]
    length = sections.length(ctx)
    assert length.key == "length" and [b.kind for b in length.blocks] == ["table", "figure"]
    assert set(length.results["length"]) == {3, 6, 12, 24, 60}
    # a section that needs what another one computed says so instead of failing
    circuit = sections.circuit(ctx, Section("patching"))
    assert [b.kind for b in circuit.blocks] == ["note"] and "needs the patching results" in circuit.blocks[0].text
    tracing = sections.tracing(dataclasses.replace(ctx, pairs=None))
    assert [b.text for b in tracing.blocks] == ["Causal tracing needs the corruption pairs of the patching section."]
    patched = sections.patching(dataclasses.replace(ctx, pairs=None, pairs_error=InputError("no position")))
    assert [b.text for b in patched.blocks] == ["Section not computed: InputError: no position"]
    off = sections.automaton(dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, extraction=False)))
    assert [b.text for b in off.blocks] == ["Extraction was switched off for this report."]
    with pytest.raises(InputError, match="needs its task"):
        report_context(build_model(ModelConfig("gru", 2, 2, d_hidden=8)), ReportSettings.quick())


def test_a_failing_section_keeps_what_it_made_and_says_why():
    out = Section("lens")
    with out.guarded():
        out.text("first")
        raise InputError("boom")
    assert [(b.kind, b.text) for b in out.blocks] == [("text", "first"), ("note", "Section not computed: InputError: boom")]
    with pytest.raises(TypeError), Section("lens").guarded():
        raise TypeError("a bug is not a section note")


def test_memory_kind():
    kinds = {arch: memory_kind(ModelConfig(arch, 2, 2, d_hidden=8, n_heads=2, n_ctx=16))
             for arch in ("rnn", "gru", "lstm", "transformer", "rmt", "scratchpad")}
    assert kinds == {"rnn": "state", "gru": "state", "lstm": "state", "transformer": "none",
                     "rmt": "memory", "scratchpad": "tokens"}


def test_automaton_figure_of_a_large_automaton_draws_all_states() -> None:
    """A 400-state automaton (past the Kamada-Kawai limit) is drawn with every state."""
    from fsm_probe import get_task
    from fsm_probe.automata.convert import to_networkx
    from fsm_probe.figures.extraction import KAMADA_KAWAI_MAX, automaton_figure

    a = get_task("cyclic:n=400").automaton
    assert a.n_states > KAMADA_KAWAI_MAX
    fig = automaton_figure(to_networkx(a))
    xs = [x for tr in fig.data if tr.mode and "markers" in tr.mode for x in tr.x]
    assert len(xs) == 400

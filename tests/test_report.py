import re

import pytest

from fsm_probe import ModelConfig, TrainConfig, get_task, train
from fsm_probe.cli import main
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
    for key, name in SECTIONS:
        assert f'<section id="{key}"><h2>{name}</h2>' in text


def _section(text: str, key: str) -> str:
    return text.split(f'<section id="{key}">')[1].split("</section>")[0]


def test_transformer_report(capsys, tmp_path, transformer_run):
    text = _report(capsys, transformer_run, tmp_path / "t" / "report.html")
    _check_offline(text)
    assert text.count("<figure>") >= 18
    for key, min_figs in (("lens", 2), ("probes", 1), ("attention", 3), ("patching", 5), ("tracing", 3), ("circuit", 1)):
        assert _section(text, key).count("<figure>") >= min_figs, key
    assert "Attention dilution" in _section(text, "attention")
    assert "Spearman" in _section(text, "patching")


def test_gru_report(capsys, tmp_path, gru_run):
    text = _report(capsys, gru_run, tmp_path / "report.html")
    _check_offline(text)
    assert "has no attention" in _section(text, "attention")
    assert _section(text, "patching").count("<figure>") >= 3
    automaton = _section(text, "automaton")
    assert "states (minimized)" in automaton and automaton.count("<figure>") >= 1


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

    model = load(run_dir)
    train_max = model.fsm_training["train_lengths"][1]
    cap = 10**9 if model.fsm_config.is_rnn else model.fsm_config.n_ctx
    lengths = sorted({x for x in (max(2, train_max // 2), train_max, 2 * train_max, 4 * train_max,
                                   10 * train_max) if x <= cap})
    acc = {k: v["final_accuracy"] for k, v in evaluate(model, model.fsm_task, lengths, n=64).items()}
    if acc[train_max] < 0.99:
        return "did not learn in distribution"
    beyond = [k for k in lengths if k > train_max and acc[k] < 0.99]
    if not beyond:
        return f"learned; generalises to {lengths[-1]}"
    ok = [k for k in lengths if k < beyond[0]]
    return f"learned up to {ok[-1]}; fails from {beyond[0]}"


@pytest.mark.parametrize("fixture", ["transformer_run", "gru_run"])
def test_report_opens_with_the_verdict(capsys, tmp_path, request, fixture):
    run_dir = request.getfixturevalue(fixture)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--quick"])
    err = capsys.readouterr().err
    assert exc.value.code == 0
    assert "report: length generalization" in err and "report: causal tracing" in err  # progress lines
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    first = text.index("<section")
    assert text[first:].startswith('<section id="verdict">')
    assert _verdict_expected(run_dir) in _section(text, "verdict")


def test_model_card_and_captions_fit_the_model(capsys, tmp_path, gru_run, tmp_path_factory):
    card = _section(_report(capsys, gru_run, tmp_path / "g.html"), "model")
    assert "d_hidden" in card and "n_heads" not in card and "positional" not in card
    out = tmp_path_factory.mktemp("c5")
    cfg = ModelConfig("transformer", 2, 5, d_hidden=16, n_heads=2, n_ctx=48)
    train(get_task("cyclic:n=5"), cfg, TrainConfig(train_lengths=(1, 6), max_steps=10, eval_every=10, val_size=32),
          out_dir=out, progress=False)
    text = _report(capsys, out, tmp_path / "c5.html")
    assert "two labels" not in text and "chance: 1/5 = 0.20" in _section(text, "lens")
    assert "n_heads" in _section(text, "model") and "segment_length" not in _section(text, "model")
    automaton = _section(text, "automaton")
    assert "recomputes the answer" in automaton and "fsm-probe" in automaton

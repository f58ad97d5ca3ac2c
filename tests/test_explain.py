"""`fsm-probe explain`: the three verdicts on freshly trained runs, and a compiled RNN."""

from __future__ import annotations

import json

import pytest

from fsm_probe import ModelConfig, TrainConfig, get_task, save, train
from fsm_probe.cli import main
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.training.evaluation import evaluate

pytestmark = pytest.mark.slow


def _explain(capsys, run, *extra: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(run), "--json", "--n", "64", "--iia-n", "32", *extra])
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    return json.loads(captured.out)


def test_gru_on_parity_implements(tmp_path, capsys):
    task = get_task("parity")
    train(task, ModelConfig("gru", 2, 2, d_hidden=16), TrainConfig(train_lengths=(1, 16), max_steps=600),
          out_dir=tmp_path / "gru", progress=False)
    e = _explain(capsys, tmp_path / "gru")
    assert e["verdict"] == "implements"
    assert e["state_site"]["site"] == "layers.0" and e["state_site"]["iia"] >= 0.99
    assert e["state_site"]["iia_beyond"] >= 0.99 and e["state_site"]["length_beyond"] == 32
    assert e["extraction"]["equivalent_to_task"] is True
    assert e["length"]["status"] == "generalises" and e["breaks_at_length"] is None


def test_transformer_on_flipflop_is_a_shortcut(tmp_path, capsys):
    task = get_task("flipflop")
    model = train(task, ModelConfig("transformer", 3, 3, n_layers=2, d_hidden=32, n_ctx=64),
                  TrainConfig(train_lengths=(8, 8), max_steps=400, lr=3e-3, eval_every=50, val_size=128),
                  out_dir=tmp_path / "tf", progress=False).model
    e = _explain(capsys, tmp_path / "tf")
    acc = evaluate(model, task, [8, 16, 32], n=64, seed=12345)
    assert e["accuracy"] == {str(k): v["final_accuracy"] for k, v in acc.items()}
    assert acc[8]["final_accuracy"] >= 0.99 and acc[16]["final_accuracy"] < 0.99
    assert e["verdict"] == "shortcut" and e["breaks_at_length"] == 16
    kinds = [m["kind"] for m in e["mechanism"]]
    assert "positions_beyond_training" in kinds
    assert e["state_site"]["site"] in ("blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre")
    assert e["state_site"]["iia_beyond"] < 0.99 and e["state_site"]["length_beyond"] == 16


def test_barely_trained_model_did_not_learn(tmp_path, capsys):
    train(get_task("cyclic:n=5"), ModelConfig("gru", 2, 5, d_hidden=8), TrainConfig(max_steps=2, eval_every=2),
          out_dir=tmp_path / "raw", progress=False)
    e = _explain(capsys, tmp_path / "raw")
    assert e["verdict"] == "not_learned" and e["state_site"] is None and e["mechanism"] == []
    assert e["length"]["in_distribution_accuracy"] == e["accuracy"]["40"] < 0.99
    with pytest.raises(SystemExit):
        main(["explain", str(tmp_path / "raw")])
    assert capsys.readouterr().out.startswith("gru on cyclic:n=5,n_actions=2: not_learned\n")
    for command in (["patch"], ["trace"], ["eval", "--lengths", "80"]):  # every command says so
        with pytest.raises(SystemExit):
            main([*command[:1], str(tmp_path / "raw"), *command[1:]])
        out = " ".join(capsys.readouterr().out.split())
        assert "did not learn in distribution" in out, command


def test_compiled_rnn_implements(tmp_path, capsys):
    task = get_task("tomita4")
    save(compile_rnn(task.automaton), tmp_path / "c", task=task)
    e = _explain(capsys, tmp_path / "c", "--no-extraction")
    assert e["verdict"] == "implements" and e["state_site"]["iia"] == 1.0 and e["extraction"] is None


@pytest.mark.parametrize("construction", ["scan", "shortcut"])
def test_compiled_transformer_gets_its_circuit(tmp_path, capsys, construction):
    run = tmp_path / construction
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--task", "cyclic:n=3", "--arch", "transformer", "--construction", construction,
              "--n-ctx", "16", "--out", str(run)])
    assert exc.value.code == 0
    capsys.readouterr()
    truth = json.loads((run / "circuit.json").read_text())
    e = _explain(capsys, run)
    n_layers = json.loads((run / "config.json").read_text())["model"]["n_layers"]
    # exact up to its context, and nothing longer exists to test
    assert e["trained"] is False and e["length"]["status"] == "untested_beyond"
    assert set(e["components"]) == set(truth["components"])
    if n_layers == 1:  # a shortcut: the state exists only in the one block's output
        assert truth["state_cells"] == {} and e["state_site"] is None and e["verdict"] == "unverified"
        assert any("no intermediate state site" in line for line in e["evidence"])
    else:  # tested where the construction puts the state (circuit.json), not at a searched site
        assert e["state_site"]["site"] == "construction" and e["state_site"]["cells"] == truth["state_cells"]
        assert e["state_site"]["iia"] >= 0.99 and e["verdict"] == "implements"

"""Extraction from small trained GRUs (a few seconds of training each)."""

from __future__ import annotations

import json

import pytest

from fsm_probe.cli import main
from fsm_probe.extraction import FSMExtractor, check_extraction
from fsm_probe.models import ModelConfig
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, train

QUICK = TrainConfig(
    train_lengths=(1, 20), max_steps=600, eval_every=50, val_lengths=(30,), target_accuracy=1.0,
    lr=0.02,
)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["tomita1", "tomita2", "tomita4", "parity"])
def test_trained_gru_extraction_is_exact(spec: str) -> None:
    task = get_task(spec)
    a = task.automaton
    run = train(task, ModelConfig(arch="gru", d_vocab=a.n_symbols, d_out=a.n_labels, d_hidden=16),
                  QUICK, progress=False)
    model = run.model
    assert run.log["final_val_accuracy"] == 1.0
    ex = FSMExtractor().fit(run)
    report = check_extraction(model, ex, lengths=(50, 100), n=300)
    assert report["equivalent_to_task"] is True, report["counterexample"]
    assert report["n_states"] == a.minimize().n_states
    assert report["fidelity"] >= 0.999
    assert report["interchange_accuracy"] >= 0.99
    lst = FSMExtractor(method="lstar").fit(run)
    assert lst.automaton_.isomorphism(ex.automaton_) is not None


MOD3 = {
    "name": "mod3", "alphabet": ["a", "b"], "states": ["s0", "s1", "s2"], "start": "s0",
    "transitions": {"s0": {"a": "s1", "b": "s0"}, "s1": {"a": "s2", "b": "s1"},
                    "s2": {"a": "s0", "b": "s2"}},
    "outputs": {"s0": "0", "s1": "1", "s2": "2"},
}


@pytest.mark.slow
def test_task_file_train_then_extract(tmp_path, capsys) -> None:
    path = tmp_path / "mod3.json"
    path.write_text(json.dumps(MOD3))
    run, out = tmp_path / "run", tmp_path / "x"
    with pytest.raises(SystemExit) as e:
        main(["train", "--task-file", str(path), "--arch", "gru", "--hidden", "16", "--max-steps",
              "600", "--train-lengths", "1:20", "--lr", "0.02", "--quiet", "--out", str(run)])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["extract", str(run), "--out", str(out)])
    assert e.value.code == 0
    report = json.loads((out / "extraction.json").read_text())
    assert report["equivalent_to_task"] is True
    assert report["n_states"] == 3

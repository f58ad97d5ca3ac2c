"""The demo's verdicts follow its own measurements (tiny budgets here; `make demo` runs the real one)."""

import json

import pytest
from rich.console import Console

from fsm_probe import demo
from fsm_probe.models import ModelConfig
from fsm_probe.training import TrainConfig

pytestmark = pytest.mark.slow


def test_untrained_models_are_reported_as_not_learned(tmp_path, monkeypatch):
    def tiny(n_symbols, n_labels):
        cfg = TrainConfig(train_lengths=(40, 40), max_steps=3, eval_every=3, val_size=32)
        return {
            "gru": (ModelConfig("gru", n_symbols, n_labels, d_hidden=4), cfg),
            "transformer": (ModelConfig("transformer", n_symbols, n_labels, d_hidden=8, n_heads=2), cfg),
        }

    monkeypatch.setattr(demo, "demo_runs", tiny)
    console = Console(record=True, width=200, markup=False, emoji=False, highlight=False)
    summary = demo.run_demo(tmp_path, console=console, progress=False)
    text = console.export_text()
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved == summary
    for name in ("gru", "transformer"):
        acc = summary["accuracy"][name][str(demo.TRAIN_LENGTH)]["final_accuracy"]
        e = summary["explanations"][name]
        assert e["length"]["in_distribution_accuracy"] == acc < 0.99
        assert e["verdict"] == "not_learned" and e["state_site"] is None
        assert f"{name} on flipflop:n=2,p_write=0.5: not_learned" in text
        assert "length: did not learn in distribution" in text
        assert f"{name}: stopped at step 3 of 3 (the step budget was spent)" in text
    assert "40 (longest trained)" in text

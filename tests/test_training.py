import json

import numpy as np
import pytest
import torch

import fsm_probe.training as training
from fsm_probe.checkpoint import load
from fsm_probe.errors import CheckpointError, ConfigError
from fsm_probe.evaluation import evaluate
from fsm_probe.models import ModelConfig
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, lr_schedule, train


def _cfg(task, arch="gru", **kw):
    a = task.automaton
    return ModelConfig(arch, a.n_symbols, a.n_labels, **{"d_hidden": 16, **kw})


def test_lr_schedule_warms_up_then_decays():
    values = [lr_schedule(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:], strict=False))
    assert values[-1] == pytest.approx(0.1, abs=0.01)


def test_same_seed_same_run_different_seed_different_run():
    task = get_task("parity")
    tc = TrainConfig(train_lengths=(1, 10), max_steps=15, eval_every=5, seed=1)
    m1 = train(task, _cfg(task), tc, progress=False)
    m2 = train(task, _cfg(task), tc, progress=False)
    m3 = train(task, _cfg(task), TrainConfig(train_lengths=(1, 10), max_steps=15, eval_every=5, seed=2), progress=False)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, c) for a, c in zip(m1.state_dict().values(), m3.state_dict().values(), strict=True))


@pytest.mark.slow
def test_gru_learns_parity_and_generalizes_in_length(tmp_path):
    task = get_task("parity")
    model = train(task, _cfg(task, d_hidden=32), TrainConfig(max_steps=1500), out_dir=tmp_path, progress=False)
    report = evaluate(model, task, [40, 200], n=128)
    assert report[40]["accuracy"] >= 0.999 and report[200]["accuracy"] >= 0.999
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log and {"step", "loss", "val_accuracy", "seconds"} <= set(log[-1])
    assert model.fsm_training["stopped_early"]
    reloaded = load(tmp_path)
    assert evaluate(reloaded, task, [200], n=128) == evaluate(model, task, [200], n=128)


@pytest.mark.slow
def test_final_only_training_on_a_deletang_task():
    task = get_task("parity_check")
    assert task.final_only
    model = train(task, _cfg(task, d_hidden=32), TrainConfig(max_steps=1200, train_lengths=(1, 20)), progress=False)
    assert evaluate(model, task, [20, 60], n=128)[60]["final_accuracy"] >= 0.99


@pytest.mark.slow
def test_transformer_trains_in_distribution():
    task = get_task("parity")
    cfg = _cfg(task, arch="transformer", d_hidden=32, n_heads=4, n_layers=2, n_ctx=64)
    model = train(task, cfg, TrainConfig(max_steps=400, train_lengths=(1, 8), val_lengths=(8,), lr=3e-3, target_accuracy=0.98), progress=False)
    assert evaluate(model, task, [8], n=256)[8]["accuracy"] >= 0.95


def test_interrupted_training_leaves_no_checkpoint(tmp_path, monkeypatch):
    task = get_task("parity")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(task, _cfg(task), TrainConfig(max_steps=10, eval_every=5), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError):
        load(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_lengths": (0, 5)}, "train lengths"),
        ({"train_lengths": (9, 5)}, "train lengths"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": -3}, "max_steps"),
        ({"lr": -1.0}, "learning rate"),
        ({"target_accuracy": 1.5}, "target accuracy"),
        ({"grad_clip": 0.0}, "grad_clip"),
    ],
)
def test_nonsensical_hyperparameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_model_must_fit_the_task():
    task = get_task("cyclic:n=5")
    with pytest.raises(ConfigError, match="do not fit"):
        train(task, ModelConfig("gru", 2, 2), TrainConfig(max_steps=1), progress=False)


def test_evaluation_matches_a_direct_computation():
    task = get_task("parity")
    model = train(task, _cfg(task), TrainConfig(max_steps=5, eval_every=5), progress=False)
    from fsm_probe.datasets import eval_set
    from fsm_probe.models import predict_logits

    batch = eval_set(task, 30, n=64, seed=7)
    pred = predict_logits(model, batch.tokens).argmax(-1).numpy()
    r = evaluate(model, task, [30], n=64, seed=7)[30]
    assert r["accuracy"] == pytest.approx(float(np.mean(pred == batch.labels)))
    assert r["final_accuracy"] == pytest.approx(float(np.mean(pred[:, -1] == batch.labels[:, -1])))
    assert r["sequence_accuracy"] == pytest.approx(float(np.mean((pred == batch.labels).all(1))))


def test_out_dir_that_is_a_file_is_a_checkpoint_error(tmp_path):
    task = get_task("parity")
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        train(task, _cfg(task), TrainConfig(train_lengths=(1, 4), max_steps=2, eval_every=1), out_dir=target,
              progress=False)


def test_failed_retrain_keeps_the_previous_log_and_checkpoint(tmp_path, monkeypatch):
    task = get_task("parity")
    tc = TrainConfig(train_lengths=(1, 6), max_steps=4, eval_every=2, val_size=16)
    train(task, _cfg(task), tc, out_dir=tmp_path, progress=False)
    log = (tmp_path / "train_log.jsonl").read_text()
    config = (tmp_path / "config.json").read_text()
    assert len(log.splitlines()) == 2 and not (tmp_path / "train_log.jsonl.tmp").exists()
    real = training.evaluate
    calls = []

    def fail_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(training, "evaluate", fail_second)
    with pytest.raises(KeyboardInterrupt):
        train(task, _cfg(task), tc, out_dir=tmp_path, progress=False)
    assert (tmp_path / "train_log.jsonl").read_text() == log
    assert (tmp_path / "config.json").read_text() == config

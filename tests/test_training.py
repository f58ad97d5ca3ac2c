import json

import numpy as np
import pytest
import torch

import fsm_probe.training.trainer as training
from fsm_probe.errors import CheckpointError, ConfigError
from fsm_probe.models import ModelConfig
from fsm_probe.tasks import get_task
from fsm_probe.training.checkpoint import load
from fsm_probe.training.evaluation import evaluate
from fsm_probe.training.trainer import TrainConfig, lr_schedule, train


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
    m1 = train(task, _cfg(task), tc, progress=False).model
    m2 = train(task, _cfg(task), tc, progress=False).model
    m3 = train(task, _cfg(task), TrainConfig(train_lengths=(1, 10), max_steps=15, eval_every=5, seed=2), progress=False).model
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, c) for a, c in zip(m1.state_dict().values(), m3.state_dict().values(), strict=True))


@pytest.mark.slow
def test_gru_learns_parity_and_generalizes_in_length(tmp_path):
    task = get_task("parity")
    run = train(task, _cfg(task, d_hidden=32), TrainConfig(max_steps=1500), out_dir=tmp_path, progress=False)
    model = run.model
    assert run.task is task and run.directory == tmp_path and run.train_config.max_steps == 1500
    report = evaluate(model, task, [40, 200], n=128)
    assert report[40]["accuracy"] >= 0.999 and report[200]["accuracy"] >= 0.999
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log and {"step", "loss", "val_accuracy", "seconds"} <= set(log[-1])
    assert run.log["stopped_early"] and run.learned
    reloaded = load(tmp_path)
    assert reloaded.record == json.loads(json.dumps(run.record)) and reloaded.task.spec == task.spec
    assert evaluate(reloaded.model, task, [200], n=128) == evaluate(model, task, [200], n=128)


@pytest.mark.slow
def test_final_only_training_on_a_deletang_task():
    task = get_task("parity_check")
    assert task.final_only
    model = train(task, _cfg(task, d_hidden=32), TrainConfig(max_steps=1200, train_lengths=(1, 20)), progress=False).model
    assert evaluate(model, task, [20, 60], n=128)[60]["final_accuracy"] >= 0.99


@pytest.mark.slow
def test_transformer_trains_in_distribution():
    task = get_task("parity")
    cfg = _cfg(task, arch="transformer", d_hidden=32, n_heads=4, n_layers=2, n_ctx=64)
    model = train(task, cfg, TrainConfig(max_steps=400, train_lengths=(1, 8), val_lengths=(8,), lr=3e-3, target_accuracy=0.98), progress=False).model
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
    model = train(task, _cfg(task), TrainConfig(max_steps=5, eval_every=5), progress=False).model
    from fsm_probe.models import predict_logits
    from fsm_probe.tasks.datasets import eval_set

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


def test_recipe_fills_unset_fields_per_architecture():
    from fsm_probe.training.recipes import TRAIN_DEFAULTS, recipe

    task = get_task("parity")
    for arch in ("gru", "transformer", "rmt", "scratchpad"):
        tc = TrainConfig().resolved(arch)
        assert tc.lr == TRAIN_DEFAULTS[arch]["lr"] and tc.max_steps == TRAIN_DEFAULTS[arch]["max_steps"]
        cfg = recipe(arch).model_config(task, d_hidden=None)
        assert cfg.d_hidden == recipe(arch).model["d_hidden"]
    assert TrainConfig(lr=0.5, max_steps=7).resolved("rmt").lr == 0.5
    assert TrainConfig(max_steps=8).resolved("gru").warmup_steps == 2  # at most a quarter of a short run
    assert recipe("rmt").model_config(task, segment_length=3).segment_length == 3
    with pytest.raises(ConfigError, match="unknown architecture"):
        recipe("mamba")
    with pytest.raises(ConfigError, match="curriculum"):
        TrainConfig(curriculum=-1).resolved("gru")


def test_curriculum_lengths_grow_to_the_maximum():
    assert training.curriculum_lengths(8, 40) == [8, 16, 24, 36, 40]
    assert training.curriculum_lengths(0, 40) == [40]
    assert training.curriculum_lengths(50, 40) == [40]


def test_budget_spent_says_did_not_learn(tmp_path):
    task = get_task("cyclic:n=5")
    tc = TrainConfig(train_lengths=(1, 12), max_steps=6, eval_every=3, val_size=16, curriculum=0)
    t = train(task, _cfg(task), tc, out_dir=tmp_path, progress=False).log
    assert not t["learned"] and not t["stopped_early"] and t["steps"] == 6
    assert t["stop_reason"].startswith("budget of 6 steps spent, validation")
    assert "at length 12 - did not learn in distribution" in t["stop_reason"]
    assert json.loads((tmp_path / "config.json").read_text())  # still saved


def test_curriculum_stage_moves_on_after_its_share_of_steps(tmp_path):
    task = get_task("cyclic:n=5")
    tc = TrainConfig(train_lengths=(1, 30), max_steps=16, eval_every=1, val_size=16, curriculum=5)
    train(task, _cfg(task), tc, out_dir=tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    # 16 steps, 4 stages: each stage below 30 gets 16 // 8 = 2 steps, validated at its maximum;
    # the step that enters a stage (2, 4, 6) is not validated: that stage has not trained yet
    assert [e["step"] for e in log] == [1, 3, 5, *range(7, 17)]
    assert [e["max_length"] for e in log] == [5, 13, 21] + [30] * 10
    assert list(log[0]["val"]) == ["5"] and list(log[-1]["val"]) == ["30"]


@pytest.mark.slow
def test_curriculum_moves_on_and_reports_the_target(tmp_path):
    task = get_task("parity")
    tc = TrainConfig(train_lengths=(1, 20), max_steps=1500, curriculum=4, eval_every=50, val_size=128)
    run = train(task, _cfg(task, d_hidden=32), tc, out_dir=tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    stages = [e["max_length"] for e in log]
    assert stages[0] == 4 and stages[-1] == 20 and stages == sorted(stages)
    assert run.learned
    assert run.log["stop_reason"] == f"reached target 1 at step {run.log['steps']}"


@pytest.mark.parametrize("task_name, expected", [("parity", (12, 12)), ("parity_check", (1, 12))])
def test_full_length_draws_batches_at_the_longest_length(monkeypatch, task_name, expected):
    """Every position supervised: all batches at the longest length (each prefix is an example);
    final-position tasks keep the sampled lengths (one length would be one training length)."""
    import fsm_probe.training.trainer as training

    seen = []
    real = training.iterate_batches

    def spy(task, batch_size, lengths, **kw):
        seen.append(tuple(lengths))
        return real(task, batch_size, lengths, **kw)

    monkeypatch.setattr(training, "iterate_batches", spy)
    task = get_task(task_name)
    run = training.train(task, ModelConfig("gru", 2, 2, d_hidden=4),
                         TrainConfig(train_lengths=(1, 12), max_steps=2, eval_every=2, val_size=8, full_length=True),
                         progress=False)
    assert seen == [expected]
    assert run.train_config.full_length is (expected[0] == expected[1])  # the record says what ran


def test_mixed_inputs_reach_the_batch_stream_and_the_record(monkeypatch, tmp_path):
    import fsm_probe.training.trainer as training
    from fsm_probe.training.checkpoint import load

    seen = []
    real = training.iterate_batches

    def spy(task, batch_size, lengths, **kw):
        seen.append(kw["mixed"])
        return real(task, batch_size, lengths, **kw)

    monkeypatch.setattr(training, "iterate_batches", spy)
    task = get_task("parity")
    training.train(task, ModelConfig("gru", 2, 2, d_hidden=4),
                   TrainConfig(train_lengths=(1, 12), max_steps=2, eval_every=2, val_size=8, mixed_inputs=0.25),
                   out_dir=tmp_path / "run", progress=False)
    assert seen == [0.25]
    assert load(tmp_path / "run").train_config.mixed_inputs == 0.25
    training.train(task, ModelConfig("gru", 2, 2, d_hidden=4),
                   TrainConfig(train_lengths=(1, 12), max_steps=2, eval_every=2, val_size=8), progress=False)
    assert seen[-1] == 0.0  # the recipe's default: the task's own sampler


def test_recurrent_recipe_follows_the_automaton_size():
    """Small automata keep the measured small recipe; S4 (24 states) and many symbols take the
    sized one; counter tasks ignore their truncated automaton's size."""
    from fsm_probe.training.recipes import recipe
    from fsm_probe.training.recipes_size import gru_recipe

    small = recipe("gru", get_task("tomita3"))
    assert small.model["d_hidden"] == 64 and small.train["lr"] == 1e-2
    s4 = recipe("gru", get_task("symmetric:n=4"))
    sized = gru_recipe(24, 3)
    assert (s4.model["d_hidden"], s4.train["lr"], s4.train["max_steps"]) == (
        sized["d_hidden"], sized["lr"], sized["max_steps"])
    many = recipe("lstm", get_task("cyclic:n=19,n_actions=19"))
    assert many.model["d_hidden"] == 128
    dyck = recipe("gru", get_task("dyck1"))
    assert dyck.model["d_hidden"] == 32 and dyck.train["max_steps"] == 1500
    assert recipe("transformer", get_task("symmetric:n=4")).model["d_hidden"] == 64  # unchanged

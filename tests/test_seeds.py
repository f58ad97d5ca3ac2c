"""Batched seeds (`train_seeds`, `fsm-probe train --seeds`) against single `train()` runs.

Tolerance: the stacked forward sums in another order than torch's GRU kernel, so weights agree
to 1e-4 (measured: at most 3e-6 after 150 steps) and logged validation accuracies to one
validation sequence (measured: equal)."""

import json
from dataclasses import replace

import pytest
import torch
from test_cli import assert_one_line_error, run

from fsm_probe.errors import ConfigError
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, evaluate, load, train, train_seeds
from fsm_probe.training.recipes import recipe

TASK = get_task("parity")
MODEL = recipe("gru", TASK).model_config(TASK, d_hidden=16)
TRAIN = TrainConfig(train_lengths=(1, 10), max_steps=150, eval_every=25, val_size=64, patience=1)
LRS = [1e-2, 3e-4]  # the first learns parity and stops early, the second spends the budget
WEIGHT_ATOL, VAL_SIZE = 1e-4, 64


def _log(directory):
    return [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "runs"
    return out, train_seeds(TASK, MODEL, TRAIN, seeds=3, lrs=LRS, out_dir=out, progress=False)


@pytest.fixture(scope="module")
def singles(tmp_path_factory, batched):
    out = tmp_path_factory.mktemp("singles")
    runs = {}
    for r in batched[1]:
        seed, lr = r.train_config.seed, r.train_config.lr
        runs[r.directory.name] = train(TASK, replace(MODEL, seed=seed), replace(TRAIN, seed=seed, lr=lr),
                                       out_dir=out / r.directory.name, progress=False)
    return runs


@pytest.mark.slow
def test_batched_members_equal_single_runs(batched, singles):
    out, runs = batched
    assert [r.directory.name for r in runs] == [f"seed{s}_lr{lr:g}" for s in range(3) for lr in LRS]
    for r in runs:
        single = singles[r.directory.name]
        a, b = r.model.state_dict(), single.model.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=WEIGHT_ATOL, rtol=0)
        for key in ("steps", "stopped_early", "learned", "stop_reason"):
            assert r.log[key] == single.log[key], (r.directory.name, key)
        mine, theirs = _log(r.directory), _log(single.directory)
        assert [e["step"] for e in mine] == [e["step"] for e in theirs]
        for e, f in zip(mine, theirs, strict=True):
            assert abs(e["val_accuracy"] - f["val_accuracy"]) <= 1 / VAL_SIZE + 1e-9
            assert e["lr"] == pytest.approx(f["lr"], rel=1e-12)
            assert e["loss"] == pytest.approx(f["loss"], rel=1e-4)


@pytest.mark.slow
def test_each_member_stops_on_its_own(batched):
    _, runs = batched
    fast = [r for r in runs if r.train_config.lr == LRS[0]]
    slow = [r for r in runs if r.train_config.lr == LRS[1]]
    assert all(r.log["stopped_early"] and r.log["steps"] < TRAIN.max_steps for r in fast)
    assert all(not r.log["stopped_early"] and r.log["steps"] == TRAIN.max_steps for r in slow)
    for r in runs:
        assert _log(r.directory)[-1]["step"] == r.log["steps"]  # a stopped member's log ends there


@pytest.mark.slow
def test_checkpoints_load_and_evaluate(batched):
    _, runs = batched
    for r in runs:
        loaded = load(r.directory)
        assert (loaded.train_config.seed, loaded.train_config.lr) == (r.train_config.seed, r.train_config.lr)
        assert loaded.model_config.seed == r.train_config.seed
        report = evaluate(loaded.model, TASK, [10], n=TRAIN.val_size, seed=r.train_config.seed + 1)
        assert min(report[10].accuracy, report[10].final_accuracy) == r.log["final_val_accuracy"]


def test_bad_seeds_and_rates_are_config_errors():
    for seeds in (0, [1, 1], [], "3", [-1]):
        with pytest.raises(ConfigError):
            train_seeds(TASK, MODEL, TRAIN, seeds=seeds, progress=False)
    for lrs in ([], [0.0], [1e-2, 1e-2], ["x"]):
        with pytest.raises(ConfigError):
            train_seeds(TASK, MODEL, TRAIN, seeds=1, lrs=lrs, progress=False)


@pytest.mark.slow
def test_cli_seeds_writes_one_checkpoint_per_seed(capsys, tmp_path):
    out = tmp_path / "d"
    code, text, _ = run(capsys, "train", "--task", "parity", "--arch", "gru", "--hidden", "8", "--seeds", "2",
                        "--train-lengths", "1:6", "--max-steps", "20", "--quiet", "--out", out)
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["seed0", "seed1"]
    lines = text.strip().splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == ["seed 0", "seed 1"]
    assert lines[2].startswith("best: seed ")
    for s in (0, 1):
        loaded = load(out / f"seed{s}")
        assert loaded.train_config.seed == s and loaded.log["steps"] <= 20


@pytest.mark.parametrize("args, needle", [(["--seeds", "0"], "--seeds"), (["--lr", "abc"], "--lr"),
                                          (["--lr", "1e-3,0"], "--lr"), (["--seeds", "2", "--lr", "1e-3,1e-3"], "--lr"),
                                          (["--lr", "1e-3,1.0000001e-3"], "6 significant digits")])
def test_cli_bad_seeds_or_lr_is_one_line(capsys, tmp_path, args, needle):
    code, _, err = run(capsys, "train", "--task", "parity", "--quiet", "--out", tmp_path / "d", *args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch, layers", [("rnn", 1), ("lstm", 2), ("gru", 2)])
def test_other_cells_and_depths_equal_single_runs(arch, layers):
    model = recipe(arch, TASK).model_config(TASK, d_hidden=8, n_layers=layers)
    cfg = TrainConfig(train_lengths=(1, 8), max_steps=30, eval_every=10, val_size=32, patience=10**6, final_weight=0.5)
    for r in train_seeds(TASK, model, cfg, seeds=[3, 5], progress=False):
        s = r.train_config.seed
        single = train(TASK, replace(model, seed=s), replace(cfg, seed=s), progress=False)
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(r.model.state_dict()[k], v, atol=WEIGHT_ATOL, rtol=0)
        assert r.log["final_val_accuracy"] == pytest.approx(single.log["final_val_accuracy"], abs=1 / 32 + 1e-9)


@pytest.mark.slow
def test_transformers_fall_back_to_one_train_each(tmp_path):
    model = recipe("transformer", TASK).model_config(TASK, d_hidden=16, n_layers=1, n_heads=2, n_ctx=16)
    cfg = TrainConfig(train_lengths=(1, 6), max_steps=4, eval_every=4, val_size=16)
    runs = train_seeds(TASK, model, cfg, seeds=2, out_dir=tmp_path, progress=False)
    assert [r.directory for r in runs] == [tmp_path / "seed0", tmp_path / "seed1"]
    single = train(TASK, replace(model, seed=1), replace(cfg, seed=1), progress=False)
    for k, v in single.model.state_dict().items():
        assert torch.equal(runs[1].model.state_dict()[k], v), k


def test_a_curriculum_stage_entered_at_the_first_validation_step():
    """Every member enters a new curriculum stage on the first validation step (not validated
    there, as in train()): the batch still trains, and each member equals its single run."""
    model = recipe("gru", TASK).model_config(TASK, d_hidden=4)
    cfg = TrainConfig(train_lengths=(1, 16), max_steps=60, eval_every=10, val_size=16, curriculum=4)
    for r in train_seeds(TASK, model, cfg, seeds=2, progress=True):
        s = r.train_config.seed
        single = train(TASK, replace(model, seed=s), replace(cfg, seed=s), progress=False)
        assert r.log["steps"] == single.log["steps"] and r.log["stop_reason"] == single.log["stop_reason"]

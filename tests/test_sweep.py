"""Sweeps: a tiny grid on the local engine (in process and in a pool) and on a local Ray
cluster gives the rows that training each job alone gives; a rerun skips finished jobs."""

import json
import sys

import pytest

from fsm_probe.errors import ConfigError
from fsm_probe.training import TrainConfig, evaluate, train
from fsm_probe.training.sweep import RESULTS, Job, grid, load_results, sweep

TRAIN = {"train_lengths": [1, 8], "max_steps": 20, "eval_every": 10, "val_size": 32, "warmup_steps": 2}


def tiny_grid() -> list[Job]:
    return grid(["parity"], {"gru8": {"arch": "gru", "d_hidden": 8}}, seeds=[0, 1], lrs=[1e-2],
                train=TRAIN, lengths=[12], n_eval=32)


def essential(row: dict) -> dict:
    """What a job computes, without its timings."""
    r = row["result"]
    return {"key": row["key"], "steps": r["steps"], "learned": r["learned"], "accuracy": r["accuracy"],
            "final_val_accuracy": r["final_val_accuracy"]}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sweep(tiny_grid(), out, progress=False)


def test_local_rows_equal_training_each_job_alone(local):
    out, res = local
    jobs = tiny_grid()
    assert (res.ran, res.skipped) == (2, 0)
    lines = (out / RESULTS).read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [r["key"] for r in rows] == [j.key for j in jobs] == [r["key"] for r in res.rows]
    assert len({j.key for j in jobs}) == 2
    from fsm_probe.models import ModelConfig
    from fsm_probe.tasks import get_task

    task = get_task("parity")
    for job, row in zip(jobs, rows, strict=True):
        assert Job.from_dict(row["job"]) == job
        assert row["cpu_seconds"] > 0 and row["wall_seconds"] > 0
        cfg = ModelConfig("gru", d_vocab=2, d_out=2, d_hidden=8, seed=job.seed)
        run = train(task, cfg, TrainConfig(**{**TRAIN, "seed": job.seed, "lr": 1e-2}), progress=False)
        report = evaluate(run.model, task, [12], n=32)
        assert row["result"]["accuracy"] == {"12": report[12].to_dict()}
        assert row["result"]["steps"] == run.log["steps"] == 20
        assert row["result"]["lr"] == 1e-2
    assert res.cpu_seconds == pytest.approx(sum(r["cpu_seconds"] for r in rows))


def refuse(job):
    raise AssertionError(f"finished job {job.label()} ran again")


def test_rerun_skips_finished_jobs_and_runs_only_new_ones(local, tmp_path):
    out, first = local
    before = (out / RESULTS).read_bytes()
    again = sweep(tiny_grid(), out, fn=refuse, progress=False)
    assert (again.ran, again.skipped) == (0, 2)
    assert (out / RESULTS).read_bytes() == before
    assert [essential(r) for r in again.rows] == [essential(r) for r in first.rows]

    seen = []
    extra = Job("parity", {"arch": "gru", "d_hidden": 8}, TRAIN, seed=2, lr=1e-2, lengths=(12,), n_eval=32, name="gru8")
    work = tmp_path / "more"
    work.mkdir()
    (work / RESULTS).write_bytes(before)
    more = sweep([*tiny_grid(), extra], work, fn=lambda j: seen.append(j) or {"seed": j.seed}, progress=False)
    assert seen == [extra] and (more.ran, more.skipped) == (1, 2)
    assert list(load_results(work / RESULTS)) == [j.key for j in tiny_grid()] + [extra.key]


def test_a_line_cut_short_by_a_crash_is_dropped_and_its_job_reruns(tmp_path):
    jobs = tiny_grid()
    fake = {"seed": -1}
    whole = json.dumps({"key": jobs[0].key, "job": jobs[0].to_dict(), "result": fake, "cpu_seconds": 1.0,
                        "wall_seconds": 1.0, "finished_at": ""})
    cut = json.dumps({"key": jobs[1].key, "job": jobs[1].to_dict()})[:40]
    (tmp_path / RESULTS).write_text(whole + "\n" + cut)
    assert list(load_results(tmp_path / RESULTS)) == [jobs[0].key]
    res = sweep(jobs, tmp_path, fn=lambda j: {"seed": j.seed}, progress=False)
    assert (res.ran, res.skipped) == (1, 1)
    lines = (tmp_path / RESULTS).read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert [json.loads(line)["result"] for line in lines[:2]] == [fake, {"seed": 1}]


def test_pool_engine_gives_the_in_process_rows(local, tmp_path):
    _, res = local
    pooled = sweep(tiny_grid(), tmp_path, workers=2, progress=False)
    assert pooled.ran == 2
    assert [essential(r) for r in pooled.rows] == [essential(r) for r in res.rows]


def test_ray_engine_without_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[sweep\]"'):
        sweep(tiny_grid(), tmp_path, engine="ray", progress=False)
    assert not (tmp_path / RESULTS).exists()


def test_bad_engine_and_jobs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="engine"):
        sweep(tiny_grid(), tmp_path, engine="spark")
    with pytest.raises(ConfigError, match="Job"):
        sweep([{"task": "parity"}], tmp_path)
    with pytest.raises(ConfigError, match="arch"):
        Job("parity", {"d_hidden": 8})
    with pytest.raises(ConfigError, match=r"unknown or reserved ModelConfig field\(s\) \['d_hiden'\]"):
        Job("parity", {"arch": "gru", "d_hiden": 4})
    with pytest.raises(ConfigError, match="seed come from the job"):
        Job("parity", {"arch": "gru", "seed": 3})
    with pytest.raises(ConfigError, match="TrainConfig fields"):
        Job("parity", {"arch": "gru"}, train=[1])


def test_an_in_process_sweep_keeps_the_callers_thread_count(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sweep(tiny_grid()[:1], tmp_path, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_ray_engine_runs_the_grid_on_a_local_cluster(local, tmp_path):
    ray = pytest.importorskip("ray")
    _, res = local
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = sweep(tiny_grid(), tmp_path, engine="ray", progress=False)
        assert ray.is_initialized()  # a cluster it did not start stays up
    finally:
        ray.shutdown()
    assert on_ray.ran == 2
    assert [essential(r) for r in on_ray.rows] == [essential(r) for r in res.rows]


def study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "length_generalization.py"
    spec = importlib.util.spec_from_file_location("length_generalization_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_study_marks_the_runs_that_did_not_learn_and_resumes(tmp_path, capsys):
    lg = study()
    argv = ["--tasks", "parity_check", "--models", "gru,transformer_learned", "--lengths", "41",
            "--steps", "300", "--transformer-steps", "20", "--seeds", "2", "--lrs", "1e-2", "--n", "16",
            "--out", str(tmp_path)]
    assert lg.main(argv) == 0
    rows = lg.read_csv(tmp_path / "length_generalization.csv")
    assert len(rows) == 4  # 2 models x 2 seeds x 1 length
    md = (tmp_path / "length_generalization.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| parity_check |"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:3]
    for model, cell in zip(["gru", "transformer_learned"], cells, strict=True):
        runs = [r for r in rows if r["model"] == model]
        best = max(runs, key=lambda r: (r["final_accuracy"], r["in_distribution_accuracy"]))
        assert cell.startswith(f"{100 * best['final_accuracy']:.1f}")
        assert cell.endswith("(did not learn)") == (best["in_distribution_accuracy"] < 0.99)
    jsonl = [json.loads(x) for x in (tmp_path / "length_generalization.jsonl").read_text().splitlines()]
    meta = json.loads((tmp_path / "length_generalization.json").read_text())
    assert meta["cpu_seconds"] == pytest.approx(sum(r["cpu_seconds"] for r in jsonl))
    assert (meta["ran"], meta["skipped"]) == (4, 0)
    assert lg.main(argv) == 0
    meta = json.loads((tmp_path / "length_generalization.json").read_text())
    assert (meta["ran"], meta["skipped"]) == (0, 4)


def test_study_refuses_to_overwrite_the_repository_unless_asked(tmp_path, monkeypatch, capsys):
    lg = study()
    monkeypatch.setattr(lg, "REPO", tmp_path)
    monkeypatch.setattr(lg, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    assert lg.refuse_overwrite(tmp_path / "results", "length_generalization_quick") is None  # nothing there yet
    (tmp_path / "results" / "length_generalization_quick.md").write_text("committed")
    assert "--overwrite" in lg.refuse_overwrite(tmp_path / "results", "length_generalization_quick")
    assert lg.refuse_overwrite(tmp_path / "results", "other_stem") is None
    assert lg.refuse_overwrite(outside, "length_generalization_quick") is None
    assert lg.main(["--quick"]) == 2
    assert "length_generalization_quick.md" in capsys.readouterr().err
    assert (tmp_path / "results" / "length_generalization_quick.md").read_text() == "committed"

import json

import pytest

from fsm_probe.cli import main

TASK_FILE = {
    "name": "mod3",
    "alphabet": ["a", "b"],
    "states": ["s0", "s1", "s2"],
    "start": "s0",
    "transitions": {"s0": {"a": "s1", "b": "s0"}, "s1": {"a": "s2", "b": "s1"}, "s2": {"a": "s0", "b": "s2"}},
    "outputs": {"s0": "0", "s1": "1", "s2": "2"},
}


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], err


def test_tasks_json_lists_the_zoo(capsys):
    code, out, _ = run(capsys, "tasks", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    expected = {"tomita1": 2, "tomita2": 3, "tomita3": 5, "tomita4": 4, "tomita5": 4, "tomita6": 3, "tomita7": 5, "parity": 2}
    for name, n in expected.items():
        assert rows[name]["minimal_states"] == n
    for name in ("cyclic", "dihedral", "quaternion", "symmetric", "alternating", "flipflop", "gridworld",
                 "abab", "adder", "even_pairs", "parity_check", "cycle_navigation", "modular_arithmetic"):
        assert name in rows


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    task_file = out.parent / "mod3.json"
    task_file.write_text(json.dumps(TASK_FILE))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task-file", str(task_file), "--arch", "gru", "--hidden", "16",
              "--train-lengths", "1:20", "--max-steps", "1500", "--quiet", "--out", str(out)])
    assert exc.value.code == 0
    return out


@pytest.mark.slow
def test_user_automaton_trains_and_evaluates(capsys, trained_run):
    code, out, _ = run(capsys, "eval", trained_run, "--lengths", "20,200", "--json")
    assert code == 0
    report = json.loads(out)["lengths"]
    assert set(report) == {"20", "200"}
    assert report["200"]["accuracy"] >= 0.999 and report["200"]["final_accuracy"] >= 0.99
    code, out, _ = run(capsys, "eval", trained_run, "--lengths", "200", "--json")
    result = json.loads(out)  # the longest training length is always measured, with the verdict
    assert set(result["lengths"]) == {"20", "200"} and result["verdict"]["status"] == "generalises"
    assert result["verdict"]["in_distribution_accuracy"] == result["lengths"]["20"]["final_accuracy"]
    code, out, _ = run(capsys, "predict", trained_run, "aabab", "--json")
    assert code == 0
    row = json.loads(out)[0]
    assert row["true"] == ["1", "2", "2", "0", "0"] and row["predicted"] == row["true"]


@pytest.mark.slow
def test_out_of_alphabet_input_is_one_line(capsys, trained_run):
    code, _, err = run(capsys, "predict", trained_run, "abz")
    assert_one_line_error(code, err, "'z'")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--task", "nosuchtask", "--out", "{tmp}/r"], "nosuchtask"),
        (["train", "--task", "cyclic:n=1", "--out", "{tmp}/r"], "n=1 outside [2, 1000]"),
        (["train", "--task", "cyclic:m=3", "--out", "{tmp}/r"], "unknown parameter 'm'"),
        (["train", "--task", "parity", "--hidden", "0", "--out", "{tmp}/r"], "--hidden"),
        (["train", "--task", "parity", "--train-lengths", "9:2", "--out", "{tmp}/r"], "train lengths"),
        (["train", "--task", "parity", "--train-lengths", "x", "--out", "{tmp}/r"], "MIN:MAX"),
        (["train", "--task", "parity", "--lr", "-1", "--out", "{tmp}/r"], "learning rate"),
        (["train", "--task", "parity", "--arch", "mamba", "--out", "{tmp}/r"], "mamba"),
        (["train", "--task", "parity", "--arch", "transformer", "--hidden", "30", "--heads", "4", "--out", "{tmp}/r"], "divisible"),
        (["train", "--task", "parity", "--arch", "transformer", "--n-ctx", "16", "--out", "{tmp}/r"], "n_ctx"),
        (["train", "--task", "parity", "--task-file", "x.json", "--out", "{tmp}/r"], "exactly one"),
        (["train", "--task", "parity", "--max-steps", "abc", "--out", "{tmp}/r"], "max-steps"),
        (["eval", "{tmp}/missing"], "missing"),
        (["eval", "{tmp}", "--lengths", "a,b"], "lengths"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(capsys, tmp_path, args, needle):
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "JSON"),
        (json.dumps({**TASK_FILE, "alphabet": []}), "alphabet"),
        (json.dumps({**TASK_FILE, "start": "s9"}), "s9"),
        (json.dumps({**TASK_FILE, "transitions": {**TASK_FILE["transitions"], "s2": {"a": "s0"}}}), "s2"),
        (json.dumps({**TASK_FILE, "transitions": {**TASK_FILE["transitions"], "s2": {"a": "s0", "b": "s7"}}}), "s7"),
        (json.dumps({**TASK_FILE, "transitions": {**TASK_FILE["transitions"], "s2": {"a": "s0", "b": "s2", "c": "s1"}}}), "c"),
        (json.dumps({k: v for k, v in TASK_FILE.items() if k != "states"}), "states"),
    ],
)
def test_malformed_task_file_is_exit_2_and_one_line(capsys, tmp_path, content, needle):
    path = tmp_path / "task.json"
    path.write_text(content)
    code, _, err = run(capsys, "train", "--task-file", path, "--out", tmp_path / "r", "--max-steps", "1")
    assert_one_line_error(code, err, needle)


def test_truncated_checkpoint_is_exit_2(capsys, tmp_path):
    from fsm_probe.models import ModelConfig, build_model
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import save

    task = get_task("parity")
    save(build_model(ModelConfig("gru", 2, 2, d_hidden=8)), tmp_path, task=task)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:100])
    code, _, err = run(capsys, "eval", tmp_path, "--lengths", "5")
    assert_one_line_error(code, err, "model.safetensors")


def test_sequence_longer_than_the_context_is_exit_2(capsys, tmp_path):
    from fsm_probe.models import ModelConfig, build_model
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import save

    save(build_model(ModelConfig("transformer", 2, 2, d_hidden=8, n_heads=2, n_ctx=16)), tmp_path, task=get_task("parity"))
    code, _, err = run(capsys, "eval", tmp_path, "--lengths", "10,40")
    assert_one_line_error(code, err, "n_ctx=16")
    code, _, err = run(capsys, "predict", tmp_path, "0" * 17)
    assert_one_line_error(code, err, "n_ctx=16")


def _saved(run_dir, arch, **kw):
    from fsm_probe.models import ModelConfig, build_model
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import save

    save(build_model(ModelConfig(arch, 2, 2, d_hidden=16, seed=0, **kw)), run_dir, task=get_task("parity"))
    return run_dir


def test_patch_command_matches_the_library(capsys, tmp_path):
    import numpy as np

    from fsm_probe.circuits.patching import (
        activation_patching,
        attribution_patching,
        corruption_pairs,
        logit_diff,
    )
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import load

    run_dir = _saved(tmp_path / "t", "transformer", n_heads=2, n_ctx=32)
    out = tmp_path / "patch.json"
    code, stdout, err = run(capsys, "patch", run_dir, "--site", "resid_pre,head_out", "--n", 4, "--length", 8,
                            "--top", 3, "--out", out)
    assert code == 0, err
    assert "top 3 cells" in stdout and "position 4 replaced" in stdout
    payload = json.loads(out.read_text())
    clean, corrupted, pos = corruption_pairs(get_task("parity"), 8, 4, 0)
    assert payload["position"] == pos == 4 and payload["n_pairs"] == 4 and set(payload["results"]) == {"resid_pre", "head_out"}
    loaded = load(run_dir)
    model, a = loaded.model, loaded.task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    ref = activation_patching(model, clean, corrupted, metric, site="head_out")
    got = payload["results"]["head_out"]
    assert got["axes"] == ["layer", "pos", "head"] and np.allclose(got["values"], ref.values.numpy(), atol=1e-6)
    code, stdout, _ = run(capsys, "patch", run_dir, "--method", "attribution", "--steps", 2, "--direction", "noise",
                          "--n", 4, "--length", 8, "--json")
    data = json.loads(stdout)
    assert code == 0 and data["method"] == "attribution" and data["steps"] == 2
    ref = attribution_patching(model, clean, corrupted, metric, direction="noise", steps=2)
    assert set(data["results"]) == set(ref) == {"resid_pre", "attn_out", "mlp_out", "head_out"}
    assert np.allclose(data["results"]["mlp_out"]["values"], ref["mlp_out"].values.numpy(), atol=1e-5)


def test_trace_command_matches_the_library(capsys, tmp_path):
    import numpy as np

    from fsm_probe.circuits.patching import corruption_pairs
    from fsm_probe.circuits.tracing import causal_tracing
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import load

    run_dir = _saved(tmp_path, "gru", n_layers=2)
    code, stdout, err = run(capsys, "trace", run_dir, "--n", 4, "--length", 8, "--samples", 2, "--top", 4)
    assert code == 0 and "top 4 restored resid states" in stdout, err
    code, stdout, _ = run(capsys, "trace", run_dir, "--n", 4, "--length", 8, "--samples", 2, "--json")
    data = json.loads(stdout)
    clean, _, pos = corruption_pairs(get_task("parity"), 8, 4, 0)
    ref = causal_tracing(load(run_dir).model, clean, corrupt_positions=pos, noise=3.0, n_samples=2, seed=0)
    assert data["corrupt_positions"] == [pos] and np.array(data["scores"]).shape == (2, 8)
    assert np.allclose(data["scores"], ref.scores.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["patch", "{run}", "--site", "hidden"], "'hidden'"),
        (["patch", "{run}", "--method", "magic"], "--method"),
        (["patch", "{run}", "--position", "99", "--length", "8"], "position 99"),
        (["patch", "{run}", "--n", "0"], "--n"),
        (["patch", "{run}", "--out", "{tmp}"], "is a directory"),
        (["patch", "{run}", "--out", "{run}/config.json/p.json"], "config.json"),
        (["patch", "{run}", "--site", ","], "--site"),
        (["patch", "{run}", "--site", "resid_pre,bogus"], "bogus"),
        (["patch", "{run}", "--seed", "-1"], "seed"),
        (["trace", "{run}", "--length", "40"], "n_ctx=32"),
        (["trace", "{run}", "--noise", "loud"], "--noise"),
        (["trace", "{run}", "--kind", "xyz"], "xyz"),
        (["trace", "{tmp}/missing"], "missing"),
    ],
)
def test_patch_and_trace_bad_input_is_exit_2(capsys, tmp_path, args, needle):
    run_dir = _saved(tmp_path / "run", "transformer", n_heads=2, n_ctx=32)
    code, _, err = run(capsys, *[a.replace("{run}", str(run_dir)).replace("{tmp}", str(tmp_path)) for a in args])
    assert_one_line_error(code, err, needle)


def test_iia_command_matches_the_library(capsys, tmp_path):
    import numpy as np

    from fsm_probe.circuits.causal_abstraction import interchange_intervention_accuracy
    from fsm_probe.training.checkpoint import load

    run_dir = _saved(tmp_path / "g", "gru", n_layers=2)
    code, stdout, err = run(capsys, "iia", run_dir, "--n", 16, "--length", 8, "--json")
    assert code == 0, err
    data = json.loads(stdout)
    loaded = load(run_dir)
    ref = interchange_intervention_accuracy(loaded.model, loaded.task, 8, n=16)
    assert data["sites"] == ref.sites == ["layers.0", "layers.1", "layers"]
    assert np.allclose(np.array(data["iia"], dtype=float), ref.iia, equal_nan=True)
    assert data["best_site"] == ref.best()[0] and "das" not in data
    code, stdout, err = run(capsys, "iia", run_dir, "--n", 16, "--length", 8, "--das", "1", "--site", "layers.1")
    assert code == 0, err
    assert "DAS at layers.1 (dim 16): k=1:" in stdout
    code, _, err = run(capsys, "iia", run_dir, "--das", "one")
    assert_one_line_error(code, err, "--das must be")
    code, _, err = run(capsys, "iia", run_dir, "--site", "layers.9")
    assert_one_line_error(code, err, "unknown IIA site")

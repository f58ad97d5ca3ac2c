"""Bad input: every case of issue 11 exits 2 with one line (or raises a project error from the
Python API), is refused before it allocates, and never loads a model other than the one its
config describes. Property tests feed malformed task files and configs."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from fsm_probe.cli import main
from fsm_probe.errors import (
    AutomatonError,
    CheckpointError,
    ConfigError,
    FsmProbeError,
    InputError,
    ResourceError,
)
from fsm_probe.models import ModelConfig, build_model, predict_logits
from fsm_probe.models.config import estimate_bytes
from fsm_probe.tasks import get_task, task_from_file
from fsm_probe.training import TrainConfig
from fsm_probe.training.checkpoint import check_training_record, load, save

TASK = get_task("parity")
TRAINING = {**TrainConfig(train_lengths=(1, 6)).to_dict(), "lr": 0.01, "steps": 1, "seconds": 0.1,
            "final_val_accuracy": 0.5, "stopped_early": False}

GOOD_TASK = {
    "name": "mod2",
    "alphabet": ["a", "b"],
    "states": ["s0", "s1"],
    "start": "s0",
    "transitions": {"s0": {"a": "s1", "b": "s0"}, "s1": {"a": "s0", "b": "s1"}},
    "outputs": {"s0": "0", "s1": "1"},
}


def _save(directory, arch="gru", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, d_vocab=2, d_out=2, d_hidden=8, **kw)
    save(build_model(cfg), directory, task=TASK, training=dict(TRAINING))
    return directory


@pytest.fixture(scope="module")
def gru(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("gru") / "run")


@pytest.fixture(scope="module")
def tf(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tf") / "run", arch="transformer", n_heads=2, n_ctx=16)


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    _, err = capsys.readouterr()
    return exc.value.code, err


def one_line(capsys, needle, *args):
    code, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    return lines[0]


def _edit(directory, tmp_path, change, name="edited"):
    """A copy of checkpoint `directory` whose config.json went through `change(config)`."""
    import shutil

    out = tmp_path / name
    shutil.copytree(directory, out)
    cfg = json.loads((out / "config.json").read_text())
    change(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _reweigh(directory, convert):
    """Rewrite the weights through `convert(tensor)` and regenerate the hash."""
    path = directory / "model.safetensors"
    save_file({k: convert(v) for k, v in load_file(str(path)).items()}, str(path))
    cfg = json.loads((directory / "config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "config.json").write_text(json.dumps(cfg))


# ----- config and weights that disagree -----


def test_edited_label_count_is_refused(gru, tmp_path, capsys):
    def five_labels(cfg):
        cfg["model"]["d_out"] = 5

    one_line(capsys, "does not fit its task", "eval", _edit(gru, tmp_path, five_labels), "--lengths", "3")


def test_edited_heads_are_refused(tf, tmp_path):
    def four_heads(cfg):
        cfg["model"]["n_heads"] = 4

    with pytest.raises(CheckpointError, match=r"tl_config\.(d_head|n_heads) = \d disagrees"):
        load(_edit(tf, tmp_path, four_heads))


def test_edited_layers_name_the_tensor(gru, tmp_path):
    def two_layers(cfg):
        cfg["model"]["n_layers"] = 2

    with pytest.raises(CheckpointError, match="lacks tensor 'layers.1"):
        load(_edit(gru, tmp_path, two_layers))

    def wider(cfg):
        cfg["model"]["d_hidden"] = 16

    with pytest.raises(CheckpointError, match=r"tensor 'embed.weight' has shape \[2, 8\], the architecture needs \[2, 16\]"):
        load(_edit(gru, tmp_path, wider, "wider"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_weights_of_another_dtype_are_refused(gru, tf, tmp_path, dtype, capsys):
    for src in (gru, tf):
        out = _edit(src, tmp_path, lambda cfg: None, f"{src.parent.name}-{dtype}")
        _reweigh(out, lambda v: v.to(dtype))
        expected = {torch.float16: "F16", torch.int64: "I64"}[dtype]
        one_line(capsys, f"has dtype {expected}, expected F32", "eval", out, "--lengths", "3")


def test_nan_weights_are_refused(gru, tmp_path):
    out = _edit(gru, tmp_path, lambda cfg: None)
    _reweigh(out, lambda v: torch.full_like(v, float("nan")))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load(out)


BAD_RECORDS = [
    ("a string", lambda cfg: cfg.update(training="x"), "must be an object"),
    ("null", lambda cfg: cfg.update(training=None), "must be an object"),
    ("lengths as text", lambda cfg: cfg["training"].update(train_lengths="ab"), "train_lengths must be [min, max]"),
    ("negative seed", lambda cfg: cfg["training"].update(seed=-3), "seed must be an integer"),
    ("NaN lr", lambda cfg: cfg["training"].update(lr=float("nan")), "lr must be finite"),
    ("mixed share above 1", lambda cfg: cfg["training"].update(mixed_inputs=1.5), "mixed_inputs must be <= 1"),
]


@pytest.mark.parametrize("what,change,needle", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_damaged_training_record_is_one_line_everywhere(gru, tmp_path, capsys, what, change, needle):
    out = _edit(gru, tmp_path, change)
    for command in (["report", out, "--quick"], ["patch", out], ["trace", out], ["predict", out, "ab"],
                    ["extract", out, "--out", tmp_path / "x"], ["eval", out, "--lengths", "3"]):
        one_line(capsys, needle, *command)
    assert not (tmp_path / "x").exists()


def test_huge_context_in_config_is_refused_before_building(tf, tmp_path, monkeypatch):
    def huge(cfg):
        cfg["model"]["n_ctx"] = 100000
        cfg.pop("tl_config")

    monkeypatch.setenv("FSM_PROBE_MEMORY_LIMIT", str(4 << 30))
    with pytest.raises(ResourceError, match=r"needs about [\d.]+ GB of memory, more than the 4.3 GB available.*lower n_ctx"):
        load(_edit(tf, tmp_path, huge))


# ----- sizes that cannot fit -----


@pytest.mark.parametrize("args,needle", [
    (["--hidden", "100000"], "lower --batch-size, --train-lengths or --hidden"),
    (["--arch", "transformer", "--n-ctx", "1000000000"], "n_ctx=1000000000"),
    (["--arch", "transformer", "--n-ctx", "100000"], "n_ctx=100000"),
    (["--batch-size", "2000000"], "on 2000000 sequences"),
])
def test_train_sizes_are_refused_with_the_estimate(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.setenv("FSM_PROBE_MEMORY_LIMIT", str(8 << 30))
    line = one_line(capsys, needle, "train", "--task", "parity", "--max-steps", "2", "--quiet",
                    "--out", tmp_path / "run", *args)
    assert "needs about" in line and "of memory" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_mixed_inputs_outside_a_share_is_one_line(tmp_path, capsys, value):
    one_line(capsys, "mixed_inputs", "train", "--task", "parity", "--max-steps", "2", "--quiet",
             "--out", tmp_path / "run", "--mixed-inputs", value)
    assert not (tmp_path / "run").exists()


def test_estimate_grows_with_context_quadratically():
    small = ModelConfig(arch="transformer", d_vocab=2, d_out=2, n_ctx=1000)
    big = ModelConfig(arch="transformer", d_vocab=2, d_out=2, n_ctx=100000)
    assert estimate_bytes(big) > 15e9 and estimate_bytes(small) < 50e6


@pytest.mark.parametrize("command", ["patch", "trace"])
def test_patch_lengths_that_would_run_for_hours(gru, capsys, command):
    one_line(capsys, "lower --length or --n", command, gru, "--length", "100000")


def test_eval_lengths_that_cannot_fit(gru, capsys, monkeypatch):
    monkeypatch.setenv("FSM_PROBE_MEMORY_LIMIT", str(8 << 30))
    one_line(capsys, "lower --n or --lengths", "eval", gru, "--lengths", "100000000")


# ----- odd values on the command line -----


@pytest.mark.parametrize("command", ["train", "extract", "report", "eval", "patch", "trace"])
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_bad_seeds_are_one_line(gru, tmp_path, capsys, command, seed):
    args = {"train": ["train", "--task", "parity", "--out", tmp_path / "r"],
            "extract": ["extract", gru, "--out", tmp_path / "x"]}.get(command, [command, gru])
    one_line(capsys, "--seed must be an integer in [0, 2**63 - 1]", *args, "--seed", seed)


def test_negative_noise_and_empty_word(gru, tf, capsys):
    one_line(capsys, "--noise must be a non-negative finite number", "trace", gru, "--noise", "-1")
    one_line(capsys, "--noise must be a non-negative finite number", "trace", gru, "--noise", "nan")
    one_line(capsys, "is empty", "predict", tf, "")


def test_report_out_empty_is_refused(gru, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line(capsys, "is a directory", "report", gru, "--out", "")


def test_long_task_name_is_printed_literally(tmp_path, capsys):
    # Rich markup in a user string must come out as typed, without highlighting (a 50 MB name
    # took minutes in rich's highlighter, 20 kB 15 s before the literal Console).
    name = "[bold]x" * 150000  # 1 MB
    (tmp_path / "t.json").write_text(json.dumps({**GOOD_TASK, "name": name}))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task-file", str(tmp_path / "t.json"), "--arch", "rnn", "--hidden", "2", "--max-steps", "1",
              "--train-lengths", "1:2", "--batch-size", "2", "--quiet", "--out", str(tmp_path / "r")])
    out, _ = capsys.readouterr()
    assert exc.value.code == 0
    assert f"file:{name}" in "".join(out.split())
    assert load(tmp_path / "r").task.automaton.name == name


# ----- the Python API raises project errors -----


@pytest.mark.parametrize("kw", [
    {"train_lengths": (1,)}, {"train_lengths": "1:4"}, {"train_lengths": (1.5, 3)}, {"grad_clip": math.nan},
    {"warmup_steps": math.nan}, {"weight_decay": math.nan}, {"lr": math.inf}, {"seed": -1}, {"seed": 2**70},
    {"batch_size": True}, {"val_lengths": "12"}, {"val_lengths": ()}, {"final_only": "yes"}, {"target_accuracy": math.nan},
])
def test_train_config_raises_config_error(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


@pytest.mark.parametrize("kw", [{"seed": "x"}, {"seed": 2**70}, {"seed": -1}, {"arch": 3}, {"d_mlp": True},
                                {"positional": None}, {"normalization": 3}])
def test_model_config_raises_config_error(kw):
    with pytest.raises(ConfigError):
        ModelConfig(**{"arch": "gru", "d_vocab": 2, "d_out": 2, **kw})


def test_encode_and_predict_raise_input_errors(tf):
    a = TASK.automaton
    for bad in (123, None, b"01", np.zeros((2, 2), dtype=str)):
        with pytest.raises(InputError):
            a.encode(bad)
    with pytest.raises(InputError, match="pos >= 1"):
        predict_logits(load(tf).model, np.zeros((1, 0), dtype=np.int64))


@pytest.mark.parametrize("text,needle", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"name": ' + "9" * 5000 + "}", "Exceeds the limit"),
    (json.dumps(GOOD_TASK)[:-1] + ', "start": "s1"}', "duplicate key 'start'"),
    (json.dumps({**GOOD_TASK, "alphabet": ["a b", "c"],
                 "transitions": {"s0": {"a b": "s1", "c": "s0"}, "s1": {"a b": "s0", "c": "s1"}}}), "contains whitespace"),
])
def test_task_file_oddities_are_automaton_errors(tmp_path, text, needle):
    (tmp_path / "t.json").write_text(text)
    with pytest.raises(AutomatonError, match=needle):
        task_from_file(tmp_path / "t.json")


# ----- property tests -----

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = sorted(GOOD_TASK) + ["input_distribution", "labels"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(
    JSON,
    st.builds(lambda k, v: {**GOOD_TASK, k: v}, st.sampled_from(KEYS), JSON),
    st.builds(lambda k, v: {**GOOD_TASK, "transitions": {**GOOD_TASK["transitions"], k: v}},
              st.sampled_from(["s0", "s1", "s9"]), JSON),
))
def test_any_task_file_is_a_task_or_a_project_error(tmp_path, doc):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    try:
        task = task_from_file(path)
    except FsmProbeError:
        return
    assert task.automaton.n_symbols >= 1


FIELDS = sorted(ModelConfig.__dataclass_fields__)


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_model_config_field_is_valid_or_a_config_error(field, value):
    try:
        cfg = ModelConfig.from_dict({"arch": "gru", "d_vocab": 2, "d_out": 2, field: value})
    except ConfigError:
        return
    assert cfg.d_hidden >= 1 and isinstance(cfg.seed, int)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(TRAINING)), value=JSON | st.floats(-1, 11) | st.integers(-2, 12))
def test_any_training_record_field_is_valid_or_a_config_error(field, value):
    record = {**TRAINING, field: value}
    try:
        check_training_record(record)
    except ConfigError:
        return
    TrainConfig.from_dict(record)  # what readers rebuild from a record that passed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["model", "task", "training", "format", "weights_sha256", "tl_config"]), value=JSON)
def test_any_edited_config_loads_or_is_a_project_error(gru, tmp_path_factory, key, value):
    out = _edit(gru, tmp_path_factory.mktemp("p"), lambda cfg: cfg.update({key: value}))
    try:
        model = load(out)
    except FsmProbeError:
        return
    assert model.model_config.arch == "gru"

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fsm_probe.training.checkpoint as ckpt
from fsm_probe.errors import CheckpointError, InputError, OutputError
from fsm_probe.models import ModelConfig, build_model, model_config, predict_logits
from fsm_probe.tasks import get_task
from fsm_probe.training.checkpoint import load, save


def _model(arch: str, **kw):
    task = get_task("cyclic:n=3")
    a = task.automaton
    cfg = ModelConfig(arch, a.n_symbols, a.n_labels, d_hidden=16, n_heads=2, n_ctx=64, seed=3, **kw)
    return task, build_model(cfg)


TOKENS = np.random.default_rng(0).integers(0, 2, size=(4, 12))


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "second_order", "transformer"])
def test_round_trip_gives_equal_logits(tmp_path, arch):
    task, model = _model(arch)
    with torch.no_grad():  # weights no fresh build of the same seed has: the load must restore them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save(model, tmp_path / "run", task=task, training={"note": "x"})
    loaded = load(tmp_path / "run")
    assert loaded.model_config == model_config(model)
    with pytest.raises(InputError, match="pass its .model"):
        predict_logits(loaded, TOKENS)
    assert loaded.task.spec == task.spec
    assert loaded.log == {"note": "x"} and loaded.train_config is None
    assert not any(name.startswith("fsm_") for name in vars(loaded.model))  # nothing rides on the model
    torch.testing.assert_close(predict_logits(loaded.model, TOKENS), predict_logits(model, TOKENS), rtol=0, atol=0)


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
def test_transformer_checkpoint_loads_in_plain_transformer_lens(tmp_path, positional):
    import transformer_lens.model_bridge.sources.native  # noqa: F401
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    task, model = _model("transformer", positional=positional, n_layers=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p)) if p.requires_grad else None
    save(model, tmp_path, task=task)
    cfg = json.loads((tmp_path / "config.json").read_text())
    plain = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg["tl_config"]))
    plain.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    plain.eval()
    tokens = torch.as_tensor(TOKENS)
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens), predict_logits(model, TOKENS), rtol=0, atol=1e-6)


def test_nope_positions_stay_zero_and_frozen():
    _, model = _model("transformer", positional="none")
    pos = model.original_model.pos.weight
    assert not pos.requires_grad and torch.count_nonzero(pos) == 0
    # Without positions, a constant sequence gives the same logits at every position.
    const = np.zeros((1, 10), dtype=np.int64)
    out = predict_logits(model, const)[0]
    torch.testing.assert_close(out, out[:1].expand_as(out), rtol=0, atol=1e-5)


def test_missing_truncated_and_mismatched_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load(tmp_path / "empty")

    task, model = _model("gru")
    run = save(model, tmp_path / "run", task=task)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match"):
        load(run)

    other_task, other = _model("lstm")
    save(other, tmp_path / "other", task=other_task)
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    cfg = json.loads((run / "config.json").read_text())
    cfg["weights_sha256"] = json.loads((tmp_path / "other" / "config.json").read_text())["weights_sha256"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        load(run)

    (run / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(run)


@pytest.mark.parametrize("model_field", [["gru"], "gru", {"arch": "gru"}, {"d_vocab": 2, "d_out": 2}])
def test_malformed_model_config_is_a_checkpoint_error(tmp_path, model_field):
    task, model = _model("gru")
    run = save(model, tmp_path / "run", task=task)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"] = model_field
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture"):
        load(run)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    task, model = _model("gru")
    save(model, tmp_path, task=task)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    _, other = _model("gru", n_layers=2)
    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save(other, tmp_path, task=task)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    torch.testing.assert_close(predict_logits(load(tmp_path).model, TOKENS), predict_logits(model, TOKENS))


def test_failed_config_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    task, model = _model("gru")
    save(model, tmp_path, task=task)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    _, other = _model("gru", n_layers=2)
    monkeypatch.setattr(type(tmp_path), "write_text", boom)
    with pytest.raises(OutputError, match="disk full; the previous checkpoint is intact"):
        save(other, tmp_path, task=task)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    load(tmp_path)


def test_weights_from_another_save_are_detected(tmp_path):
    task, model = _model("gru")
    save(model, tmp_path / "a", task=task)
    _, other = _model("rnn")
    save(other, tmp_path / "b", task=task)
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load(tmp_path / "a")


def test_save_needs_a_task(tmp_path):
    _, model = _model("gru")
    with pytest.raises(CheckpointError, match="task"):
        save(model, tmp_path)


def test_a_training_record_is_stored_and_loaded_verbatim(tmp_path):
    """A record is written as given (no TrainConfig defaults filled in) and `load` gives it back."""
    task, model = _model("gru")
    record = {"train_lengths": [1, 8], "steps": 5, "learned": True}
    save(model, tmp_path / "run", task=task, training=record)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"] == record
    loaded = load(tmp_path / "run")
    assert loaded.record == record and loaded.trained_length == 8 and loaded.learned
    assert loaded.train_config.train_lengths == (1, 8)
    save(loaded, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["training"] == record

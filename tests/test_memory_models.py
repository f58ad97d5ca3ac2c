"""Memory-augmented Transformers: RMT and scratchpad (fsm_probe/models/rmt.py, scratchpad.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_notebooks import run_notebook

from fsm_probe.cli import main
from fsm_probe.errors import ConfigError, InputError
from fsm_probe.models import (
    HookedRMT,
    HookedScratchpad,
    ModelConfig,
    build_model,
    model_config,
    predict_logits,
)
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import IGNORE_INDEX, eval_set
from fsm_probe.training import TrainConfig, train
from fsm_probe.training.checkpoint import load, save
from fsm_probe.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def rmt(**kw):
    base = dict(arch="rmt", d_vocab=2, d_out=2, n_layers=1, d_hidden=16, n_heads=2,
                segment_length=4, n_memory=2)
    base.update(kw)
    return build_model(ModelConfig(**base))


def scratch(**kw):
    base = dict(arch="scratchpad", d_vocab=3, d_out=5, n_layers=2, d_hidden=16, n_heads=2,
                positional="none")
    base.update(kw)
    return build_model(ModelConfig(**base))


@pytest.mark.parametrize(
    "fields",
    [
        {"arch": "rmt", "segment_length": 0},
        {"arch": "rmt", "n_memory": -1},
        {"arch": "rmt", "bptt_segments": -2},
        {"arch": "rmt", "d_hidden": 10, "n_heads": 4},
        {"arch": "scratchpad", "attention_dir": "bidirectional"},
        {"arch": "scratchpad", "positional": "sinusoid"},
    ],
)
def test_bad_memory_configs_raise_config_error(fields):
    with pytest.raises(ConfigError):
        ModelConfig(d_vocab=2, d_out=2, **fields)


def test_build_model_dispatches_memory_archs():
    assert isinstance(rmt(), HookedRMT)
    assert isinstance(scratch(), HookedScratchpad)
    assert ModelConfig.from_dict(ModelConfig("rmt", 2, 2, segment_length=3).to_dict()).segment_length == 3


# ---------------------------------------------------------------- RMT


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
@pytest.mark.parametrize("attention_dir", ["causal", "bidirectional"])
def test_rmt_shapes_and_any_length(positional, attention_dir):
    m = rmt(positional=positional, attention_dir=attention_dir, n_ctx=1000).eval()
    tokens = torch.randint(0, 2, (3, 37))
    assert m(tokens).shape == (3, 37, 2)
    # positions restart per segment: far longer than segment + memory runs
    assert m(torch.randint(0, 2, (2, 600))).shape == (2, 600, 2)
    # segment-wise processing: logits of a prefix that ends on a segment boundary are unchanged
    full = m(tokens)
    assert torch.allclose(m(tokens[:, :12]), full[:, :12], atol=1e-5)


def test_rmt_causal_logits_depend_only_on_the_prefix():
    m = rmt().eval()
    tokens = torch.randint(0, 2, (4, 23))
    full = m(tokens)
    for t in (1, 5, 9, 22):
        assert torch.allclose(m(tokens[:, :t]), full[:, :t], atol=1e-5)


def test_rmt_run_with_cache_stacks_segments_and_memory_hooks():
    m = rmt(n_layers=2).eval()
    tokens = torch.randint(0, 2, (3, 10))  # 3 segments, last one partial
    logits, cache = m.run_with_cache(tokens)
    assert torch.allclose(logits, m(tokens))
    assert cache["hook_memory"].shape == (3, 3, 2, 16)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 3, 2, 8, 8)
    assert cache["hook_embed"].shape == (3, 3, 4, 16)
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_out"])
    _, only = m.run_with_cache(tokens, names_filter=["hook_memory"])
    assert set(only.keys()) == {"hook_memory"}
    assert m.memory_states(tokens).shape == (3, 3, 2, 16)
    assert not m.hooks_active()
    assert m.initial_state(5)["hook_memory"].shape == (5, 2, 16)


def test_rmt_memory_hook_fires_per_segment_and_feeds_the_next():
    m = rmt().eval()
    tokens = torch.randint(0, 2, (2, 12))
    seen = []
    clean = m(tokens)

    def zero_first(x, hook):
        seen.append(hook.pos)
        return torch.zeros_like(x) if hook.pos == 0 else x

    patched = m.run_with_hooks(tokens, fwd_hooks=[("hook_memory", zero_first)])
    assert seen == [0, 1, 2]
    assert torch.allclose(patched[:, :4], clean[:, :4])  # segment 0 reads the initial memory
    assert not torch.allclose(patched[:, 4:8], clean[:, 4:8])
    # state= replaces the initial memory; forward_from is the same call
    mem = torch.randn(2, 16)
    assert torch.allclose(m(tokens, state={"hook_memory": mem}), m.forward_from(mem, tokens))
    with pytest.raises(InputError):
        m(tokens, state={"hook_memory": torch.zeros(3, 16)})
    with pytest.raises(InputError, match="unknown state"):
        m(tokens, state={"layers.0.hook_h": mem})
    logits, final = m(tokens, state={"hook_memory": mem}, return_state=True)
    assert set(final) == {"hook_memory"} and final["hook_memory"].shape == (2, 2, 16)
    # the deprecated spelling still works, with a warning, and returns the bare memory
    with pytest.warns(DeprecationWarning, match="memory="):
        old_logits, old_mem = m(tokens, memory=mem, return_memory=True)
    assert torch.equal(old_logits, logits) and torch.equal(old_mem, final["hook_memory"])
    with pytest.raises(TypeError, match="bogus"):
        m(tokens, bogus=1)


def test_rmt_bptt_truncation_cuts_gradients():
    tokens = torch.randint(0, 2, (2, 16))
    for k, expect_grad in ((0, True), (1, False)):
        m = rmt(bptt_segments=k).train()
        logits = m(tokens)
        logits[:, 12:].sum().backward()  # last segment only
        g = m.memory_init.grad
        assert (g is not None and g.abs().sum() > 0) == expect_grad


def test_rmt_inner_hooks_know_their_segment():
    m = rmt().eval()
    segs = []
    m.run_with_hooks(torch.randint(0, 2, (1, 9)),
                     fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: segs.append(hook.segment))])
    assert segs == [0, 1, 2]


# ---------------------------------------------------------------- scratchpad


@pytest.mark.parametrize("positional", ["none", "rotary", "learned"])
@pytest.mark.parametrize("normalization", ["LN", "RMS", None])
def test_scratchpad_cached_generation_matches_a_full_pass(positional, normalization):
    m = scratch(positional=positional, normalization=normalization).eval()
    tokens = torch.randint(0, 3, (4, 30))
    logits, labels = m.generate(tokens)
    assert torch.equal(labels, logits.argmax(-1))
    assert torch.allclose(m(tokens, feedback=labels), logits, atol=1e-4)
    assert torch.allclose(m(tokens), logits)  # eval forward = own generation


def test_scratchpad_training_mode_uses_teacher_labels_of_the_task():
    task = get_task("cycle_navigation")
    m = scratch().train()
    tokens = torch.as_tensor(task.sampler.sample(np.random.default_rng(0), 4, 12))
    with pytest.raises(InputError, match="teacher"):
        m(tokens)
    true = torch.as_tensor(task.automaton.run_outputs(tokens.numpy()))
    from fsm_probe.training.trainer import _loss

    # the trainer feeds the task's true labels back (teacher forcing)
    want = torch.nn.functional.cross_entropy(m(tokens, feedback=true).flatten(0, 1), true.flatten())
    assert torch.allclose(_loss(m, task, tokens, true), want)
    with pytest.raises(InputError):
        m(tokens, feedback=torch.full_like(tokens, 7))


def test_scratchpad_run_with_cache_in_eval_mode():
    m = scratch().eval()
    tokens = torch.randint(0, 3, (2, 15))
    logits, cache = m.run_with_cache(tokens)
    assert torch.allclose(logits, m(tokens), atol=1e-4)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 2, 15, 15)
    assert cache["hook_embed"].shape == (2, 15, 16)
    fed = cache["hook_feedback"]
    assert fed[:, 0].eq(-1).all() and torch.equal(fed[:, 1:], logits.argmax(-1)[:, :-1])


# ---------------------------------------------------------------- save, load, train, evaluate


@pytest.mark.parametrize("make", [rmt, scratch])
def test_memory_models_save_and_load(tmp_path, make):
    m = make().eval()
    task = get_task("parity") if model_config(m).d_vocab == 2 else get_task("cycle_navigation")
    save(m, tmp_path / "ck", task=task)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert "tl_config" not in config  # the wrapper does not load in plain TransformerLens
    back = load(tmp_path / "ck").model
    assert type(back) is type(m)
    tokens = torch.randint(0, model_config(m).d_vocab, (3, 21))
    assert torch.allclose(back(tokens), m(tokens), atol=1e-6)


@pytest.mark.slow
def test_scratchpad_trains_and_generalizes_on_parity():
    torch.manual_seed(0)
    task = get_task("parity")
    cfg = ModelConfig("scratchpad", 2, 2, n_layers=1, d_hidden=32, positional="none", n_ctx=512)
    run = train(task, cfg, TrainConfig(train_lengths=(1, 40), max_steps=600, eval_every=100,
                                         val_lengths=(40,), val_size=128), progress=False)
    model = run.model
    report = evaluate(model, task, [40, 300], n=64)
    assert report[300]["final_accuracy"] >= 0.99, report


@pytest.mark.slow
def test_rmt_trains_and_evaluates_through_the_standard_loop():
    task = get_task("parity")
    cfg = ModelConfig("rmt", 2, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2,
                      n_memory=1, n_ctx=512)
    run = train(task, cfg, TrainConfig(train_lengths=(1, 12), max_steps=60, eval_every=30,
                                         lr=3e-3, val_size=64), progress=False)
    model = run.model
    assert run.log["steps"] >= 1
    report = evaluate(model, task, [12, 100], n=32)
    assert set(report) == {12, 100}
    for length in (12, 100):  # the standard evaluation agrees with the model's own forward pass
        batch = eval_set(task, length, n=32, seed=12345)
        with torch.no_grad():
            pred = model(torch.as_tensor(batch.tokens)).argmax(-1).numpy()
        mask = batch.labels != IGNORE_INDEX
        assert report[length]["accuracy"] == pytest.approx((pred == batch.labels)[mask].mean())
        assert report[length]["final_accuracy"] == pytest.approx((pred[:, -1] == batch.labels[:, -1]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["rmt", "scratchpad"])
def test_cli_trains_saves_loads_and_evaluates_memory_archs(tmp_path, capsys, arch):
    out = tmp_path / arch
    extra = ["--segment-length", "3", "--memory", "1", "--bptt-segments", "2"] if arch == "rmt" else ["--positional", "rotary"]
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "parity", "--arch", arch, "--hidden", "16", "--heads", "2",
              "--train-lengths", "1:10", "--max-steps", "20", "--quiet", "--out", str(out), *extra])
    assert exc.value.code == 0
    capsys.readouterr()
    model = load(out).model
    assert model_config(model).arch == arch
    if arch == "rmt":
        assert (model_config(model).segment_length, model_config(model).n_memory) == (3, 1)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(out), "--lengths", "10,100", "--n", "16", "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)["lengths"]
    assert set(report) == {"10", "100"}
    assert predict_logits(model, np.zeros((2, 50), dtype=np.int64)).shape == (2, 50, 2)


@pytest.mark.slow
def test_notebook_03_executes(tmp_path):
    run_notebook(ROOT / "examples" / "03_memory_and_length_generalization.ipynb", timeout=900, cwd=tmp_path)


def test_scratchpad_has_no_state_to_extract_patch_or_trace():
    from fsm_probe.circuits.patching import activation_patching, probability
    from fsm_probe.circuits.tracing import causal_tracing
    from fsm_probe.extraction.collect import collect, resolve_site

    m = scratch().eval()
    tokens = np.zeros((2, 8), dtype=np.int64)
    for site in (None, "hook_memory"):
        with pytest.raises(InputError, match="hook_memory"):
            resolve_site(m, site)
    with pytest.raises(InputError, match="hook_memory"):
        collect(m, tokens, site="hook_memory")
    with pytest.raises(InputError, match="hook_memory"):
        activation_patching(m, tokens, tokens, probability([0, 0]))
    with pytest.raises(InputError, match="hook_memory"):
        causal_tracing(m, tokens, corrupt_positions=1, n_samples=1)


def test_rmt_tools_read_only_its_memory():
    from fsm_probe.circuits.patching import activation_patching, probability
    from fsm_probe.circuits.tracing import causal_tracing
    from fsm_probe.extraction.collect import resolve_site

    m = rmt().eval()
    tokens = np.zeros((2, 8), dtype=np.int64)
    assert resolve_site(m, None) == ("hook_memory",)  # extraction: tests/test_memory_extraction.py
    with pytest.raises(InputError, match="hook_memory"):
        resolve_site(m, "blocks.0.hook_resid_post")
    with pytest.raises(InputError, match="hook_memory"):  # the default site, resid_pre, is not one
        activation_patching(m, tokens, tokens, probability([0, 0]))
    assert causal_tracing(m, tokens, corrupt_positions=1, n_samples=1).scores.shape == (1, 2)

import numpy as np
import pytest
import torch

from fsm_probe import InputError, ModelConfig, build_model, get_task, predict_logits
from fsm_probe.circuits.lens import decode, fit_tuned_lens, logit_lens, stream_sites
from fsm_probe.tasks.datasets import IGNORE_INDEX, eval_set, label_batch

TASK = get_task("parity")


def _model(arch: str, **kw) -> torch.nn.Module:
    layers = kw.pop("n_layers", 2)
    model = build_model(ModelConfig(arch, 2, 2, n_layers=layers, d_hidden=16, n_heads=2, n_ctx=32, **kw))
    return model.eval()


@pytest.mark.parametrize(
    "arch,kw",
    [("transformer", {}), ("transformer", {"normalization": None}), ("transformer", {"d_mlp": 0}),
     ("transformer", {"normalization": "RMS", "positional": "rotary"}), ("gru", {}), ("lstm", {})],
)
def test_last_site_decodes_to_the_models_logits(arch, kw):
    model = _model(arch, **kw)
    tokens = torch.as_tensor(eval_set(TASK, 9, n=5).tokens)
    sites = stream_sites(model)
    _, cache = model.run_with_cache(tokens)
    decoded, logits = decode(model, cache[sites[-1].hook]), model(tokens)
    if arch == "transformer":
        assert torch.equal(decoded, logits)
    else:  # fused torch kernel vs the stepwise replay: equal up to float rounding
        torch.testing.assert_close(decoded, logits, atol=1e-6, rtol=1e-5)
    assert sites[0].label == "embed" and sites[0].layer == -1
    has_mid = arch == "transformer" and kw.get("d_mlp") != 0
    assert any(s.label.endswith(".mid") for s in sites) == has_mid


def test_lens_matches_an_independent_computation():
    model = _model("transformer", n_layers=1, d_mlp=0, normalization=None)
    batch = eval_set(TASK, 8, n=32, seed=3)
    res = logit_lens(model, TASK, batch.tokens, batch.labels)
    assert res.sites == ["embed", "L0.post"]
    # embed row: (W_E[token] + W_pos[pos]) @ W_U + b_U, computed by hand
    tok = torch.as_tensor(batch.tokens)
    with torch.no_grad():
        logits0 = (model.W_E[tok] + model.W_pos[: tok.shape[1]]) @ model.W_U + model.b_U
        final = predict_logits(model, batch.tokens)
    y = torch.as_tensor(batch.labels)
    for row, logits in ((0, logits0), (1, final)):
        np.testing.assert_allclose(res.accuracy[row], (logits.argmax(-1) == y).float().mean(0), atol=1e-6)
        p = logits.softmax(-1).gather(-1, y[..., None])[..., 0].mean(0)
        np.testing.assert_allclose(res.prob[row], p, atol=1e-5)
    np.testing.assert_allclose(res.kl[-1], 0, atol=1e-6)
    d = res.to_dict()
    assert d["lens"] == "logit" and len(d["accuracy"]) == 2


def test_rnn_lens_reads_each_layer_state():
    model = _model("lstm")
    res = logit_lens(model, TASK, length=6, n=16)
    assert res.sites == ["embed", "L0.h", "L1.h"]
    assert res.accuracy.shape == (3, 6)
    batch = eval_set(TASK, 6, n=16)
    acc = (predict_logits(model, batch.tokens).argmax(-1).numpy() == batch.labels).mean(0)
    np.testing.assert_allclose(res.accuracy[-1], acc, atol=1e-6)


def test_tuned_lens_starts_from_the_logit_lens_and_fits_better():
    torch.manual_seed(0)
    model = _model("transformer")
    tokens = eval_set(TASK, 8, n=64, seed=1).tokens
    plain = logit_lens(model, TASK, tokens)
    tuned_lens = fit_tuned_lens(model, TASK, tokens, steps=60, lr=2e-2)
    tuned = logit_lens(model, TASK, tokens, lens=tuned_lens)
    assert tuned.lens == "tuned" and tuned.sites == plain.sites
    np.testing.assert_allclose(tuned.accuracy[-1], plain.accuracy[-1])
    assert tuned.kl[:-1].mean() < plain.kl[:-1].mean()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if "pos" not in n)


def test_lens_errors():
    model = _model("gru")
    with pytest.raises(InputError, match="labels have shape"):
        logit_lens(model, TASK, np.zeros((2, 5), dtype=np.int64), np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(InputError, match="needs its task"):
        logit_lens(model)
    with pytest.raises(InputError, match="task must be a fsm_probe Task"):
        logit_lens(model, np.zeros((2, 5), dtype=np.int64))  # tokens where the task goes


def test_lens_ignores_unlabelled_positions_of_final_only_tasks():
    task = get_task("parity_check")
    assert task.final_only
    a = task.automaton
    model = build_model(ModelConfig("transformer", a.n_symbols, a.n_labels, d_hidden=16, n_heads=2, n_ctx=32)).eval()
    batch = eval_set(task, 8, n=16, seed=1)
    assert (batch.labels[:, :-1] == IGNORE_INDEX).all()
    res = logit_lens(model, task, batch.tokens, batch.labels)
    assert np.isnan(res.accuracy[:, :-1]).all() and np.isnan(res.prob[:, :-1]).all()
    full = logit_lens(model, task, batch.tokens, label_batch(task, batch.tokens, final_only=False).labels)
    np.testing.assert_allclose(res.accuracy[:, -1], full.accuracy[:, -1])
    np.testing.assert_allclose(res.prob[:, -1], full.prob[:, -1], rtol=1e-6)
    np.testing.assert_allclose(res.mean_accuracy, full.accuracy[:, -1])

import json

import numpy as np
import pytest
import torch
from transformer_lens import patching as tlp

from fsm_probe.automata import Automaton
from fsm_probe.circuits.patching import (
    activation_patching,
    attribution_patching,
    compare,
    corruption_pairs,
    logit_diff,
    normalized,
    pair,
    probability,
    symmetric_corruption,
)
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model, build_transformer

B, T, FLIP = 4, 10, 3


def _transformer(**kw):
    cfg = dict(d_vocab=2, d_out=2, n_layers=2, d_hidden=32, n_heads=4, n_ctx=64, seed=0)
    return build_transformer(ModelConfig("transformer", **{**cfg, **kw})).eval()


@pytest.fixture(scope="module")
def model():
    return _transformer()


@pytest.fixture(scope="module")
def tokens():
    clean = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[:, FLIP] = 1 - corrupted[:, FLIP]
    return clean, corrupted


def _metrics():
    right, wrong = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    return {
        "logit_diff": logit_diff(right, wrong),
        "all_positions": lambda logits: (logits[..., 0] - logits[..., 1]).pow(2).mean(),
    }


TL_FUNCS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out": tlp.get_act_patch_attn_head_out_by_pos,
}


@pytest.mark.parametrize("metric_name", ["logit_diff", "all_positions"])
@pytest.mark.parametrize("site", sorted(TL_FUNCS))
def test_matches_transformer_lens(model, tokens, site, metric_name):
    clean, corrupted = tokens
    metric = _metrics()[metric_name]
    _, clean_cache = model.run_with_cache(clean)
    expected = TL_FUNCS[site](model, corrupted, clean_cache, metric)
    for engine in ("fast", "hooks"):
        got = activation_patching(model, clean, corrupted, metric, site=site, engine=engine)
        assert got.values.shape == expected.shape
        assert torch.allclose(got.values, expected, atol=1e-5), engine


@pytest.mark.parametrize("kw", [{}, {"positional": "rotary", "normalization": "RMS"}, {"attention_dir": "bidirectional"}])
@pytest.mark.parametrize("site", ["resid_mid", "resid_post", "head_out"])
def test_fast_engine_matches_hook_engine(tokens, kw, site):
    model = _transformer(**kw)
    clean, corrupted = tokens
    for metric in _metrics().values():
        for direction in ("denoise", "noise"):
            fast = activation_patching(model, clean, corrupted, metric, site=site, direction=direction, batch_patches=7, engine="fast")
            ref = activation_patching(model, clean, corrupted, metric, site=site, direction=direction, engine="hooks")
            assert torch.allclose(fast.values, ref.values, atol=1e-5)


def test_resid_mid_patches_the_residual_stream(model, tokens):
    clean, corrupted = tokens
    _, clean_cache = model.run_with_cache(clean)
    _, corr_cache = model.run_with_cache(corrupted)
    metric = _metrics()["all_positions"]
    got = activation_patching(model, clean, corrupted, metric, site="resid_mid")
    layer, pos = 1, 6
    new = clean_cache[f"blocks.{layer}.hook_resid_mid"] - corr_cache[f"blocks.{layer}.hook_resid_pre"]

    def hook(act, hook):
        act = act.clone()
        act[:, pos] = new[:, pos]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", hook)])
    assert abs(float(metric(logits)) - float(got.values[layer, pos])) < 1e-5


def test_denoise_and_noise_sanity(model, tokens):
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    den = activation_patching(model, clean, corrupted, metric, site="resid_pre", direction="denoise")
    noi = activation_patching(model, clean, corrupted, metric, site="resid_pre", direction="noise")
    assert abs(den.values[0, FLIP] - den.clean_value) < 1e-5
    assert abs(noi.values[0, FLIP] - noi.corrupted_value) < 1e-5
    others = [p for p in range(T) if p != FLIP]
    assert torch.allclose(den.values[0, others], torch.tensor(den.corrupted_value), atol=1e-5)
    assert torch.allclose(den.normalized()[0, FLIP], torch.tensor(1.0), atol=1e-4)
    post = activation_patching(model, clean, corrupted, metric, site="resid_post", direction="denoise")
    assert abs(post.values[-1, -1] - post.clean_value) < 1e-5
    assert den.clean_value == noi.clean_value and den.corrupted_value == noi.corrupted_value


@pytest.mark.parametrize("arch,site", [("gru", "hidden"), ("lstm", "hidden"), ("lstm", "cell"), ("rnn", "hidden"),
                                       ("second_order", "hidden")])
def test_rnn_matches_brute_force(arch, site):
    model = build_model(ModelConfig(arch, d_vocab=3, d_out=2, n_layers=2, d_hidden=12, seed=1)).eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 3, (3, 7), generator=g)
    corrupted = torch.randint(0, 3, (3, 7), generator=g)
    metric = probability(torch.tensor([0, 1, 1]))
    got = activation_patching(model, clean, corrupted, metric, site=site, batch_patches=5)
    state = "h" if site == "hidden" else "c"
    _, cache = model.run_with_cache(clean)
    for layer in range(2):
        for t in range(7):
            name = f"layers.{layer}.hook_{state}"

            def hook(act, hook, t=t, name=name):
                return cache[name][:, t] if hook.pos == t else None

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
            assert abs(float(metric(logits)) - float(got.values[layer, t])) < 1e-5


def test_attribution_exact_when_linear(tokens):
    model = _transformer(normalization=None)
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    approx = attribution_patching(model, clean, corrupted, metric, sites=["mlp_out", "resid_post"])
    for site in ("mlp_out", "resid_post"):
        exact = activation_patching(model, clean, corrupted, metric, site=site)
        assert torch.allclose(approx[site].values[-1], exact.values[-1], atol=1e-4)
        assert approx[site].corrupted_value == pytest.approx(exact.corrupted_value, abs=1e-5)


def test_attribution_correlates_with_exact(model, tokens):
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    approx = attribution_patching(model, clean, corrupted, metric)
    assert set(approx) == {"resid_pre", "attn_out", "mlp_out", "head_out"}
    assert approx["head_out"].values.shape == (2, T, 4)
    assert torch.all(approx["resid_pre"].effect()[:, :FLIP] == 0)
    for site in ("attn_out", "mlp_out"):
        exact = activation_patching(model, clean, corrupted, metric, site=site)
        stats = compare(approx[site], exact, k=3)
        assert set(stats) == {"spearman", "spearman_abs", "pearson", "topk_agreement"}
        assert stats["pearson"] > 0.8


def test_compare_signed_and_by_magnitude():
    exact = torch.tensor([[0.0, 3.0, -1.0], [0.5, -4.0, 2.0]])
    approx = torch.tensor([[0.1, 2.0, 1.5], [0.2, -5.0, 1.0]])
    stats = compare(approx, exact, k=2)
    # ranks: approx 2 6 5 3 1 4, exact 3 6 2 4 1 5 -> sum d^2 = 12; |.|: sum d^2 = 2
    assert stats["spearman"] == pytest.approx(1 - 6 * 12 / 210)
    assert stats["spearman_abs"] == pytest.approx(1 - 6 * 2 / 210)
    assert stats["pearson"] == pytest.approx(float(np.corrcoef(approx.flatten(), exact.flatten())[0, 1]))
    assert stats["topk_agreement"] == 1.0  # both put cells (1, 1) and (0, 1) first
    flipped = compare(-exact, exact)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["spearman_abs"] == pytest.approx(1.0)


def test_rnn_attribution_correlates():
    model = build_model(ModelConfig("gru", d_vocab=2, d_out=2, n_layers=1, d_hidden=8, seed=0)).eval()
    clean = torch.randint(0, 2, (4, 6), generator=torch.Generator().manual_seed(2))
    corrupted = clean.clone()
    corrupted[:, 2] = 1 - corrupted[:, 2]
    metric = logit_diff(0, 1)
    approx = attribution_patching(model, clean, corrupted, metric, sites=["hidden"])["hidden"]
    exact = activation_patching(model, clean, corrupted, metric, site="hidden")
    assert approx.values.shape == exact.values.shape == (1, 6)
    assert torch.allclose(approx.values[0, :2], exact.values[0, :2], atol=1e-6)
    assert compare(approx, exact)["pearson"] > 0.5


def _parity():
    return Automaton(["0", "1"], ["even", "odd"], "even", [[0, 1], [1, 0]], outputs=[0, 1])


def test_symmetric_corruption_changes_label():
    auto = _parity()
    tokens = np.random.default_rng(0).integers(0, 2, (20, 9))
    corrupted = symmetric_corruption(auto, tokens, 4, np.random.default_rng(1))
    assert (corrupted != tokens).sum(axis=1).tolist() == [1] * 20
    assert (auto.run_outputs(corrupted)[:, -1] != auto.run_outputs(tokens)[:, -1]).all()
    stuck = Automaton(["0", "1"], ["s"], "s", [[0, 0]], outputs=[0])
    with pytest.raises(InputError, match="no symbol"):
        symmetric_corruption(stuck, tokens, 4, 0)


def test_result_helpers_and_errors(model, tokens):
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    res = activation_patching(model, clean, corrupted, metric, site="attn_out")
    data = json.loads(json.dumps(res.to_dict()))
    assert data["axes"] == ["layer", "pos"] and data["shape"] == [2, T]
    norm = normalized(metric, res.clean_value, res.corrupted_value)
    with torch.no_grad():
        assert float(norm(model(clean))) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(res.effect(), res.values - res.corrupted_value)
    with pytest.raises(InputError):
        activation_patching(model, clean, corrupted, metric, site="hidden")
    with pytest.raises(InputError):
        activation_patching(model, clean, corrupted, metric, direction="sideways")
    with pytest.raises(InputError):
        pair(clean, corrupted[:, :-1])


@pytest.mark.parametrize("kw", [{}, {"positional": "rotary", "normalization": "RMS"}, {"attention_dir": "bidirectional"}])
def test_attribution_skipping_positions_changes_nothing(tokens, kw):
    from fsm_probe.circuits.engine import TransformerEngine

    model = _transformer(**kw)
    clean, corrupted = tokens
    _, cache = model.run_with_cache(clean)
    assert torch.equal(TransformerEngine.resid0(model, clean), cache["blocks.0.hook_resid_pre"])
    metric = logit_diff(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0]), pos=-2)
    sites = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"]
    for direction in ("denoise", "noise"):
        fast = attribution_patching(model, clean, corrupted, metric, sites=sites, direction=direction)
        full = attribution_patching(model, clean, corrupted, lambda x: metric(x), sites=sites, direction=direction)
        for site in sites:
            assert torch.allclose(fast[site].values, full[site].values, atol=1e-6), site
        assert fast["mlp_out"].corrupted_value == pytest.approx(full["mlp_out"].corrupted_value, abs=1e-6)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_ig_converges_to_exact(model, tokens, direction):
    # The inputs differ only at FLIP, so moving the input embedding from base to source is the
    # same path as patching blocks.0.hook_resid_pre at FLIP: IG -> exact (completeness), O(1/steps).
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    exact = activation_patching(model, clean, corrupted, metric, site="resid_pre", direction=direction)
    errs = []
    for steps in (1, 16, 256):
        approx = attribution_patching(model, clean, corrupted, metric, sites=["resid_pre"], direction=direction, steps=steps)
        errs.append(abs(float(approx["resid_pre"].values[0, FLIP] - exact.values[0, FLIP])))
        assert approx["resid_pre"].baseline == pytest.approx(exact.baseline, abs=1e-5)
    assert errs[0] > 0.05 and errs[1] < 0.01 and errs[2] < 5e-4


def test_attribution_steps_one_is_default_and_checked(model, tokens):
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    a = attribution_patching(model, clean, corrupted, metric)
    b = attribution_patching(model, clean, corrupted, metric, steps=1)
    for site in a:
        assert torch.equal(a[site].values, b[site].values)
    ig = attribution_patching(model, clean, corrupted, metric, steps=4)
    assert all(ig[s].values.shape == a[s].values.shape for s in a)
    gru = build_model(ModelConfig("gru", d_vocab=2, d_out=2, n_layers=1, d_hidden=8, seed=0)).eval()
    exact = activation_patching(gru, clean, corrupted, logit_diff(0, 1), site="hidden")
    ig = attribution_patching(gru, clean, corrupted, logit_diff(0, 1), sites=["hidden"], steps=8)["hidden"]
    assert torch.allclose(ig.values[0, :FLIP], exact.values[0, :FLIP], atol=1e-6)
    assert compare(ig, exact)["pearson"] > 0.9
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError):
            attribution_patching(model, clean, corrupted, metric, steps=bad)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"positional": "rotary", "normalization": "RMS"},
        {"attention_dir": "bidirectional"},
        {"d_mlp": 0},
        {"normalization": None},
        {"normalization": "LNPre"},
    ],
)
def test_attribution_matches_hook_gradients(tokens, kw):
    # Independent reference: the bridge's own forward, activations kept through its hook points,
    # d metric / d act by autograd, times (clean act - corrupted act).
    model = _transformer(**kw)
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    hooks = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "head_out": "attn.hook_z",
             "resid_post": "hook_resid_post"}
    if kw.get("d_mlp") != 0:
        hooks["mlp_out"] = "hook_mlp_out"  # (not resid_mid: the bridge's hook_resid_mid is ln2's input)
    _, clean_cache = model.run_with_cache(clean)
    kept, base = {}, None
    for name in [f"blocks.{li}.{h}" for li in range(2) for h in hooks.values()]:

        def leaf(act, hook, name=name):
            kept[name] = act.detach().requires_grad_(True)
            return kept[name]

        with torch.enable_grad():
            base = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, leaf)]))
            base.backward()
    got = attribution_patching(model, clean, corrupted, metric, sites=list(hooks))
    for site, h in hooks.items():
        ref = torch.stack([
            ((clean_cache[f"blocks.{li}.{h}"] - kept[f"blocks.{li}.{h}"]) * kept[f"blocks.{li}.{h}"].grad).sum(-1).sum(0)
            for li in range(2)
        ]) + float(base.detach())
        assert torch.allclose(got[site].values, ref, atol=2e-5), site


def test_engine_refuses_hooks_it_would_skip(tokens):
    model = _transformer()
    clean, corrupted = tokens
    metric = _metrics()["logit_diff"]
    model.add_hook("blocks.0.attn.hook_q", lambda act, hook: act * 0)
    try:
        with pytest.raises(InputError, match="hooks"):
            attribution_patching(model, clean, corrupted, metric)
        with pytest.raises(InputError, match="hooks"):
            activation_patching(model, clean, corrupted, metric, engine="fast")
        auto = activation_patching(model, clean, corrupted, metric, site="attn_out")  # falls back
        ref = activation_patching(model, clean, corrupted, metric, site="attn_out", engine="hooks")
        assert torch.equal(auto.values, ref.values)
    finally:
        model.reset_hooks()
    plain = activation_patching(model, clean, corrupted, metric, site="attn_out", engine="fast")
    assert not torch.allclose(plain.values, ref.values)  # the hook did change the model


def test_corruption_pairs_flip_the_final_label():
    from fsm_probe.tasks import get_task

    task = get_task("modular_arithmetic")  # its length rule turns length 2 into 1
    clean, corrupted, pos = corruption_pairs(task, 2, 16, 0)
    assert clean.shape[1] == corrupted.shape[1] == 1 and pos == 0
    a = task.automaton
    assert (a.run_outputs(clean)[:, -1] != a.run_outputs(corrupted)[:, -1]).all()
    parity = get_task("parity")
    clean, corrupted, pos = corruption_pairs(parity, 12, 8, 3, position=2)
    assert pos == 2 and clean.shape == (8, 12)
    assert (clean != corrupted).sum(1).tolist() == [1] * 8 and (clean[:, 2] != corrupted[:, 2]).all()
    assert corruption_pairs(parity, 12, 8)[2] == 6  # the middle position by default
    assert corruption_pairs(parity, 12, 8, position=-1)[2] == 11
    with pytest.raises(InputError, match="seed"):
        corruption_pairs(parity, 12, 8, seed=-1)
    with pytest.raises(InputError, match="outside"):
        corruption_pairs(parity, 12, 8, position=12)
    with pytest.raises(InputError, match="position 0"):
        corruption_pairs(get_task("flipflop"), 12, 8, position=0)

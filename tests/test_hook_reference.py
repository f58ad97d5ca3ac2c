"""Tracing, activation patching and attribution patching against a from-scratch reference.

The reference below uses only TransformerLens hooks (`run_with_cache`, `run_with_hooks` with hooks
that overwrite or shift one activation) and autograd; it shares no code with
`fsm_probe.circuits.engine`, `fsm_probe.circuits.patching` or `fsm_probe.circuits.tracing`. Every architecture those
accept is checked (the scratchpad must be refused), with both noise kinds of causal tracing.
"""

import pytest
import torch

from fsm_probe.circuits.patching import activation_patching, attribution_patching
from fsm_probe.circuits.tracing import causal_tracing
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model, model_config

B, T, SWAP = 3, 7, 3
CONFIGS = {
    "rnn": ModelConfig("rnn", 2, 2, n_layers=2, d_hidden=12),
    "gru": ModelConfig("gru", 2, 2, n_layers=2, d_hidden=12),
    "lstm": ModelConfig("lstm", 2, 2, n_layers=2, d_hidden=12),
    "second_order": ModelConfig("second_order", 2, 2, n_layers=2, d_hidden=12),
    "transformer": ModelConfig("transformer", 2, 2, n_layers=3, d_hidden=16, n_heads=2, n_ctx=32),
    "attn_only": ModelConfig("transformer", 2, 2, n_layers=2, d_hidden=16, n_heads=2, d_mlp=0, n_ctx=32),
    "rmt": ModelConfig("rmt", 2, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2, n_memory=2, n_ctx=64),
}
SITES = {
    "rnn": ["hidden"],
    "gru": ["hidden"],
    "lstm": ["hidden", "cell"],
    "second_order": ["hidden"],
    "transformer": ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"],
    "attn_only": ["resid_pre", "resid_post", "attn_out", "head_out"],
    "rmt": ["memory", "memory_slot"],
}
_MODELS: dict = {}


def _model(name):
    if name not in _MODELS:
        torch.manual_seed(1)
        model = build_model(CONFIGS[name]).eval()
        scale = 2.5 if CONFIGS[name].is_rnn else 2.0 if name == "rmt" else 1.0
        with torch.no_grad():  # larger weights than the default init, so that states matter more
            for p in model.parameters():
                if p.ndim >= 2 or CONFIGS[name].is_rnn:
                    p.mul_(scale)
        _MODELS[name] = model
    return _MODELS[name]


def _tokens():
    clean = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(4))
    corrupted = clean.clone()
    corrupted[:, SWAP] = 1 - corrupted[:, SWAP]  # parity: the only symbol that changes the label
    return clean, corrupted


def _parity():
    from fsm_probe.tasks import get_task

    return get_task("parity").automaton


def _last_diff(logits):
    return (logits[:, -1, 0] - logits[:, -1, 1]).mean()


def _last_diff_declared(logits):
    return _last_diff(logits)


_last_diff_declared.positions = (-1,)  # lets the fast engine compute only the last position


def _all_positions(logits):
    return (logits[..., 0] - logits[..., 1]).pow(2).mean()


# ----- the reference -----


def _cells(cfg, site, n_pos):
    """(output index, hook name, position or step, head or slot) of every cell of `site`."""
    if cfg.arch == "rmt":
        n_seg = cfg.n_segments(n_pos)
        if site == "memory":
            return [((s,), "hook_memory", s, None) for s in range(n_seg)]
        return [((s, j), "hook_memory", s, j) for s in range(n_seg) for j in range(cfg.n_memory)]
    if cfg.is_rnn:
        name = "hook_h" if site == "hidden" else "hook_c"
        return [((li, p), f"layers.{li}.{name}", p, None) for li in range(cfg.n_layers) for p in range(n_pos)]
    if site == "head_out":
        return [((li, p, h), f"blocks.{li}.attn.hook_z", p, h)
                for li in range(cfg.n_layers) for p in range(n_pos) for h in range(cfg.n_heads)]
    # fsm_probe's resid_mid is the residual stream after attention (TransformerLens's hook_resid_mid
    # is ln2's input only): setting it is setting attn_out to (new resid_mid - resid_pre).
    hook = {"resid_mid": "hook_attn_out"}.get(site, f"hook_{site}")
    return [((li, p), f"blocks.{li}.{hook}", p, None) for li in range(cfg.n_layers) for p in range(n_pos)]


def _per_step(cfg):
    return cfg.is_rnn or cfg.arch == "rmt"


def _setter(cfg, name, pos, index, value):
    """A hook that writes `value` ([batch, ...] of this step, or [batch, pos, ...]) into `name`."""

    def hook(act, hook):
        if _per_step(cfg):
            if hook.pos != pos:
                return None
            act = act.clone()
            if index is None:
                act[:] = value
            else:
                act[:, index] = value[:, index]
            return act
        act = act.clone()
        if index is None:
            act[:, pos] = value[:, pos]
        else:
            act[:, pos, index] = value[:, pos, index]
        return act

    return name, hook


def _new_value(cfg, site, name, pos, src_cache, base_cache):
    if _per_step(cfg):
        return src_cache[name][:, pos]
    if site == "resid_mid":
        li = name.split(".")[1]
        return src_cache[f"blocks.{li}.hook_resid_mid"] - base_cache[f"blocks.{li}.hook_resid_pre"]
    return src_cache[name]


def reference_patching(model, clean, corrupted, metric, site, direction):
    cfg = model_config(model)
    base, src = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, base_cache = model.run_with_cache(base)
        _, src_cache = model.run_with_cache(src)
        cells = _cells(cfg, site, T)
        out = torch.zeros(tuple(max(c[0][k] for c in cells) + 1 for k in range(len(cells[0][0]))))
        for idx, name, pos, index in cells:
            value = _new_value(cfg, site, name, pos, src_cache, base_cache)
            logits = model.run_with_hooks(base, fwd_hooks=[_setter(cfg, name, pos, index, value)])
            out[idx] = float(metric(logits))
    return out


def reference_attribution(model, clean, corrupted, metric, site, direction):
    """metric(base) + (source - base activation) . d metric / d activation, by autograd."""
    cfg = model_config(model)
    base, src = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    cells = _cells(cfg, site, T)
    names = sorted({c[1] for c in cells})
    with torch.no_grad():
        _, base_cache = model.run_with_cache(base)
        _, src_cache = model.run_with_cache(src)
    shifts = {n: torch.zeros_like(base_cache[n], requires_grad=True) for n in names}

    def shifter(name):  # hook.name is the canonical name, not the alias asked for
        def shift(act, hook):
            d = shifts[name]
            return act + (d[:, hook.pos] if _per_step(cfg) else d)

        return name, shift

    with torch.enable_grad():
        value = metric(model.run_with_hooks(base, fwd_hooks=[shifter(n) for n in names]))
        grads = dict(zip(names, torch.autograd.grad(value, [shifts[n] for n in names]), strict=True))
    out = torch.zeros(tuple(max(c[0][k] for c in cells) + 1 for k in range(len(cells[0][0]))))
    for idx, name, pos, index in cells:
        if _per_step(cfg):
            diff, grad = src_cache[name][:, pos] - base_cache[name][:, pos], grads[name][:, pos]
        else:
            # resid_mid: its gradient is attn_out's (resid_mid = resid_pre + attn_out)
            read = name.replace("hook_attn_out", "hook_resid_mid") if site == "resid_mid" else name
            diff, grad = src_cache[read][:, pos] - base_cache[read][:, pos], grads[name][:, pos]
        prod = diff * grad  # [batch, (head or slot,) d]
        out[idx] = prod.sum() if index is None else prod[:, index].sum()
    return out + float(value.detach())


TRACE_HOOKS = {"resid": "hook_resid_pre", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


def _window(layer, window, n_layers):
    """Layers restored together for row `layer`: `window` of them centred on it, clipped."""
    return range(max(0, layer - window // 2), min(n_layers, layer + (window - 1) // 2 + 1))


def reference_tracing(model, clean, noise, kind="resid", window=1, n_samples=2, seed=0, swap=SWAP):
    """Mean p(clean prediction at the last position) after restoring each (layer, pos) state, the
    input corrupted at `swap` (a flipped bit, or Gaussian noise on the embedding)."""
    cfg = model_config(model)
    n_pos = clean.shape[1]
    rows = clean.repeat(n_samples, 1)
    with torch.no_grad():
        target = model(clean)[:, -1].argmax(-1).repeat(n_samples)
        _, cache = model.run_with_cache(rows)
    if noise == "symmetric":
        inputs, corrupt = rows.clone(), []
        inputs[:, swap] = 1 - inputs[:, swap]
    else:
        embed = cache["hook_embed"]
        flat = embed.reshape(embed.shape[0], -1, embed.shape[-1])  # an RMT's segments end to end
        eps = torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed))
        delta = noise * float(flat[:, :n_pos].std()) * eps
        delta[:, [p for p in range(flat.shape[1]) if p != swap]] = 0
        inputs = rows
        if cfg.arch == "rmt":
            seg = delta.view(embed.shape)
            corrupt = [("hook_embed", lambda act, hook: act + seg[:, hook.segment])]
        elif cfg.is_rnn:
            corrupt = [("hook_embed", lambda act, hook: act + delta)]
        else:
            corrupt = [("blocks.0.hook_resid_pre", lambda act, hook: act + delta)]

    def p_target(logits):
        return float(logits[:, -1].softmax(-1)[torch.arange(len(target)), target].mean())

    with torch.no_grad():
        low = p_target(model.run_with_hooks(inputs, fwd_hooks=corrupt))
        if cfg.arch == "rmt":
            scores = torch.zeros(1, cfg.n_segments(n_pos))
            for s in range(scores.shape[1]):
                restore = _setter(cfg, "hook_memory", s, None, cache["hook_memory"][:, s])
                scores[0, s] = p_target(model.run_with_hooks(inputs, fwd_hooks=[*corrupt, restore]))
            return scores, low
        scores = torch.zeros(cfg.n_layers, n_pos)
        for li in range(cfg.n_layers):
            for p in range(n_pos):
                restore = []
                for lj in _window(li, window, cfg.n_layers):
                    if cfg.is_rnn:
                        states = ["hook_h", "hook_c"] if cfg.arch == "lstm" else ["hook_h"]
                        names = [f"layers.{lj}.{s}" for s in states]
                    else:
                        names = [f"blocks.{lj}.{TRACE_HOOKS[kind]}"]
                    for name in names:
                        value = cache[name][:, p] if cfg.is_rnn else cache[name]
                        restore.append(_setter(cfg, name, p, None, value))
                scores[li, p] = p_target(model.run_with_hooks(inputs, fwd_hooks=[*corrupt, *restore]))
    return scores, low


# ----- the checks -----


def _nontrivial(ref):
    assert float(ref.max() - ref.min()) > 1e-4, "the reference map is flat: the check would prove nothing"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_activation_patching_matches_hook_reference(name):
    model, cfg = _model(name), CONFIGS[name]
    clean, corrupted = _tokens()
    metrics = [_last_diff, _all_positions] + ([_last_diff_declared] if cfg.arch == "transformer" else [])
    for site in SITES[name]:
        for direction in ("denoise", "noise"):
            for metric in metrics:
                ref = reference_patching(model, clean, corrupted, metric, site, direction)
                got = activation_patching(model, clean, corrupted, metric, site=site, direction=direction, batch_patches=5)
                assert got.values.shape == ref.shape, site
                assert torch.allclose(got.values, ref, atol=2e-5), (site, direction, metric.__name__)
        _nontrivial(ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_attribution_patching_defaults_to_the_models_sites_and_matches_autograd(name):
    model, cfg = _model(name), CONFIGS[name]
    clean, corrupted = _tokens()
    res = attribution_patching(model, clean, corrupted, _last_diff)  # as the README writes it
    expected_sites = {
        "rnn": ["hidden"], "gru": ["hidden"], "lstm": ["hidden", "cell"], "second_order": ["hidden"],
        "transformer": ["resid_pre", "attn_out", "mlp_out", "head_out"],
        "attn_only": ["resid_pre", "attn_out", "head_out"], "rmt": ["memory", "memory_slot"],
    }[name]
    assert list(res) == expected_sites
    for direction in ("denoise", "noise"):
        res = attribution_patching(model, clean, corrupted, _last_diff, sites=SITES[name], direction=direction)
        for site in SITES[name]:
            ref = reference_attribution(model, clean, corrupted, _last_diff, site, direction)
            assert res[site].values.shape == ref.shape
            assert torch.allclose(res[site].values, ref, atol=1e-4, rtol=1e-4), (site, direction)
    _nontrivial(ref)
    if cfg.arch == "transformer":  # the declared-position metric takes the engine's short cut
        res = attribution_patching(model, clean, corrupted, _last_diff_declared)
        for site, r in res.items():
            ref = reference_attribution(model, clean, corrupted, _last_diff, site, "denoise")
            assert torch.allclose(r.values, ref, atol=1e-4, rtol=1e-4), site


def test_attribution_of_a_cell_matches_a_finite_difference():
    """Independent of autograd: the estimate of one GRU cell is the directional derivative."""
    model = _model("gru")
    clean, corrupted = _tokens()
    est = attribution_patching(model, clean, corrupted, _last_diff, sites="hidden")["hidden"]
    with torch.no_grad():
        _, base = model.run_with_cache(corrupted)
        _, src = model.run_with_cache(clean)
        for li, p in [(0, SWAP), (1, SWAP), (1, T - 1)]:
            name = f"layers.{li}.hook_h"
            step = (src[name][:, p] - base[name][:, p]).double()
            vals = []
            for eps in (1e-3, -1e-3):
                value = base[name][:, p] + (eps * step).float()
                vals.append(float(_last_diff(model.run_with_hooks(corrupted, fwd_hooks=[_setter(model_config(model), name, p, None, value)]))))
            fd = (vals[0] - vals[1]) / 2e-3
            assert float(est.values[li, p]) - est.corrupted_value == pytest.approx(fd, abs=2e-3, rel=2e-2)


TRACE_KINDS = {"transformer": ["resid", "mlp", "attn"], "attn_only": ["resid", "attn"]}


@pytest.mark.parametrize("noise", ["symmetric", 3.0])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causal_tracing_matches_hook_reference(name, noise):
    model = _model(name)
    clean, _ = _tokens()
    for kind in TRACE_KINDS.get(name, ["resid"]):
        for window in (1, 3) if model_config(model).n_layers > 1 else (1,):
            ref, low = reference_tracing(model, clean, noise, kind, window, n_samples=2, seed=7)
            engines = ("auto", "hooks") if model_config(model).arch == "transformer" else ("auto",)
            for engine in engines:
                got = causal_tracing(model, clean, corrupt_positions=SWAP, noise=noise, kind=kind, window=window,
                                     n_samples=2, seed=7, automaton=_parity(), engine=engine)
                assert got.low_score == pytest.approx(low, abs=1e-5)
                assert got.scores.shape == ref.shape
                assert torch.allclose(got.scores, ref, atol=1e-5), (kind, window, engine)
            _nontrivial(ref)
    if noise == "symmetric" and model_config(model).arch != "transformer":
        # the swap is at SWAP: restoring any earlier state cannot bring the clean label back
        before = got.scores[:, : SWAP // (model_config(model).segment_length if name == "rmt" else 1)]
        assert torch.allclose(before, torch.tensor(low), atol=1e-5)


def test_scratchpad_is_refused_with_a_clear_error():
    model = build_model(ModelConfig("scratchpad", 2, 2, n_layers=1, d_hidden=16, n_heads=2, n_ctx=64)).eval()
    clean, corrupted = _tokens()
    calls = [
        lambda: activation_patching(model, clean, corrupted, _last_diff, site="resid_pre"),
        lambda: attribution_patching(model, clean, corrupted, _last_diff),
        lambda: causal_tracing(model, clean, corrupt_positions=SWAP),
    ]
    for call in calls:
        with pytest.raises(InputError, match="scratchpad"):
            call()


@pytest.mark.parametrize("name", ["gru", "rmt"])
def test_sublayer_tracing_on_a_recurrent_model_is_a_clear_error(name):
    with pytest.raises(InputError, match=r"kind='mlp' needs a Transformer.*kind='resid'"):
        causal_tracing(_model(name), _tokens()[0], kind="mlp")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gru", "lstm", "second_order", "rmt"])
def test_symmetric_tracing_on_trained_parity_models(arch):
    """Restoring a clean state before the swapped symbol cannot help (~0); from it on, the clean
    state carries the clean parity (~1), except an RMT's last memory, which no logit reads."""
    from fsm_probe.circuits.patching import corruption_pairs
    from fsm_probe.tasks import get_task
    from fsm_probe.training import TrainConfig, train

    torch.manual_seed(0)
    task = get_task("parity")
    if arch == "rmt":
        cfg = ModelConfig("rmt", 2, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2, n_memory=1, n_ctx=512)
        tc = TrainConfig(train_lengths=(1, 12), max_steps=300, eval_every=50, lr=1e-2, val_size=128, val_lengths=(12,))
    else:
        cfg = ModelConfig(arch, 2, 2, d_hidden=16)
        tc = TrainConfig(train_lengths=(1, 20), max_steps=800, eval_every=100, val_size=128, val_lengths=(20,))
    run = train(task, cfg, tc, progress=False)
    model = run.model
    assert run.log["final_val_accuracy"] == 1.0
    clean, _, pos = corruption_pairs(task, length=12, n=8, seed=3)
    clean = torch.as_tensor(clean)
    res = causal_tracing(model, clean, corrupt_positions=pos, noise="symmetric", automaton=task.automaton, n_samples=1)
    ref, _ = reference_tracing(model, clean, "symmetric", n_samples=1, swap=pos)
    assert torch.allclose(res.scores, ref, atol=1e-5)
    assert res.low_score < 0.05 and res.high_score > 0.95
    if arch == "rmt":
        first, last = pos // cfg.segment_length, res.scores.shape[1] - 1
        before, after = res.scores[:, :first], res.scores[:, first:last]
    else:
        before, after = res.scores[:, :pos], res.scores[:, pos:]
    assert before.numel() and after.numel()
    assert float(before.max()) < 0.05, res.scores
    assert float(after.min()) > 0.95, res.scores

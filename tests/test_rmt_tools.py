"""Circuit tools on the Recurrent Memory Transformer: memory patching, attribution and tracing,
logit lens and probes, attention statistics and the report (fsm_probe/patching.py, tracing.py,
lens.py, probes.py, attention.py, report.py)."""

import numpy as np
import pytest
import torch

from fsm_probe.circuits.attention import (
    attention_dilution,
    attention_patterns,
    head_stats,
    segment_patterns,
)
from fsm_probe.circuits.graph import circuit_graph, rank_components
from fsm_probe.circuits.lens import (
    analysis_batch,
    cache_sites,
    decode,
    fit_tuned_lens,
    logit_lens,
    site_positions,
    stream_sites,
)
from fsm_probe.circuits.patching import (
    activation_patching,
    attribution_patching,
    compare,
    default_sites,
    logit_diff,
)
from fsm_probe.circuits.probes import probe_model
from fsm_probe.circuits.tracing import causal_tracing
from fsm_probe.errors import InputError
from fsm_probe.figures.circuits import head_stats_figure, patching_figure, tracing_figure
from fsm_probe.models import ModelConfig, build_model, model_config
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, train


def rmt(**kw):
    base = dict(arch="rmt", d_vocab=2, d_out=2, n_layers=2, d_hidden=16, n_heads=2,
                segment_length=3, n_memory=2, seed=1)
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-layer RMT that has learned parity (segments of 2, one memory vector), saved as a run."""
    torch.manual_seed(0)
    task = get_task("parity")
    cfg = ModelConfig("rmt", 2, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2,
                      n_memory=1, n_ctx=512)
    run_dir = tmp_path_factory.mktemp("rmt_run")
    run = train(task, cfg, TrainConfig(train_lengths=(1, 12), max_steps=300, eval_every=50,
                                       lr=1e-2, val_size=128, val_lengths=(12,)),
                out_dir=run_dir, progress=False)
    return task, run.model.eval(), run_dir


def _flip_pair(n=16, length=11, flip=4, seed=0):
    clean = torch.randint(0, 2, (n, length), generator=torch.Generator().manual_seed(seed))
    corrupted = clean.clone()
    corrupted[:, flip] = 1 - corrupted[:, flip]
    return clean, corrupted


# ---------------------------------------------------------------- patching the memory


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_memory_patching_matches_hook_patching_and_restarting(direction):
    m = rmt()
    clean, corrupted = _flip_pair(4, 11)  # 4 segments of 3, the last one ragged
    base, src = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, cache = m.run_with_cache(src, names_filter="hook_memory")
        base_logits = m(base)
    src_mem = cache["hook_memory"]
    metrics = [logit_diff(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])),
               lambda logits: (logits[..., 0] - logits[..., 1]).pow(2).mean()]
    for metric in metrics:
        res = activation_patching(m, clean, corrupted, metric, site="memory", direction=direction, batch_patches=2)
        assert res.axes == ("segment",) and res.values.shape == (4,)
        for s in range(4):
            def hook(act, hook, s=s):
                return src_mem[:, s] if hook.pos == s else None

            with torch.no_grad():
                hooked = m.run_with_hooks(base, fwd_hooks=[("hook_memory", hook)])
                suffix = base[:, (s + 1) * 3 :]
                restarted = torch.cat([base_logits[:, : (s + 1) * 3],
                                       m(suffix, state={"hook_memory": src_mem[:, s]}) if suffix.shape[1] else base_logits[:, :0]], 1)
            assert abs(float(metric(hooked)) - float(res.values[s])) < 1e-5
            assert abs(float(metric(restarted)) - float(res.values[s])) < 1e-5
        # segment 0 sees no difference; the last segment's memory is never read
        assert float(res.values[0]) == pytest.approx(res.baseline, abs=1e-6)
        assert float(res.values[3]) == pytest.approx(res.baseline, abs=1e-6)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_memory_slot_patching_matches_hook_patching(direction):
    m = rmt(n_memory=3)
    clean, corrupted = _flip_pair(4, 11)
    base, src = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, cache = m.run_with_cache(src, names_filter="hook_memory")
    src_mem = cache["hook_memory"]
    metric = lambda logits: (logits[..., 0] - logits[..., 1]).pow(2).mean()  # noqa: E731
    res = activation_patching(m, clean, corrupted, metric, site="memory_slot", direction=direction, batch_patches=5)
    assert res.axes == ("segment", "slot") and res.values.shape == (4, 3)
    for s in range(4):
        for j in range(3):
            def hook(act, hook, s=s, j=j):
                if hook.pos != s:
                    return None
                act = act.clone()
                act[:, j] = src_mem[:, s, j]
                return act

            with torch.no_grad():
                hooked = m.run_with_hooks(base, fwd_hooks=[("hook_memory", hook)])
            assert abs(float(metric(hooked)) - float(res.values[s, j])) < 1e-5
    assert torch.unique(res.values[1:3]).numel() > 3  # the vectors of one memory differ in effect
    one = rmt(n_memory=1)
    whole = activation_patching(one, clean, corrupted, metric, site="memory", direction=direction)
    slots = activation_patching(one, clean, corrupted, metric, site="memory_slot", direction=direction)
    assert torch.allclose(slots.values[:, 0], whole.values, atol=1e-6)


def test_memory_slot_attribution_equals_gradient_per_vector():
    m = rmt(n_memory=3)
    clean, corrupted = _flip_pair(4, 12, flip=1)
    metric = logit_diff(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0]))
    est = attribution_patching(m, clean, corrupted, metric, sites=["memory", "memory_slot"])
    slot = est["memory_slot"]
    assert slot.values.shape == (4, 3) and slot.axes == ("segment", "slot")
    with torch.no_grad():
        _, c_cache = m.run_with_cache(clean, names_filter="hook_memory")
        _, x_cache = m.run_with_cache(corrupted, names_filter="hook_memory")
        prefix = m(corrupted)
    for s in range(3):  # restart from the memory written by segment s; one leaf per vector
        leaves = [x_cache["hook_memory"][:, s, j].clone().requires_grad_(True) for j in range(3)]
        logits = torch.cat([prefix[:, : (s + 1) * 3], m(corrupted[:, (s + 1) * 3 :], state={"hook_memory": torch.stack(leaves, 1)})], 1)
        grads = torch.autograd.grad(metric(logits), leaves)
        for j in range(3):
            delta = float(((c_cache["hook_memory"][:, s, j] - leaves[j].detach()) * grads[j]).sum())
            assert float(slot.effect()[s, j]) == pytest.approx(delta, abs=1e-5)
    assert torch.allclose(slot.effect().sum(-1), est["memory"].effect(), atol=1e-5)
    ranked = rank_components({"memory_slot": slot}, normalize=False)
    top = ranked[0]
    assert top.name == f"memory@{top.position}[{top.head}]" and top.kind == "memory"
    fig = patching_figure(slot)
    assert list(fig.data[0].y) == ["slot 0", "slot 1", "slot 2"] and len(fig.data[0].x) == 4


@pytest.mark.parametrize("bptt", [0, 1])
def test_memory_attribution_equals_gradient_of_a_restarted_run(bptt):
    m = rmt(bptt_segments=bptt)
    clean, corrupted = _flip_pair(4, 12, flip=1)
    metric = logit_diff(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0]))
    approx = attribution_patching(m, clean, corrupted, metric, sites=["memory"])["memory"]
    with torch.no_grad():
        _, c_cache = m.run_with_cache(clean, names_filter="hook_memory")
        _, x_cache = m.run_with_cache(corrupted, names_filter="hook_memory")
        prefix = m(corrupted)
    for s in range(3):  # the memory written by segment s, as the leaf of a run restarted from it
        leaf = x_cache["hook_memory"][:, s].clone().requires_grad_(True)
        logits = torch.cat([prefix[:, : (s + 1) * 3], m(corrupted[:, (s + 1) * 3 :], state={"hook_memory": leaf})], 1)
        (grad,) = torch.autograd.grad(metric(logits), leaf)
        delta = float(((c_cache["hook_memory"][:, s] - leaf.detach()) * grad).sum())
        assert float(approx.effect()[s]) == pytest.approx(delta, abs=1e-5)
        assert abs(delta) > 1e-6  # a real check: the gradient is not cut at segment boundaries
    assert float(approx.effect()[3]) == 0.0


def test_memory_patching_on_trained_rmt_and_attribution(trained):
    task, model, _ = trained
    clean, corrupted = _flip_pair(32, 12, flip=5)  # segment 2 holds the flipped symbol
    right = task.automaton.run_outputs(clean.numpy())[:, -1]
    metric = logit_diff(right, 1 - right)
    exact = activation_patching(model, clean, corrupted, metric, site="memory")
    norm = exact.normalized()
    assert exact.clean_value > 0 > exact.corrupted_value
    assert torch.allclose(norm[:2], torch.zeros(2), atol=1e-5)  # before the flip: nothing to restore
    assert torch.allclose(norm[2:5], torch.ones(3), atol=1e-5)  # the memory carries parity forward
    assert float(norm[5]) == pytest.approx(0.0, abs=1e-5)  # the last memory is never read
    approx = attribution_patching(model, clean, corrupted, metric, sites=["memory"])["memory"]
    assert approx.axes == ("segment",) and approx.method == "attribution"
    assert approx.corrupted_value == pytest.approx(exact.corrupted_value, abs=1e-5)
    assert approx.clean_value == pytest.approx(exact.clean_value, abs=1e-5)
    assert torch.equal(approx.effect()[[0, 1, 5]], torch.zeros(3))  # no difference or no gradient
    assert compare(approx, exact)["spearman_abs"] > 0.5
    ig = attribution_patching(model, clean, corrupted, metric, sites=["memory"], steps=4)["memory"]
    assert torch.equal(ig.effect()[[0, 1, 5]], torch.zeros(3))
    noised = activation_patching(model, clean, corrupted, metric, site="memory", direction="noise")
    assert torch.allclose(noised.normalized()[2:5], torch.zeros(3), atol=1e-5)
    ranked = rank_components({"memory": exact})
    assert [c.name for c in ranked[:3]] == ["memory@2", "memory@3", "memory@4"]
    graph = circuit_graph({"memory": exact})
    assert graph.has_edge("memory@2", "memory@3") and graph.has_edge("memory@3", "memory@4")
    assert not graph.has_edge("memory@3", "memory@2") and not graph.has_edge("input", "memory@3")
    assert ranked[0].kind == "memory" and ranked[0].position == 2
    assert len(patching_figure(exact).data[0].z[0]) == 6


def test_tracing_restores_the_memory(trained):
    _, model, _ = trained
    clean, _ = _flip_pair(8, 12)
    res = causal_tracing(model, clean, corrupt_positions=(5,), noise=3.0, n_samples=2)
    assert res.scores.shape == (1, 6)
    # segments 2..4 write the clean memory with clean tokens after them: the clean run exactly
    assert torch.allclose(res.scores[0, 2:5], torch.tensor(res.high_score), atol=1e-5)
    assert torch.allclose(res.scores[0, [0, 1, 5]], torch.tensor(res.low_score), atol=1e-5)
    sym = causal_tracing(model, clean, corrupt_positions=5, noise="symmetric",
                         automaton=get_task("parity").automaton, n_samples=1)
    assert sym.scores.shape == (1, 6)
    fig = tracing_figure(res, [f"s{k}" for k in range(6)])
    assert list(fig.data[0].x) == ["s0", "s1", "s2*", "s3", "s4", "s5"] and list(fig.data[0].y) == ["memory"]
    with pytest.raises(InputError, match="kind='resid'"):
        causal_tracing(model, clean, kind="attn")


def test_patching_sites_are_checked_per_architecture():
    m = rmt()
    tokens = np.zeros((2, 6), dtype=np.int64)
    metric = logit_diff(0, 1)
    for site in ("resid_pre", "hidden"):
        with pytest.raises(InputError, match="'memory'"):
            activation_patching(m, tokens, tokens, metric, site=site)
    with pytest.raises(InputError, match="'memory'"):
        attribution_patching(m, tokens, tokens, metric, sites=["resid_pre"])
    assert set(attribution_patching(m, tokens, tokens, metric)) == set(default_sites(model_config(m)))
    tf = build_model(ModelConfig("transformer", 2, 2, d_hidden=16, n_heads=2, n_ctx=16))
    with pytest.raises(InputError, match="'memory'"):
        activation_patching(tf, tokens, tokens, metric, site="memory")
    pad = build_model(ModelConfig("scratchpad", 2, 2, d_hidden=16, n_heads=2, positional="none"))
    with pytest.raises(InputError, match="'scratchpad'"):
        activation_patching(pad, tokens, tokens, metric, site="memory")


# ---------------------------------------------------------------- lens and probes


def test_lens_sites_are_the_inner_residual_stream_at_token_positions():
    m = rmt()
    x = torch.randint(0, 2, (3, 11), generator=torch.Generator().manual_seed(3))
    sites = stream_sites(m)
    assert [s.hook for s in sites] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid",
                                       "blocks.0.hook_resid_post", "blocks.1.hook_resid_mid",
                                       "blocks.1.hook_resid_post"]
    assert stream_sites(m, incl_memory=True)[-1].hook == "hook_memory"
    acts = cache_sites(m, x, [s.hook for s in sites] + ["hook_memory"], batch_size=2)
    assert acts["blocks.1.hook_resid_post"].shape == (3, 11, 16)
    assert acts["hook_memory"].shape == (3, 3, 2 * 16)  # 3 complete segments of 3
    assert np.array_equal(site_positions(m, "hook_memory", 11), [2, 5, 8])
    with torch.no_grad():
        assert torch.allclose(decode(m, acts["blocks.1.hook_resid_post"]), m(x), atol=1e-5)
        mem = m.memory_states(x)
    assert torch.allclose(acts["hook_memory"], mem[:, :3].reshape(3, 3, -1))


def test_lens_and_probes_on_trained_rmt(trained):
    task, model, _ = trained
    res = logit_lens(model, task, length=12, n=128)
    batch = analysis_batch(model, task, length=12, n=128)
    with torch.no_grad():
        own = (model(torch.as_tensor(batch.tokens)).argmax(-1).numpy() == batch.labels).mean(0)
    assert own.mean() > 0.95
    assert np.allclose(res.accuracy[-1], own)
    assert res.sites == ["embed", "L0.mid", "L0.post"]
    before = [p.detach().clone() for p in model.parameters()]
    plain = logit_lens(model, task, length=12, n=64)
    tuned = logit_lens(model, task, lens=fit_tuned_lens(model, task, steps=60, lr=2e-2, length=12, n=64), length=12, n=64)
    assert tuned.lens == "tuned" and tuned.accuracy.shape == (3, 12) and tuned.sites == plain.sites
    np.testing.assert_allclose(tuned.accuracy[-1], plain.accuracy[-1])  # the last site is the output
    assert tuned.kl[:-1].mean() < plain.kl[:-1].mean()  # the per-site maps fit the output better
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    probes = probe_model(model, task, length=12, n=128, max_samples=1000, moduli=())
    assert probes.sites[-1] == "memory"
    state = probes.targets.index("state")
    assert probes.accuracy[-1, state] == 1.0  # the memory holds parity after every segment
    short = probe_model(model, task, tokens=np.random.default_rng(0).integers(0, 2, (64, 1)), moduli=())
    assert "memory" not in short.sites and short.sites[-1] == "L0.post"  # no complete segment


# ---------------------------------------------------------------- attention


def test_attention_statistics_per_segment(trained):
    task, model, _ = trained
    m = rmt()
    x = torch.randint(0, 2, (4, 10), generator=torch.Generator().manual_seed(4))
    p = segment_patterns(m, x)
    assert p.shape == (4, 4, 2, 2, 7, 7)  # 4 segments of [2 read | 3 tokens | 2 write]
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)
    stats = head_stats(m, tokens=x)
    want = p[:, :3, :, :, 2:5, :2].sum(-1).mean(axis=(0, 1, 4))  # complete segments only
    assert np.allclose(stats.memory_read, want)
    assert np.allclose(stats.memory_write, p[:, :3, :, :, 5:, :2].sum(-1).mean(axis=(0, 1, 4)))
    assert {"memory_read", "memory_write"} <= set(stats.rows()[0]) and "memory_read" in stats.to_dict()
    assert len(head_stats_figure(head_stats(model, task, length=12, n=16)).data) == 4
    with pytest.raises(InputError, match="cannot dilute"):
        attention_dilution(m, task, [4, 8])
    with pytest.raises(InputError, match="segment_patterns"):
        attention_patterns(m, x)


# ---------------------------------------------------------------- report


def test_report_on_trained_rmt(trained, tmp_path, capsys):
    from test_report import _check_offline, _report, _section

    _, _, run = trained
    text = _report(capsys, run, tmp_path / "report.html")
    _check_offline(text)  # no "Section not computed", no external scripts
    assert "inner Transformer" in _section(text, "lens") and _section(text, "lens").count("<figure>") >= 2
    assert "memory" in _section(text, "probes")
    attention = _section(text, "attention")
    assert attention.count("<figure>") == 2 and "No attention dilution" in attention
    patching = _section(text, "patching")
    assert patching.count("<figure>") >= 3 and "Activation patching, memory, denoise" in patching
    assert "Spearman" in patching
    assert _section(text, "tracing").count("<figure>") == 1
    assert "memory@" in _section(text, "circuit")
    automaton = _section(text, "automaton")
    assert "states (minimized)" in automaton and automaton.count("<figure>") >= 1
    assert "equivalent to the task" in automaton and "<td>True</td>" in automaton

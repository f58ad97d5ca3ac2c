"""AtP* (`fsm_probe.circuits.attribution`) against exact activation patching, and the verified
shortlist's recall of the exact top-10 cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_probe import get_task
from fsm_probe.circuits.attribution import atp_star, attribution_mlp_exact
from fsm_probe.circuits.discovery import discover_circuit, mixed_corruption_pairs, verify_shortlist
from fsm_probe.circuits.patching import activation_patching, attribution_patching, logit_diff
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model, compile_transformer


def _qk_only_model() -> torch.nn.Module:
    """Two attention-only layers, no norms: layer 0's heads write to dims 0..7, which only layer
    1's queries and keys read (its values and the unembedding read dims 8..15). A layer-0 cell
    then acts on the metric only through one softmax, which AtP* recomputes exactly."""
    cfg = ModelConfig("transformer", d_vocab=3, d_out=2, n_layers=2, d_hidden=16, n_heads=2, d_mlp=0,
                      normalization=None, positional="learned", n_ctx=8, seed=0)
    model = build_model(cfg)
    net = model.original_model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
        net.tok_embed.weight[:, :8] = 0
        net.pos.weight[:, :8] = 0
        net.layers[0].attn.o.weight[8:] = 0
        net.layers[0].attn.o.bias[8:] = 0
        net.layers[1].attn.v.weight[:, :8] = 0
        net.head.weight[:, :8] = 0
    return model


def _pairs(model, seed: int = 0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 3, (6, 8))
    corrupted = clean.copy()
    for b in range(6):
        corrupted[b, int(rng.integers(0, 8))] = int(rng.integers(0, 3))
    metric = logit_diff(np.zeros(6, dtype=int), np.ones(6, dtype=int))
    return clean, corrupted, metric


def test_atp_star_is_exact_through_one_softmax() -> None:
    model = _qk_only_model()
    clean, corrupted, metric = _pairs(model)
    exact = activation_patching(model, clean, corrupted, metric, site="head_out")
    star = atp_star(model, clean, corrupted, metric, ["head_out"])["head_out"]
    plain = attribution_patching(model, clean, corrupted, metric, sites=["head_out"])["head_out"]
    assert star.values.shape == exact.values.shape == plain.values.shape
    scale = float(exact.effect().abs().max())
    assert float(exact.effect()[0].abs().max()) > 0.2 * scale > 0  # layer 0 matters
    assert torch.allclose(star.effect(), exact.effect(), atol=1e-4 * scale)
    # Linearised through the saturated softmax, plain attribution gets layer 0 wrong.
    assert float((plain.effect()[0] - exact.effect()[0]).abs().max()) > 0.05 * scale
    assert torch.allclose(plain.effect()[1], exact.effect()[1], atol=1e-4 * scale)  # linear after layer 1
    # Attention-only: no MLP to recompute, attribution_mlp_exact is plain attribution.
    mlp = attribution_mlp_exact(model, clean, corrupted, metric, ["head_out", "mlp_out"])
    assert list(mlp) == ["head_out"] and torch.allclose(mlp["head_out"].values, plain.values, atol=1e-4 * scale)
    # GradDrop, sum over l of |estimate without layer l's gradient| / (n_layers - 1): a layer-0
    # cell keeps its estimate when layer 0 is dropped and loses it with layer 1 (its only path);
    # a layer-1 cell keeps it in both.
    gd = atp_star(model, clean, corrupted, metric, ["head_out"], grad_drop=True)["head_out"].effect()
    assert torch.allclose(gd[0].abs(), exact.effect()[0].abs(), atol=1e-4 * scale)
    assert torch.allclose(gd[1].abs(), 2 * exact.effect()[1].abs(), atol=1e-4 * scale)
    assert torch.equal(torch.sign(gd), torch.sign(star.effect()))


def test_atp_star_equals_attribution_mlp_under_positional_attention() -> None:
    """A compiled scan's heads attend by position: no cell moves a score, so the QK fix adds
    nothing to the MLP-exact estimate."""
    task = get_task("parity")
    model = compile_transformer(task.automaton, "scan", n_ctx=8).model
    clean, corrupted, _ = mixed_corruption_pairs(task, 8, n=8)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    star = atp_star(model, clean, corrupted, metric)
    mlp = attribution_mlp_exact(model, clean, corrupted, metric)
    for site in ("head_out", "mlp_out"):
        assert torch.allclose(star[site].values, mlp[site].values, atol=1e-5)


@pytest.mark.parametrize("spec", ["parity", "cyclic:n=3"])
def test_verified_shortlist_recalls_the_exact_top10(spec: str) -> None:
    task = get_task(spec)
    built = compile_transformer(task.automaton, "scan", n_ctx=16)
    model = built.model
    clean, corrupted, _ = mixed_corruption_pairs(task, 16, n=16)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    sites = ["head_out", "mlp_out"]
    exact = {s: activation_patching(model, clean, corrupted, metric, site=s) for s in sites}
    cells = [(s, i) for s in sites for i in np.ndindex(*exact[s].values.shape)]
    size = np.array([abs(float(exact[s].effect()[i])) for s, i in cells])
    tenth = np.sort(size)[-10]
    top = {c for c, v in zip(cells, size, strict=True) if v >= tenth and v > 0}
    est = atp_star(model, clean, corrupted, metric, sites)
    measured = verify_shortlist(model, clean, corrupted, metric, {s: r.effect().numpy() for s, r in est.items()},
                                top_k=10)
    assert 20 <= len(measured) < len(cells) // 4
    for (s, i), v in measured.items():
        assert v == pytest.approx(float(exact[s].values[i]), abs=1e-4)
    base = exact["head_out"].baseline
    best = sorted(measured, key=lambda c: -abs(measured[c] - base))[:10]
    assert len([c for c in best if c in top]) / min(10, len(top)) >= 0.9
    found = discover_circuit(built, task, method="verified", n=16)
    assert found.settings["estimator"] == "atp_star_ig4"
    assert len(found.settings["verified_cells"]) >= 20


def _partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first, *part[k]]] + part[k + 1 :]
        yield [[first], *part]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15)), min_size=1, max_size=7),
       st.integers(1, 64))
@settings(max_examples=60, deadline=None)
def test_scattered_chunks_are_the_cheapest_grouping(cells, batch):
    """The shortlist's grouping against brute force over every partition of each layer's patches
    (same cost model: a fixed cost per forward plus batch * (n_pos - earliest position) per patch)."""
    from fsm_probe.circuits.grouping import _MIN_TOKEN_ROWS, Patch, scattered_chunks

    n_pos = 16
    patches = [Patch((layer,), pos) for layer, pos in cells]
    chunks = scattered_chunks(patches, batch, n_pos, limit=100)
    assert sorted(i for c in chunks for i in c) == list(range(len(patches)))

    def cost(group):
        return _MIN_TOKEN_ROWS + len(group) * batch * (n_pos - min(patches[i].pos for i in group))

    for layer in {c[0] for c in cells}:
        mine = [c for c in chunks if patches[c[0]].layers == (layer,)]
        assert all(patches[i].layers == (layer,) for c in mine for i in c)
        idx = [i for i, p in enumerate(patches) if p.layers == (layer,)]
        brute = min(sum(cost(g) for g in part) for part in _partitions(idx))
        assert sum(cost(g) for g in mine) == brute
    limited = scattered_chunks(patches, batch, n_pos, limit=2)
    assert max(len(c) for c in limited) <= 2
    assert sorted(i for c in limited for i in c) == list(range(len(patches)))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 15)), min_size=1, max_size=7),
       st.integers(1, 64), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_scattered_chunks_across_layers_beat_one_layer_at_a_time(cells, batch, limit):
    """Several layers in one forward (it runs from its earliest patch's layer): the grouping
    covers every patch once, holds at most `limit`, costs no more than grouping each layer alone
    under the same cost model, and is the brute-force optimum when one layer holds every patch."""
    from fsm_probe.circuits.grouping import _LAYER_ROWS, Patch, scattered_chunks

    n_pos, n_layers = 16, 4
    patches = [Patch((layer,), pos) for layer, pos in cells]

    def cost(group):
        start = min(patches[i].pos for i in group)
        return (n_layers - min(patches[i].layers[0] for i in group)) * (_LAYER_ROWS + len(group) * batch * (n_pos - start))

    chunks = scattered_chunks(patches, batch, n_pos, limit, n_layers)
    assert sorted(i for c in chunks for i in c) == list(range(len(patches)))
    assert max(len(c) for c in chunks) <= limit
    alone = sum(min(sum(cost(g) for g in part) for part in _partitions([i for i, p in enumerate(patches) if p.layers == (layer,)])
                    if all(len(g) <= limit for g in part))
                for layer in {c[0] for c in cells})
    assert sum(cost(c) for c in chunks) <= alone
    if len({c[0] for c in cells}) == 1:
        assert sum(cost(c) for c in chunks) == alone


def test_atp_star_ig_is_integrated_gradients_through_transformerlens() -> None:
    """`ig_steps=k`: each MLP cell's change times the gradient at `hook_resid_post` averaged over
    the k runs of corrupted + j/k (clean - corrupted) inputs, recomputed here with the bridge's
    own hooks (queries and keys detached, as AtP* stops them)."""
    task = get_task("parity")
    model = compile_transformer(task.automaton, "scan", n_ctx=8).model.eval()
    clean, corrupted, _ = mixed_corruption_pairs(task, 8, n=8)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    k = 4
    est = atp_star(model, clean, corrupted, metric, ["mlp_out"], ig_steps=k)["mlp_out"].effect()
    ct, kt = torch.as_tensor(clean), torch.as_tensor(corrupted)
    with torch.no_grad():
        _, cc = model.run_with_cache(ct)
        _, kc = model.run_with_cache(kt)
    n_layers = est.shape[0]
    r_c, r_k = cc["blocks.0.hook_resid_pre"], kc["blocks.0.hook_resid_pre"]
    grads = [torch.zeros_like(r_c) for _ in range(n_layers)]
    for j in range(k):
        x0 = r_k + (j / k) * (r_c - r_k)
        acts: dict[int, torch.Tensor] = {}

        def keep(act, hook, layer, acts=acts):
            act.retain_grad()
            acts[layer] = act
            return act

        hooks = [("blocks.0.hook_resid_pre", lambda act, hook, x0=x0: x0.clone().requires_grad_(True))]
        hooks += [(f"blocks.{li}.hook_resid_post", lambda act, hook, li=li: keep(act, hook, li)) for li in range(n_layers)]
        hooks += [(f"blocks.{li}.attn.hook_{w}", lambda act, hook: act.detach()) for li in range(n_layers) for w in "qk"]
        with torch.enable_grad():
            metric(model.run_with_hooks(kt, fwd_hooks=hooks)).backward()
        for li in range(n_layers):
            grads[li] += acts[li].grad / k
    ref = torch.stack([((cc[f"blocks.{li}.hook_mlp_out"] - kc[f"blocks.{li}.hook_mlp_out"]) * grads[li]).sum((0, 2))
                       for li in range(n_layers)])
    assert ref.abs().max() > 1
    assert torch.allclose(est, ref, atol=1e-4)
    one = atp_star(model, clean, corrupted, metric, ["mlp_out"], ig_steps=1)["mlp_out"]
    assert torch.equal(one.values, atp_star(model, clean, corrupted, metric, ["mlp_out"])["mlp_out"].values)


def test_ig_finds_the_cells_behind_switched_off_lookups() -> None:
    """On a compiled parity scan at n_ctx 64 the early scan levels act on the output through
    lookups that are off in the corrupted run: AtP* gives those cells exactly zero and its
    verified shortlist misses 3 of the exact top 10; with the gradient integrated over two points
    of the input path it recalls all 10."""
    task = get_task("parity")
    model = compile_transformer(task.automaton, "scan", n_ctx=64).model
    clean, corrupted, _ = mixed_corruption_pairs(task, 64, n=16, seed=0)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    sites = ["head_out", "mlp_out"]
    exact = {s: activation_patching(model, clean, corrupted, metric, site=s) for s in sites}
    size = {(s, i): abs(float(exact[s].effect()[i])) for s in sites for i in np.ndindex(*exact[s].values.shape)}
    tenth = sorted(size.values())[-10]
    top = {c for c, v in size.items() if v >= tenth}
    base = exact["head_out"].baseline

    def recall(**kw):
        est = atp_star(model, clean, corrupted, metric, sites, **kw)
        zero = [c for c in top if float(est[c[0]].effect()[c[1]]) == 0]
        got = verify_shortlist(model, clean, corrupted, metric, {s: r.effect().numpy() for s, r in est.items()},
                               top_k=10, baseline=base)
        best = sorted(got, key=lambda c: -abs(got[c] - base))[:10]
        return len([c for c in best if c in top]) / 10, zero

    plain, zero = recall()
    assert plain <= 0.8 and zero
    assert recall(ig_steps=2)[0] >= 0.9


def test_atp_star_rejects_bad_ig_steps() -> None:
    task = get_task("parity")
    model = compile_transformer(task.automaton, "scan", n_ctx=8).model
    clean, corrupted, _ = mixed_corruption_pairs(task, 8, n=4)
    metric = logit_diff(task.automaton.run_outputs(clean)[:, -1], task.automaton.run_outputs(corrupted)[:, -1])
    with pytest.raises(InputError, match="ig_steps"):
        atp_star(model, clean, corrupted, metric, ig_steps=0)
    with pytest.raises(InputError, match="grad_drop and ig_steps"):
        atp_star(model, clean, corrupted, metric, grad_drop=True, ig_steps=2)


def test_one_forward_over_several_sites_equals_one_site_at_a_time() -> None:
    """The native engine patches head and MLP cells of several layers in one stacked forward: the
    metrics equal those of one site at a time; the hook path refuses such a sweep."""
    from fsm_probe.circuits.engine import EvalMode, Runner, Sweep
    from fsm_probe.circuits.grouping import Patch

    task = get_task("cyclic:n=3")
    model = compile_transformer(task.automaton, "scan", n_ctx=16).model.eval()
    clean, corrupted, _ = mixed_corruption_pairs(task, 16, n=8)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    cells = [Patch((0,), 15, 0, "head_out"), Patch((1,), 3, None, "mlp_out"), Patch((2,), 7, 0, "head_out"),
             Patch((3,), 15, None, "mlp_out"), Patch((0,), 2, None, "mlp_out")]
    with EvalMode(model), torch.no_grad():
        runner = Runner(model, engine="fast")
        clean_run, corr_run = runner.run(torch.as_tensor(clean)), runner.run(torch.as_tensor(corrupted))
        mixed = runner.evaluate(corr_run, clean_run, Sweep("head_out", cells, [(k,) for k in range(5)], (5,)),
                                metric, None, scattered=True)
        for k, p in enumerate(cells):
            alone = runner.evaluate(corr_run, clean_run, Sweep(p.site, [p], [(0,)], (1,)), metric, None)
            assert float(mixed[k]) == pytest.approx(float(alone[0]), abs=1e-5)
        assert len({round(float(v), 4) for v in mixed}) > 1  # the cells differ: a mix-up would show
        from fsm_probe.circuits.discovery import verify_cells

        assert verify_cells(model, clean, corrupted, metric, []) == {}
        hooks = Runner(model, engine="hooks")
        with pytest.raises(InputError, match="several sites"):
            hooks.evaluate(hooks.run(torch.as_tensor(corrupted)), hooks.run(torch.as_tensor(clean)),
                           Sweep("head_out", cells, [(k,) for k in range(5)], (5,)), metric, None)

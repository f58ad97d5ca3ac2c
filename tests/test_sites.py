"""The site vocabulary (fsm_probe/circuits/sites.py) and the patching and tracing results' cells."""

import numpy as np
import pytest
import torch

from fsm_probe.circuits import sites
from fsm_probe.circuits.engine import STAGES
from fsm_probe.circuits.patching import PatchingResult, activation_patching, logit_diff, top_cells
from fsm_probe.circuits.tracing import TracingResult
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model


def _cfg(arch, **kw):
    base = {"d_vocab": 2, "d_out": 2, "n_layers": 2, "d_hidden": 8}
    if arch in ("transformer", "rmt", "scratchpad"):
        base.update(n_heads=2, n_ctx=16)
    return ModelConfig(arch, **{**base, **kw})


def test_hook_names_follow_transformer_lens():
    assert sites.hook_name("head_out", 0) == "blocks.0.attn.hook_z"
    assert sites.hook_name("resid_pre", 1) == "blocks.1.hook_resid_pre"
    assert sites.hook_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert sites.hook_name("hidden", 1) == "layers.1.hook_h"
    assert sites.hook_name("cell", 0) == "layers.0.hook_c"
    assert sites.hook_name("memory") == sites.hook_name("memory_slot") == "hook_memory"
    with pytest.raises(InputError, match="needs a layer"):
        sites.hook_name("resid_post")
    with pytest.raises(InputError, match="'bogus'.*resid_pre"):
        sites.hook_name("bogus", 0)
    assert sites.layer_hooks(_cfg("gru"), "hidden") == ["layers.0.hook_h", "layers.1.hook_h"]


def test_axes_and_stage_order():
    assert sites.axes("head_out") == ("layer", "pos", "head")
    assert sites.axes("memory_slot") == ("segment", "slot")
    assert sites.axes("hidden") == sites.axes("mlp_out") == ("layer", "pos")
    assert sites.STAGES == STAGES  # the engine computes a block in this order
    ranks = [sites.stage(s) for s in sites.STAGES]
    assert ranks == sorted(ranks) and sites.stage("head_out") == sites.stage("attn_out")


@pytest.mark.parametrize(
    ("arch", "kw", "patch", "components"),
    [
        ("gru", {}, ["hidden"], ["hidden"]),
        ("lstm", {}, ["hidden", "cell"], ["hidden", "cell"]),
        ("transformer", {}, ["resid_pre", "attn_out", "mlp_out", "head_out"], ["head_out", "mlp_out"]),
        ("transformer", {"d_mlp": 0}, ["resid_pre", "attn_out", "head_out"], ["head_out"]),
        ("rmt", {"n_memory": 2, "segment_length": 2}, ["memory", "memory_slot"], None),
    ],
)
def test_defaults_per_family(arch, kw, patch, components):
    cfg = _cfg(arch, **kw)
    assert sites.patch_sites(cfg) == patch
    for site in patch:
        sites.check_site(cfg, site)
    if components is None:
        with pytest.raises(InputError, match="circuit discovery.*not 'rmt'"):
            sites.component_sites(cfg)
    else:
        assert sites.component_sites(cfg) == components


def test_check_site_names_the_bad_site_and_the_valid_ones():
    with pytest.raises(InputError, match="Transformer patching sites are resid_pre.*got 'hidden'"):
        sites.check_site(_cfg("transformer"), "hidden")
    with pytest.raises(InputError, match="RNN patching sites are hidden, cell, got 'resid_pre'"):
        sites.check_site(_cfg("gru"), "resid_pre")
    with pytest.raises(InputError, match="'cell' needs an LSTM"):
        sites.check_site(_cfg("gru"), "cell")
    with pytest.raises(InputError, match="attention-only"):
        sites.check_site(_cfg("transformer", d_mlp=0), "mlp_out")
    with pytest.raises(InputError, match="'memory'.*got 'hidden'"):
        sites.check_site(_cfg("rmt", segment_length=2), "hidden")
    with pytest.raises(InputError, match="'scratchpad'.*hook_memory"):
        sites.check_site(_cfg("scratchpad"), "resid_pre")


def test_trace_sites_and_kinds_are_inverse():
    for arch, state in (("gru", "hidden"), ("transformer", "resid_pre"), ("rmt", "memory")):
        cfg = _cfg(arch, **({"segment_length": 2} if arch == "rmt" else {}))
        assert sites.trace_site(cfg, "resid") == state and sites.trace_kind(cfg, state) == "resid"
    tf = _cfg("transformer")
    assert [sites.trace_kind(tf, s) for s in ("mlp_out", "attn_out")] == ["mlp", "attn"]
    with pytest.raises(InputError, match="'mlp_out' cannot be traced.*tracing sites are hidden$"):
        sites.trace_kind(_cfg("gru"), "mlp_out")
    with pytest.raises(InputError, match="tracing sites are resid_pre, attn_out$"):
        sites.trace_kind(_cfg("transformer", d_mlp=0), "mlp_out")


def test_stream_points_per_family():
    assert [p.label for p in sites.stream_points(_cfg("lstm"), incl_cell=True)] == [
        "embed", "L0.h", "L0.c", "L1.h", "L1.c"]
    tf = sites.stream_points(_cfg("transformer"))
    assert [p.hook for p in tf[:3]] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid",
                                        "blocks.0.hook_resid_post"]
    with pytest.raises(InputError, match="lens.*not 'scratchpad'"):
        sites.stream_points(_cfg("scratchpad"))


def _result(values, direction="denoise", clean=2.0, corrupted=-2.0, site="resid_pre"):
    return PatchingResult(torch.tensor(values, dtype=torch.float32), sites.axes(site), site, direction, clean,
                          corrupted)


def test_top_cells_rank_by_effect_and_normalise_once():
    r = _result([[-2.0, 0.0, 2.0], [-3.0, -2.0, 1.0]])
    cells = r.top_cells()
    assert [c.index for c in cells] == [(0, 2), (1, 2), (0, 1), (1, 0), (0, 0), (1, 1)]
    assert [c.normalized for c in cells[:4]] == [1.0, 0.75, 0.5, -0.25]
    assert cells[0].effect == 4.0 and cells[0].label() == "layer=0 pos=2"
    assert [c.index for c in r.top_cells(2)] == [(0, 2), (1, 2)]
    np.testing.assert_array_equal([c.normalized for c in cells],
                                  [float(r.normalized()[c.index]) for c in cells])
    noised = _result([[2.0, -2.0]], direction="noise")
    assert [c.effect for c in noised.top_cells()] == [-4.0, 0.0]
    flat = _result([[1.0, 3.0]], clean=1.0, corrupted=1.0)
    assert [c.normalized for c in flat.top_cells()] == [None, None]
    with pytest.raises(InputError, match="coincide"):
        flat.normalized()


def test_top_cells_over_sites_break_ties_by_site_then_index():
    a, b = _result([[2.0, -2.0]], site="resid_pre"), _result([[2.0, 1.0]], site="attn_out")
    got = [(c.site, c.index) for c in top_cells({"resid_pre": a, "attn_out": b}, 3)]
    assert got == [("resid_pre", (0, 0)), ("attn_out", (0, 0)), ("attn_out", (0, 1))]


def test_tracing_top_cells():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    res = TracingResult(scores, 0.1, 1.0, "resid", 1, 3.0, (0,), 4, 2)
    top = res.top_cells(3)
    assert [(s.layer, s.position) for s in top] == [(0, 1), (1, 0), (1, 1)]
    assert top[0].score == pytest.approx(0.9) and top[0].effect == pytest.approx(0.8)


def test_patching_map_axes_come_from_the_vocabulary():
    model = build_model(_cfg("transformer", n_ctx=8)).eval()
    clean = torch.tensor([[0, 1, 1, 0]])
    corrupted = torch.tensor([[0, 1, 0, 0]])
    res = activation_patching(model, clean, corrupted, logit_diff(0, 1), site="head_out")
    assert res.axes == sites.axes("head_out") and tuple(res.values.shape) == (2, 4, 2)
    with pytest.raises(TypeError):
        activation_patching(model, clean, corrupted, logit_diff(0, 1), "head_out")  # keyword-only


def test_verified_discovery_runs_on_an_rnn():
    from fsm_probe.circuits.discovery import discover_circuit
    from fsm_probe.models.compiled import compile_rnn
    from fsm_probe.tasks import get_task

    task = get_task("flipflop")
    found = discover_circuit(compile_rnn(task.automaton), task, method="verified", length=8, n=8, top_k=3)
    assert sum(c.verified for c in found.components) >= 1
    assert found.components[0].verified and found.components[0].score > 0.5

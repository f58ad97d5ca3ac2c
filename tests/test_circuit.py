from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import torch

from fsm_probe.circuits.graph import circuit_graph, rank_components
from fsm_probe.circuits.patching import PatchingResult
from fsm_probe.circuits.tracing import TracingResult
from fsm_probe.errors import InputError
from fsm_probe.figures import circuits as figs


def _result(values, site, axes=("layer", "pos"), direction="denoise", clean=2.0, corrupted=-2.0):
    return PatchingResult(torch.tensor(values, dtype=torch.float32), axes, site, direction, clean, corrupted)


def _results():
    heads = np.full((2, 3, 2), -2.0)
    heads[1, 2, 0] = 2.0  # L1H0 at the last position restores everything
    heads[0, 1, 1] = 0.0  # L0H1 restores half
    mlp = np.full((2, 3), -2.0)
    mlp[1, 2] = -3.0  # L1.mlp pushes the wrong way by a quarter
    resid = np.full((2, 3), -2.0)
    resid[0, 1] = 2.0
    return {
        "head_out": _result(heads, "head_out", ("layer", "pos", "head")),
        "mlp_out": _result(mlp, "mlp_out"),
        "resid_pre": _result(resid, "resid_pre"),
    }


def test_rank_components_normalises_and_orders():
    ranked = rank_components(_results())
    top = {c.name: c for c in ranked}
    assert [c.name for c in ranked[:2]] == ["resid L0@1", "L1H0"]
    assert top["L1H0"].effect == pytest.approx(1) and top["L1H0"].position == 2
    assert top["L0H1"].effect == pytest.approx(0.5) and top["L0H1"].head == 1
    assert top["L1.mlp"].effect == pytest.approx(-0.25)
    assert top["L0.mlp"].effect == pytest.approx(0)
    noised = _result(np.where(np.eye(2, 3) > 0, -2.0, 2.0), "resid_pre", direction="noise")
    by_name = {c.name: c for c in rank_components([noised])}
    assert by_name["resid L0@0"].effect == pytest.approx(1) and by_name["resid L0@1"].effect == 0
    raw = {c.name: c for c in rank_components(_results(), normalize=False)}
    assert raw["L1H0"].effect == pytest.approx(4)


def test_circuit_graph_is_a_weighted_dag():
    g = circuit_graph(_results(), threshold=0.2, top_k=None)
    assert set(g) == {"input", "output", "resid L0@1", "L1H0", "L0H1", "L1.mlp"}
    assert nx.is_directed_acyclic_graph(g)
    assert g.has_edge("resid L0@1", "L1H0") and not g.has_edge("L1H0", "L0H1")
    assert g.edges["L0H1", "L1H0"]["weight"] == pytest.approx(0.5)
    assert g.nodes["L1H0"]["kind"] == "head" and g.nodes["L1H0"]["layer"] == 1
    assert all(g.has_edge(n, "output") for n in g if n not in ("input", "output"))
    small = circuit_graph(_results(), threshold=0.2, top_k=2)
    assert set(small) == {"input", "output", "resid L0@1", "L1H0"}
    empty = circuit_graph(_results(), threshold=2.0)
    assert set(empty) == {"input", "output"}
    _check_circuit_figure(g, _results())


def _check_circuit_figure(g, results):
    """The figure draws the graph: one labelled node per graph node, coloured by the effect
    `rank_components` gave it, and one edge per graph edge, labelled with its weight."""
    fig = figs.circuit_figure(g)
    *edges, nodes = fig.data
    assert list(nodes.text) == list(g)
    ranked = {c.name: c.effect for c in rank_components(results)}
    want = [1.0 if n in ("input", "output") else ranked[n] for n in g]
    np.testing.assert_allclose(nodes.marker.color, want)
    np.testing.assert_allclose(nodes.marker.size, [14 + 30 * min(1.0, abs(e)) for e in want])
    assert sorted(e.text for e in edges) == sorted(f"{a} -> {b}: {d['weight']:.3f}" for a, b, d in g.edges(data=True))
    x = dict(zip(nodes.text, nodes.x, strict=True))
    assert x["input"] < min(x[n] for n in g if n != "input") and x["output"] > max(x[n] for n in g if n != "output")
    assert all(x[a] < x[b] for a, b in g.edges)  # drawn from input (left) to output (right)


def test_patching_and_tracing_figures():
    res = _results()
    f = figs.patching_figure(res["head_out"])
    assert list(f.data[0].y) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    np.testing.assert_allclose(f.data[0].z[2], [0, 0, 1])
    np.testing.assert_allclose(f.data[0].z, res["head_out"].normalized().permute(0, 2, 1).reshape(4, 3))
    assert "head_out, denoise" in f.layout.title.text
    raw = figs.patching_figure(res["resid_pre"], normalize=False)
    np.testing.assert_allclose(raw.data[0].z, res["resid_pre"].values.numpy() + 2.0)  # effect: minus the corrupted run
    assert list(raw.data[0].y) == ["L0", "L1"] and list(raw.data[0].x) == [0, 1, 2]
    approx = _result(np.arange(6.0).reshape(2, 3), "mlp_out")
    scatter = figs.attribution_scatter(approx, res["mlp_out"])
    np.testing.assert_allclose(scatter.data[0].x, res["mlp_out"].effect().ravel())
    np.testing.assert_allclose(scatter.data[0].y, approx.effect().ravel())
    assert list(scatter.data[1].x) == [-1.0, 7.0]  # the diagonal spans both
    scores = torch.tensor([[0.1, 0.2, 0.9], [0.3, 0.8, 0.4]])
    trace = TracingResult(scores, 0.1, 0.9, "attn", 3, 3.0, (1,), 4, 2)
    tf = figs.tracing_figure(trace, ["a", "b", "c"])
    np.testing.assert_allclose(tf.data[0].z, scores)
    assert list(tf.data[0].x) == ["a", "b*", "c"] and list(tf.data[0].y) == ["L0", "L1"]
    assert (tf.data[0].zmin, tf.data[0].zmax) == (0.1, 0.9) and "window 3" in tf.layout.title.text


def test_heatmaps_show_their_input():
    rng = np.random.default_rng(0)
    patterns = rng.random((2, 3, 4, 4))
    grid = figs.attention_head_grid(patterns, list("abcd"))
    assert len(grid.data) == 6
    for i, trace in enumerate(grid.data):
        np.testing.assert_allclose(trace.z, patterns[i // 3, i % 3])
        assert list(trace.x) == list("abcd")
    lens = SimpleNamespace(accuracy=rng.random((3, 5)), sites=["embed", "L0", "L1"], lens="logit")
    lf = figs.logit_lens_figure(lens)
    np.testing.assert_allclose(lf.data[0].z, lens.accuracy)
    assert list(lf.data[0].y) == lens.sites and lf.layout.title.text.startswith("Logit lens: accuracy")
    report = {4: {"accuracy": 0.9, "final_accuracy": 0.8, "sequence_accuracy": 0.5},
              2: {"accuracy": 1.0, "final_accuracy": 1.0, "sequence_accuracy": 1.0}}
    length = figs.length_figure(report, 2)
    assert [list(t.x) for t in length.data] == [[2, 4]] * 3
    assert [list(t.y) for t in length.data] == [[1.0, 0.9], [1.0, 0.8], [1.0, 0.5]]


def test_rank_components_keeps_resid_mid_and_post_and_refuses_unknown_sites():
    mid = np.full((2, 3), -2.0)
    mid[1, 2] = 1.0
    post = np.full((2, 3), -2.0)
    post[0, 0] = 2.0
    results = {**_results(), "resid_mid": _result(mid, "resid_mid"), "resid_post": _result(post, "resid_post")}
    by_name = {c.name: c for c in rank_components(results)}
    assert by_name["resid_mid L1@2"].effect == pytest.approx(0.75) and by_name["resid_mid L1@2"].kind == "resid_mid"
    assert by_name["resid_post L0@0"].effect == pytest.approx(1) and by_name["resid_post L0@0"].position == 0
    g = circuit_graph(results, threshold=0.7, top_k=None)
    assert g.has_edge("resid_post L0@0", "L1H0") and not g.has_edge("resid_post L0@0", "resid L0@1")
    _check_circuit_figure(g, results)
    with pytest.raises(InputError, match="site"):
        rank_components([_result(mid, "embed")])

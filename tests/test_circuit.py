import networkx as nx
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from fsm_probe.circuits.graph import circuit_graph, rank_components
from fsm_probe.circuits.patching import PatchingResult
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
    assert isinstance(figs.circuit_figure(g), go.Figure)


def test_patching_and_tracing_figures():
    res = _results()
    f = figs.patching_figure(res["head_out"])
    assert list(f.data[0].y) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    np.testing.assert_allclose(f.data[0].z[2], [0, 0, 1])
    assert isinstance(figs.attribution_scatter(res["mlp_out"], res["mlp_out"]), go.Figure)
    assert isinstance(figs.patching_figure(res["resid_pre"], normalize=False), go.Figure)


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
    assert isinstance(figs.circuit_figure(g), go.Figure)
    with pytest.raises(InputError, match="site"):
        rank_components([_result(mid, "embed")])

"""Extraction pipeline pieces: abstractions, refinement, voting, graphs, exports, checks, errors."""

from __future__ import annotations

import json
import re

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from fsm_probe.automata import Automaton
from fsm_probe.cli import main
from fsm_probe.errors import ConfigError, InputError
from fsm_probe.extraction import (
    ABSTRACTIONS,
    FSMExtractor,
    GridAbstraction,
    KMeansAbstraction,
    Reducer,
    build_automaton,
    check_extraction,
    collect,
    compare_to_task,
    graph_to_automaton,
    interchange_accuracy,
    lstar,
    make_abstraction,
    purity,
    refine_partition,
    sample_words,
    save_extraction,
    to_dot,
)
from fsm_probe.figures.extraction import extraction_figures, figures_html
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import get_task
from fsm_probe.training.checkpoint import save


@pytest.fixture(scope="module")
def tomita6():
    task = get_task("tomita6")
    model = compile_rnn(task.automaton)
    return task, model


@pytest.fixture(scope="module")
def fitted(tomita6):
    task, model = tomita6
    return FSMExtractor().fit(model, task)


def blobs(n_per: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((n_per, 2)) for c in centres])
    return x, np.repeat(np.arange(3), n_per)


@pytest.mark.parametrize("method", sorted(ABSTRACTIONS))
def test_abstractions_separate_blobs(method: str) -> None:
    x, truth = blobs()
    size = 3 if method != "grid" else 2
    est = make_abstraction(method).with_size(size).fit(x)
    labels = est.predict(x)
    assert labels.shape == (len(x),) and labels.min() >= 0 and labels.max() < est.n_states_
    assert purity(labels, truth)["purity"] == 1.0
    np.testing.assert_array_equal(est.fit_predict(x), est.labels_)


def test_abstraction_errors() -> None:
    x, _ = blobs()
    with pytest.raises(ConfigError, match="unknown abstraction"):
        make_abstraction("dbscan")
    with pytest.raises(ConfigError):
        KMeansAbstraction(n_states=0).fit(x)
    with pytest.raises(InputError, match="not fitted"):
        KMeansAbstraction().predict(x)
    with pytest.raises(InputError, match="NaN"):
        KMeansAbstraction().fit(np.full((4, 2), np.nan))
    with pytest.raises(InputError, match="features"):
        KMeansAbstraction(2).fit(x).predict(np.zeros((3, 5)))
    with pytest.raises(ConfigError):
        Reducer(1.5).fit(x)


def test_grid_maps_unseen_cells_to_occupied_ones() -> None:
    x, _ = blobs()
    grid = GridAbstraction(n_bins=4, n_dims=2).fit(x)
    assert grid.n_states_ == 3
    assert grid.predict(np.array([[10.0, 10.0], [-3.0, 0.0]])).tolist()[1] == grid.predict(x[:1])[0]


def test_reducer_variance_fraction() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1)) @ np.ones((1, 6)) + 1e-3 * rng.standard_normal((200, 6))
    assert Reducer(0.9).fit(x).n_components_ == 1
    assert Reducer(None).fit(x).transform(x).shape == (200, 6)


def _chain_data():
    """Rows of a mod-2 counter over 'a' where block 0 wrongly holds states 0 and 1."""
    tokens = np.zeros((4, 6), dtype=np.int64)
    t1 = tokens.shape[1] + 1
    true = np.tile(np.arange(t1) % 2, 4)
    rows = np.arange(4 * t1).reshape(4, t1)
    edges = (rows[:, :-1].reshape(-1), tokens.reshape(-1), rows[:, 1:].reshape(-1))
    x = np.stack([true * 3.0 + 0.01 * np.arange(len(true)) % 0.1, np.zeros(len(true))], 1)
    return true, edges, x, rows[:, 0]


def test_refinement_splits_a_mixed_block() -> None:
    true, edges, x, starts = _chain_data()
    blocks = np.zeros(len(true), dtype=np.int64)
    refined = refine_partition(blocks, true, edges, x)
    assert purity(refined, true)["purity"] == 1.0
    assert refined.max() + 1 == 2
    built = build_automaton(refined, true, edges, starts, ("a",), ("0", "1"))
    assert built.minimal.n_states == 2 and built.n_conflicts == 0


def test_majority_vote_counts_conflicts() -> None:
    true, edges, x, starts = _chain_data()
    blocks = true.copy()
    src, sym, dst = edges
    blocks2 = blocks.copy()
    blocks2[dst[0]] = 0
    built = build_automaton(blocks2, true, edges, starts, ("a",), ("0", "1"))
    assert built.n_conflicts == 2
    assert built.minimal.n_states == 2


def test_graph_round_trip_and_exports(tomita6, fitted, tmp_path) -> None:
    g = fitted.graph_
    assert isinstance(g, nx.MultiDiGraph)
    for _, d in g.nodes(data=True):
        assert {"output", "support", "centroid"} <= set(d)
        assert d["support"] > 0 and len(d["centroid"]) == fitted.collection_.dim
    for _, _, d in g.edges(data=True):
        assert {"symbol", "count", "confidence", "conflicts"} <= set(d)
        assert 0 <= d["confidence"] <= 1
    back = graph_to_automaton(g)
    assert back.isomorphism(fitted.automaton_) is not None
    report = check_extraction(tomita6[1], fitted, lengths=(20,), n=50)
    paths = save_extraction(tmp_path / "x", fitted, report, "<html></html>")
    assert set(paths) == {"fsm.json", "fsm.graphml", "fsm.dot", "figures.html", "extraction.json"}
    assert Automaton.load_json(paths["fsm.json"]).isomorphism(fitted.automaton_) is not None
    h = nx.read_graphml(paths["fsm.graphml"])
    assert h.number_of_nodes() == fitted.n_states_
    dot = paths["fsm.dot"].read_text()
    assert dot.startswith("digraph") and dot.count("->") >= fitted.n_states_
    assert '"q0" -> ' in to_dot(g)


def test_checks_on_compiled_network(tomita6, fitted) -> None:
    task, model = tomita6
    r = check_extraction(model, fitted, task, lengths=(30, 60), n=100)
    assert r["equivalent_to_task"] is True and r["counterexample"] is None
    assert r["state_mapping"] is not None and len(r["state_mapping"]) == 3
    assert r["fidelity"] == 1.0 and r["accuracy"] == 1.0
    assert r["interchange_accuracy"] == 1.0
    assert r["nmi"] > 0.99
    json.dumps(r)


def test_counterexample_is_shortest() -> None:
    t3 = get_task("tomita3").automaton
    t4 = get_task("tomita4").automaton
    r = compare_to_task(t4, t3)
    assert r["equivalent_to_task"] is False
    w = r["counterexample"]
    assert t3.output_of(w) != t4.output_of(w)
    assert compare_to_task(t3, t3)["state_mapping"] is not None


def test_interchange_detects_a_wrong_automaton(tomita6) -> None:
    _, model = tomita6
    wrong = get_task("parity").automaton
    tokens = np.random.default_rng(0).integers(0, 2, (64, 30))
    ic = interchange_accuracy(model, Automaton(
        ("0", "1"), wrong.states, wrong.start, wrong.transitions, [0, 1],
        ("accept", "reject")), tokens)
    assert ic["accuracy"] < 0.9


def test_all_methods_on_compiled(tomita6) -> None:
    task, model = tomita6
    for method in ("grid", "gmm", "agglomerative", "lstar"):
        ex = FSMExtractor(method=method, empty_output="network").fit(model, task)
        assert ex.automaton_.isomorphism(task.automaton.minimize()) is not None, method
        np.testing.assert_array_equal(ex.predict(np.zeros((1, 5), dtype=np.int64)),
                                      task.automaton.run_outputs(np.zeros((1, 5), dtype=np.int64)))


def test_collect_sites_and_initial_state() -> None:
    a = get_task("tomita3").automaton
    model = build_model(ModelConfig(arch="lstm", d_vocab=2, d_out=2, d_hidden=8, n_layers=2))
    words = sample_words(2, 10, 7, exhaustive=16)
    assert words.shape == (26, 7)
    many = sample_words(20, 3, 5, exhaustive=16)  # 20 > exhaustive: no complete prefix depth
    assert many.shape == (4, 5) and many.max() < 20
    col = collect(model, words, automaton=a, batch_size=5)
    assert col.site == tuple(model.state_names) and col.dim == 32
    assert np.all(col.vectors[:, 0] == 0) and col.true_states[0, 0] == a.start
    _, cache = model.run_with_cache(torch.as_tensor(words), names_filter="layers.1.hook_c")
    np.testing.assert_allclose(col.vectors[:, 1:, 24:], cache["layers.1.hook_c"].numpy(), atol=1e-6)
    gate = collect(model, words, site="layers.0.hook_f")
    assert gate.dim == 8
    with pytest.raises(ConfigError, match="unknown hook site"):
        collect(model, words, site="layers.9.hook_h")
    with pytest.raises(ConfigError, match="embedding"):
        collect(model, words, site="hook_embed")
    with pytest.raises(ConfigError, match="recurrent-state"):
        interchange_accuracy(model, a, words, site="layers.0.hook_f")


def test_transformer_extraction_runs() -> None:
    task = get_task("parity")
    model = build_model(ModelConfig(arch="transformer", d_vocab=2, d_out=2, d_hidden=16,
                                    n_heads=2, n_layers=1, n_ctx=64))
    ex = FSMExtractor(n_words=32, length=8, n_val=32, val_length=10, sizes=(2, 4)).fit(model, task)
    assert ex.collection_.virtual_initial and ex.site_ == ("blocks.0.hook_resid_post",)
    assert 1 <= ex.n_states_ <= 64
    assert check_extraction(model, ex, task, lengths=(10,), n=20)["interchange_accuracy"] is None


def test_lstar_budget_stops() -> None:
    model = build_model(ModelConfig(arch="gru", d_vocab=2, d_out=2, d_hidden=16, seed=3))
    res = lstar(model, ("0", "1"), ("a", "b"), max_rounds=2, max_states=5, time_limit=5)
    assert res.rounds <= 2 and res.automaton.n_states <= 6


def test_extractor_errors(tomita6) -> None:
    task, model = tomita6
    with pytest.raises(ConfigError, match="unknown extraction method"):
        FSMExtractor(method="magic").fit(model, task)
    with pytest.raises(ConfigError, match="positive integer"):
        FSMExtractor(n_words=0).fit(model, task)
    with pytest.raises(ConfigError, match="unknown hook site"):
        FSMExtractor(site="nope").fit(model, task)
    with pytest.raises(InputError, match="not fitted"):
        FSMExtractor().predict(np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ConfigError, match="does not fit"):
        FSMExtractor().fit(model, get_task("quaternion"))


def test_figures(fitted, tmp_path) -> None:
    figs = extraction_figures(fitted)
    assert len(figs) == 3 and all(isinstance(f, go.Figure) for f in figs)
    page = figures_html(figs, summary="ok")
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:300]) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)
    assert page.count("Plotly.newPlot") == 3


def test_cli_extract(tmp_path, capsys) -> None:
    task = get_task("tomita4")
    save(compile_rnn(task.automaton), tmp_path / "run", task=task)
    with pytest.raises(SystemExit) as e:
        main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--json"])
    assert e.value.code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("method", "n_states", "n_states_raw", "fidelity", "accuracy", "equivalent_to_task",
                "counterexample", "interchange_accuracy", "seconds"):
        assert key in report
    assert report["equivalent_to_task"] is True and report["n_states"] == 4
    for name in ("fsm.json", "fsm.graphml", "fsm.dot", "figures.html", "extraction.json"):
        assert (tmp_path / "x" / name).is_file()
    with pytest.raises(SystemExit) as e:
        main(["extract", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "y"), "--hook", "bad"])
    assert e.value.code == 2
    assert "unknown hook site" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the old spelling names the new one
        main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "y"), "--site", "layers.0.hook_h"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "use --hook layers.0.hook_h" in err and len(err.splitlines()) == 1


def test_lstar_time_limit_also_stops_the_table_closing(monkeypatch) -> None:
    """Closing L*'s table can take many rows (here a compiled C_50, 50 labels): the time limit
    ends the closing too, not only the rounds (a clock that advances one second per reading)."""
    import importlib
    import types

    from fsm_probe.models.compiled import compile_rnn

    lstar_module = importlib.import_module("fsm_probe.extraction.lstar")
    a = get_task("cyclic:n=50").automaton
    model = compile_rnn(a)
    full = lstar(model, a.alphabet, a.labels, max_states=1000, time_limit=10**6)
    assert full.complete and full.automaton.n_states == 50
    clock = iter(range(10**6))
    monkeypatch.setattr(lstar_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    res = lstar(model, a.alphabet, a.labels, max_states=1000, time_limit=5)
    assert not res.complete and res.rounds == 1 and res.automaton.n_states < 10

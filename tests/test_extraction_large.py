"""Clustering in a metric that ignores what the network's outputs do not read."""

import json

import numpy as np

from fsm_probe.extraction import purity
from fsm_probe.extraction.abstraction import KMeansAbstraction, MetricReducer, Reducer


def _states_hidden_by_noise(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five states 1 apart along two relevant axes, rotated into 40 dims whose other 38 carry
    noise ten times larger; the metric weights the two relevant axes."""
    rng = np.random.default_rng(seed)
    states = rng.integers(0, 5, 4000)
    angle = 2 * np.pi * states / 5
    x = np.zeros((len(states), 40))
    x[:, 0], x[:, 1] = np.cos(angle), np.sin(angle)
    x[:, 2:] = 10 * rng.standard_normal((len(states), 38))
    rot, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    metric = np.zeros((40, 40))
    metric[0, 0] = metric[1, 1] = 1.0
    return x @ rot, rot.T @ metric @ rot, states


def test_metric_reducer_recovers_states_the_raw_geometry_mixes() -> None:
    x, metric, states = _states_hidden_by_noise()
    raw = KMeansAbstraction(5, seed=0).fit(Reducer("auto").fit_transform(x)).labels_
    z = MetricReducer(metric).fit(x).transform(x)
    weighted = KMeansAbstraction(5, seed=0).fit(z).labels_
    assert purity(raw, states)["purity"] < 0.6
    assert purity(weighted, states)["purity"] == 1.0


def test_metric_reducer_keeps_the_total_variance_and_top_axes() -> None:
    x, metric, _ = _states_hidden_by_noise(1)
    red = MetricReducer(metric, n_components=2).fit(x)
    z = red.transform(x)
    assert z.shape == (len(x), 2)
    full = MetricReducer(metric).fit(x).transform(x)
    np.testing.assert_allclose(full.var(0).sum(), (x - x.mean(0)).var(0).sum() * len(x) / len(x), rtol=1e-6)


def test_cli_extract_takes_the_geometry(tmp_path) -> None:
    """`fsm-probe extract --geometry sensitivity` runs the metric's extraction; a wrong value is
    one readable line and exit code 2."""
    from typer.testing import CliRunner

    from fsm_probe import get_task, save
    from fsm_probe.cli import app
    from fsm_probe.models.compiled import compile_rnn

    task = get_task("parity")
    run_dir = tmp_path / "run"
    save(compile_rnn(task.automaton), run_dir, task=task)
    ok = CliRunner().invoke(app, ["extract", str(run_dir), "--out", str(tmp_path / "x"), "--geometry", "sensitivity", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["equivalent_to_task"] is True
    bad = CliRunner().invoke(app, ["extract", str(run_dir), "--out", str(tmp_path / "y"), "--geometry", "cosine"])
    assert bad.exit_code == 2 and "geometry must be one of auto, euclidean, sensitivity" in bad.output


def test_auto_geometry_reruns_only_a_timed_out_finite_search_and_keeps_it_at_the_target(monkeypatch) -> None:
    """"auto": Euclidean first; the sensitivity metric only when that search ran out of time
    below the target and the network was not found to count, from the same collection, and kept
    only if it reaches the target (else everything the first search set is restored)."""
    import fsm_probe.extraction.estimator as E
    from fsm_probe import get_task
    from fsm_probe.models.compiled import compile_rnn

    task = get_task("parity")
    net = compile_rnn(task.automaton)
    calls: list[tuple[str, int]] = []

    def run(outcome, counts=False):
        calls.clear()

        def fit_clusters(self, model, name):
            calls.append((self.geometry_, id(self.collection_)))
            for k in ("capped_", "curve_", "votes_", "reducer_", "built_", "automaton_", "n_states_raw_"):
                setattr(self, k, f"{self.geometry_}:{k}")
            self.collection_ = object()  # a search replaces the collection with the one it chose
            self.fidelity_, capped = outcome[self.geometry_]
            self.capped_ = {"limit": "time_limit", "value": 1.0} if capped else None

        def describe(self, model, task, truth):
            self.finite_state_ = not (counts and self.geometry_ == "euclidean")
            self.n_states_ = f"{self.geometry_}:described"

        monkeypatch.setattr(E.FSMExtractor, "_fit_clusters", fit_clusters)
        monkeypatch.setattr(E.FSMExtractor, "_describe", describe)
        return E.FSMExtractor(n_words=8, length=5, n_val=8, val_length=5).fit(net, task)

    ex = run({"euclidean": (0.8, True), "sensitivity": (0.9995, False)})
    assert [g for g, _ in calls] == ["euclidean", "sensitivity"] and calls[0][1] == calls[1][1]
    assert ex.geometry_ == "sensitivity" and ex.fidelity_ == 0.9995 and ex.reducer_ == "sensitivity:reducer_"
    assert ex.n_states_ == "sensitivity:described"
    ex = run({"euclidean": (0.8, True), "sensitivity": (0.9, False)})  # better, still below the target
    assert ex.geometry_ == "euclidean" and ex.fidelity_ == 0.8 and ex.reducer_ == "euclidean:reducer_"
    assert ex.capped_ == {"limit": "time_limit", "value": 1.0} and ex.n_states_ == "euclidean:described"
    for outcome, counts in [({"euclidean": (0.8, False)}, False),  # not out of time
                            ({"euclidean": (0.9995, True)}, False),  # at the target
                            ({"euclidean": (0.8, True)}, True)]:  # a counter machine was found
        ex = run(outcome, counts)
        assert [g for g, _ in calls] == ["euclidean"] and ex.geometry_ == "euclidean"

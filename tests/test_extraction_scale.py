"""Extraction at any size (no fixed state cap, the cap reported when one is set) and counter
machines for networks that are not finite-state, on compiled RNNs (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsm_probe.automata import Automaton
from fsm_probe.automata.counter import CounterMachine, anbn, dyck1, majority
from fsm_probe.cli import main
from fsm_probe.errors import AutomatonError, ConfigError
from fsm_probe.extraction import FSMExtractor, check_extraction, save_extraction, search
from fsm_probe.extraction.counters import (
    balanced_agreement,
    fit_control_merged,
    fit_control_refined,
)
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import get_task
from fsm_probe.training.checkpoint import save


def random_automaton(n: int, k: int, n_labels: int, seed: int) -> Automaton:
    """A random automaton whose every state is reachable and distinct."""
    rng = np.random.default_rng(seed)
    while True:
        table = rng.integers(0, n, (n, k))
        a = Automaton([str(i) for i in range(k)], [f"q{i}" for i in range(n)], 0, table,
                      rng.integers(0, n_labels, n).tolist(), [f"l{i}" for i in range(n_labels)], "r")
        if a.trim().minimize().n_states == n:
            return a


@pytest.mark.parametrize("n, k", [(24, 3), (45, 3)])
def test_no_cap_on_large_random_automata(n: int, k: int) -> None:
    a = random_automaton(n, k, 4, seed=n)
    ex = FSMExtractor(empty_output="network").fit(compile_rnn(a), a)
    assert ex.automaton_.isomorphism(a.minimize()) is not None  # more than the old cap of 20
    assert ex.capped_ is None and ex.finite_state_


def test_kmeans_growth_past_64(monkeypatch) -> None:
    # without the exact-repeat shortcut and refinement, k-means alone needs a cluster per
    # (state, last symbol) unit of the compiled RNN: the sweep must grow past its table's 64
    monkeypatch.setattr(search, "UNIQUE_MAX", 0)
    a = random_automaton(45, 3, 3, seed=3)
    ex = FSMExtractor(empty_output="network", retry_length=None, refine=False, time_limit=60).fit(
        compile_rnn(a), a
    )
    assert ex.automaton_.isomorphism(a.minimize()) is not None
    sizes = [c["size"] for c in ex.curve_]
    assert sizes == sorted(sizes) and sizes[-1] > 64


def test_cap_is_reported(tmp_path, capsys) -> None:
    a = random_automaton(30, 3, 4, seed=1)
    model = compile_rnn(a)
    ex = FSMExtractor(empty_output="network", max_states=12, retry_length=None).fit(model, a)
    assert ex.n_states_ <= 12
    assert ex.capped_ == {"limit": "max_states", "value": 12}
    report = check_extraction(model, ex, a, lengths=(30,))
    assert report["capped"] is True and report["cap"]["value"] == 12
    assert report["equivalent_to_task"] is False
    task = get_task("tomita3")
    run = tmp_path / "run"
    save(compile_rnn(task.automaton), run, task=task)
    with pytest.raises(SystemExit) as e:
        main(["extract", str(run), "--out", str(tmp_path / "x"), "--max-states", "2"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "capped" in out and "--max-states = 2" in out
    saved = json.loads((tmp_path / "x" / "extraction.json").read_text())
    assert saved["capped"] is True and saved["finite_state"] is True
    with pytest.raises(ConfigError, match="max_states"):
        FSMExtractor(max_states=0).fit(model, a)


@pytest.mark.parametrize("machine", [dyck1, majority, anbn])
def test_counter_machine_definitions(machine) -> None:
    m = machine()
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 2, (300, 40))
    # the truncation is the machine on words up to max_count symbols
    np.testing.assert_array_equal(m.truncate(40).run_outputs(tok), m.run_outputs(tok))
    assert CounterMachine.from_dict(json.loads(json.dumps(m.to_dict()))).to_dict() == m.to_dict()
    # against a direct definition of each language
    words = ["".join(m.alphabet[i] for i in row) for row in tok[:50]]
    for w, labels in zip(words, m.run_outputs(tok[:50]), strict=True):
        for t in range(1, len(w) + 1):
            p = w[:t]
            if m.name == "dyck1":
                depths = np.cumsum([1 if c == "(" else -1 for c in p])
                want = "invalid" if depths.min() < 0 else ("balanced" if depths[-1] == 0 else "open")
            elif m.name == "majority":
                d = p.count("1") - p.count("0")
                want = "1" if d > 0 else "0" if d < 0 else "tie"
            else:
                n = len(p) // 2
                want = "yes" if len(p) % 2 == 0 and p == "a" * n + "b" * n else "no"
            assert m.labels[labels[t - 1]] == want, (p, want)


def test_counter_machine_errors() -> None:
    m = dyck1()
    with pytest.raises(AutomatonError, match="token ids"):
        m.run_outputs(np.array([[0, 2]]))
    with pytest.raises(AutomatonError, match="max_count"):
        m.truncate(0)
    with pytest.raises(AutomatonError, match="transitions"):
        CounterMachine(m.alphabet, m.labels, m.states, 0, m.transitions[:, :, :2], m.outputs, m.updates)


def test_control_fit_recovers_dyck_from_labels() -> None:
    m = dyck1()
    tok = np.concatenate([get_task("dyck1").sampler.sample(np.random.default_rng(1), 300, 30),
                          np.random.default_rng(2).integers(0, 2, (300, 30))])
    labels = np.concatenate([np.full((len(tok), 1), -1), m.run_outputs(tok)], 1).reshape(-1)
    fit = fit_control_refined(tok, labels, np.array([[1, -1]]), m.alphabet, m.labels)
    test = get_task("dyck1").sampler.sample(np.random.default_rng(3), 200, 120)  # 4x longer
    np.testing.assert_array_equal(fit.run_outputs(test), m.run_outputs(test))
    assert fit.n_states == 3


def _anbn_words(n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([get_task("anbn").sampler.sample(rng, n, length), rng.integers(0, 2, (n, length))])


def test_control_fit_merged_recovers_anbn_from_labels() -> None:
    # refinement splits on one observed successor per row and does not converge on a^n b^n
    # (as / bs / yes / dead); merging on the prefix tree identifies the 4-state control
    m = anbn()
    tok = _anbn_words(256, 40, seed=1)
    labels = np.concatenate([np.full((len(tok), 1), -1), m.run_outputs(tok)], 1)
    fit = fit_control_merged(tok, labels.reshape(-1), np.array([[1, -1]]), m.alphabet, m.labels)
    assert fit is not None and fit.n_states == 4
    test = get_task("anbn").sampler.sample(np.random.default_rng(3), 300, 160)  # 4x longer
    np.testing.assert_array_equal(fit.run_outputs(test), m.run_outputs(test))
    assert (m.run_outputs(test) == 1).sum() > 30  # the rare `yes` positions are in the test
    # a network wrong on a few long words: the first halves of the words still give the control
    noisy = labels.copy()
    noisy[:: 37, 30] = 1 - noisy[:: 37, 30]
    fit = fit_control_merged(tok, noisy.reshape(-1), np.array([[1, -1]]), m.alphabet, m.labels)
    assert fit is not None and fit.n_states == 4
    np.testing.assert_array_equal(fit.run_outputs(test), m.run_outputs(test))


def test_balanced_agreement_weighs_labels_equally() -> None:
    labels = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 1, -1]])
    pred = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]])
    assert balanced_agreement(pred, labels) == pytest.approx((1.0 + 0.5) / 2)
    assert balanced_agreement(labels.clip(0), labels) == 1.0


@pytest.mark.parametrize("name", ["dyck1", "majority", "anbn"])
def test_counter_network_is_reported_as_counter_machine(name: str, tmp_path) -> None:
    # a compiled RNN of the counter machine truncated at 100 counts: on the sampled lengths its
    # state keeps growing with length, and the counter machine extrapolates beyond them
    task = get_task(name)
    model = compile_rnn(task.automaton)
    ex = FSMExtractor(time_limit=6).fit(model, task)
    assert not ex.finite_state_
    cm = ex.counter_machine_
    assert cm.n_counters == 1 and sorted(np.abs(cm.updates[:, 0]).tolist()) == [1, 1]
    truth = task.automaton
    tok = task.sampler.sample(np.random.default_rng(5), 200, 90)
    np.testing.assert_array_equal(cm.run_outputs(tok), truth.run_outputs(tok))
    report = check_extraction(model, ex, task, lengths=(50,))
    assert report["finite_state"] is False
    assert report["counter_machine"]["fidelity"] >= 0.99 and report["counter_machine"]["n_counters"] == 1
    paths = save_extraction(tmp_path, ex, report)
    again = CounterMachine.from_dict(json.loads(paths["counter_machine.json"].read_text()))
    np.testing.assert_array_equal(again.run_outputs(tok), cm.run_outputs(tok))


@pytest.mark.parametrize("name", ["gridworld", "parity", "cyclic:n=7", "flipflop"])
def test_finite_state_networks_are_not_counters(name: str) -> None:
    task = get_task(name)
    ex = FSMExtractor().fit(compile_rnn(task.automaton), task)
    assert ex.finite_state_ and ex.counter_machine_ is None


def test_gru_recipe_grows_with_size() -> None:
    from fsm_probe.training.recipes_size import gru_recipe

    small, large, wide = gru_recipe(4, 2), gru_recipe(60, 4), gru_recipe(19, 19)
    assert small["d_hidden"] <= large["d_hidden"] <= wide["d_hidden"]
    assert wide["max_steps"] >= large["max_steps"] and wide["batch_size"] >= large["batch_size"]
    assert set(small) == {"d_hidden", "lr", "max_steps", "batch_size"}
    with pytest.raises(ConfigError, match="n_symbols"):
        gru_recipe(3, 0)


@pytest.mark.slow
def test_cli_extract_finds_the_counter_of_a_compiled_dyck1_rnn(tmp_path, capsys) -> None:
    """The CLI extracts with the library's defaults (`--components auto`): a counter network gets
    its counter machine (with 10 PCA axes it passed as a 14-state automaton)."""
    task = get_task("dyck1")
    save(compile_rnn(task.automaton), tmp_path / "run", task=task)
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "x" / "extraction.json").read_text())
    assert report["finite_state"] is False and (tmp_path / "x" / "counter_machine.json").is_file()
    for bad in ("0", "1.5", "many"):
        with pytest.raises(SystemExit) as exc:
            main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "y"), "--components", bad])
        assert exc.value.code == 2 and "--components" in capsys.readouterr().err


def test_counter_candidates_equal_the_brute_force_and_scale_to_many_symbols():
    """Built from their supports, the candidates are the filtered {-1, 0, 1}^k in the same order;
    a 19-symbol alphabet gets its C(19,1) + 2 C(19,2) + 4 C(19,3) = 4237 (3^19 is 10^9)."""
    import itertools
    from math import comb

    from fsm_probe.extraction.counters import candidate_weights

    for k in range(1, 7):
        for most in (1, 2, 3):
            brute = [w for w in itertools.product((-1, 0, 1), repeat=k)
                     if any(w) and [x for x in w if x][0] == 1 and sum(map(bool, w)) <= most]
            np.testing.assert_array_equal(candidate_weights(k, most), np.array(brute).reshape(-1, k))
    big = candidate_weights(19)
    assert big.shape == (sum(comb(19, m) * 2 ** (m - 1) for m in (1, 2, 3)), 19) == (4237, 19)
    assert len({tuple(w) for w in big}) == 4237

import json

import numpy as np
import pytest

from fsm_probe import Automaton, ConfigError, ModelConfig, build_model, get_task
from fsm_probe.circuits.probes import fit_probe, probe_model, probe_targets, split_groups
from fsm_probe.tasks import task_from_automaton
from fsm_probe.tasks.datasets import eval_set

PARITY = get_task("parity")


def test_separable_features_give_perfect_probes_and_random_labels_give_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1500)
    x = np.eye(4)[y] * 3 + rng.normal(0, 0.3, (1500, 4))
    for kind in ("logistic", "ridge"):
        fit = fit_probe(x, y, kind=kind)
        assert fit.accuracy == 1.0 and fit.n_classes == 4
    noise = rng.normal(size=(1500, 8))
    fit = fit_probe(noise, rng.integers(0, 2, 1500))
    assert abs(fit.accuracy - 0.5) < 0.08
    assert abs(fit.chance - 0.5) < 0.08


def test_split_by_group_never_shares_a_sequence():
    groups = np.repeat(np.arange(20), 7)
    test = split_groups(groups, 0.3, seed=1)
    assert not set(groups[test]) & set(groups[~test])
    assert len(set(groups[test])) == 6
    with pytest.raises(ConfigError):
        split_groups(groups, 1.5, 0)


def test_targets_against_the_automaton():
    batch = eval_set(PARITY, 10, n=50)
    t = probe_targets(PARITY, batch, moduli=(2, 3))
    np.testing.assert_array_equal(t["count[1] mod 2"], batch.states)
    np.testing.assert_array_equal(t["count[0]"] + t["count[1]"], t["position"] + 1)
    assert "label" not in t
    a = Automaton(["a", "b"], ["s0", "s1", "s2"], "s0", [[1, 0], [2, 1], [0, 2]], outputs=[0, 1, 1])
    task = task_from_automaton(a)
    t2 = probe_targets(task, eval_set(task, 6, n=8), moduli=())
    assert set(t2) == {"state", "label", "count[a]", "count[b]", "position"}
    np.testing.assert_array_equal(t2["label"], a.outputs[t2["state"]])


def test_probe_model_finds_position_in_the_embedding_but_not_parity():
    cfg = ModelConfig("transformer", 2, 2, n_layers=1, d_hidden=32, n_heads=2, n_ctx=16)
    model = build_model(cfg).eval()
    res = probe_model(model, PARITY, length=8, n=200, max_samples=1200, moduli=(2,))
    assert res.sites == ["embed", "L0.mid", "L0.post"]
    pos, state = res.targets.index("position"), res.targets.index("state")
    assert res.accuracy[0, pos] == 1.0
    assert res.accuracy[0, state] < 0.7
    assert res.best_site("position") == "embed" and res.first_site("position") == "embed"
    json.dumps(res.to_dict())


def test_lstm_probes_include_the_cell_state():
    model = build_model(ModelConfig("lstm", 2, 2, d_hidden=8)).eval()
    res = probe_model(model, PARITY, length=5, n=40, kind="ridge", targets={"state": eval_set(PARITY, 5, n=40).states})
    assert res.sites == ["embed", "L0.h", "L0.c"] and res.targets == ["state"]
    with pytest.raises(ConfigError):
        probe_model(model, PARITY, kind="svm")

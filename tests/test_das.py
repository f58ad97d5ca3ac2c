"""Distributed alignment search: subspace IIA against a restart from a hand-mixed state, a known
state subspace of a compiled RNN, a learned subspace of a trained GRU against random ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsm_probe.circuits.causal_abstraction import interchange_intervention_accuracy
from fsm_probe.circuits.das import DASResult, das, default_ks
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import eval_set
from fsm_probe.training import TrainConfig, train

LENGTH, N = 8, 24


def _random_basis(k, dim, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, k)))
    return q.T.astype(np.float32)


def _state_basis(automaton):
    """compile_rnn's hidden unit (s, a) is +1 in state s after symbol a: the state lives in the
    span of sum_a e_(s, a), one direction per state (the flag unit and the last symbol aside)."""
    n, k = automaton.n_states, automaton.n_symbols
    q = np.zeros((n, n * k + 1), dtype=np.float32)
    for s in range(n):
        q[s, s * k : (s + 1) * k] = 1 / np.sqrt(k)
    return q


def test_subspace_iia_equals_a_restart_from_the_mixed_state():
    """An LSTM site is h and c together: mix [h, c] in a random 3-dim subspace by hand, restart
    the model from it, and score the counterfactual step by step."""
    task = get_task("cyclic:n=3")
    model = build_model(ModelConfig("lstm", 2, 3, d_hidden=6, seed=4)).eval()
    q = _random_basis(3, 12, 0)
    res = interchange_intervention_accuracy(model, task, LENGTH, n=N, max_positions=LENGTH, basis=q)
    a = task.automaton
    base = eval_set(task, LENGTH, n=N, seed=101, final_only=False).tokens
    source = eval_set(task, LENGTH, n=N, seed=202, final_only=False).tokens
    qt = torch.as_tensor(q)
    for j, t in enumerate(res.positions[:-1]):
        keep = a.run(source)[:, t] != a.run(base)[:, t]
        with torch.no_grad():
            _, s = model(torch.as_tensor(source[keep, : t + 1]), return_state=True)
            _, b = model(torch.as_tensor(base[keep, : t + 1]), return_state=True)
            flat_b = torch.cat([b["layers.0.hook_h"], b["layers.0.hook_c"]], 1)
            flat_s = torch.cat([s["layers.0.hook_h"], s["layers.0.hook_c"]], 1)
            mixed = flat_b + (flat_s - flat_b) @ qt.T @ qt
            state = {"layers.0.hook_h": mixed[:, :6], "layers.0.hook_c": mixed[:, 6:]}
            pred = torch.cat([model.unembed(state["layers.0.hook_h"])[:, None],
                              model(torch.as_tensor(base[keep, t + 1 :]), state=state)], 1).argmax(-1).numpy()
        right = []
        for row, (bb, ss) in enumerate(zip(base[keep], source[keep], strict=True)):
            st = a.run(ss[None])[0, t]
            labels = [a.outputs[st]]
            for sym in bb[t + 1 :]:
                st = a.transitions[st, sym]
                labels.append(a.outputs[st])
            right.append(pred[row] == np.array(labels))
        right = np.array(right)
        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx((right.mean(), right[:, 0].mean()), abs=1e-12)


def test_compiled_rnn_state_lives_in_its_state_subspace():
    task = get_task("cyclic:n=3")
    model = compile_rnn(task.automaton)
    exact = interchange_intervention_accuracy(model, task, 10, n=64, basis=_state_basis(task.automaton))
    assert np.nanmin(exact.iia) == 1.0
    dim = model.cfg.d_hidden
    for seed in range(3):  # a random direction carries next to nothing of the state
        rand = interchange_intervention_accuracy(model, task, 10, n=64, basis=_random_basis(1, dim, seed))
        assert np.nanmean(rand.iia) < 0.6


@pytest.mark.parametrize("arch, fields, dim", [
    ("rmt", {}, 8),                                                   # 1 memory vector of 8
    ("compressive", {"n_memory": 2, "n_compressed": 2, "compression_rate": 2}, 32),   # (2 + 2) x 8
    ("hmt", {"n_memory": 3}, 24),                                     # a cache of 3 x 8
])
def test_full_k_is_the_whole_vector_swap(arch, fields, dim):
    """k = D swaps everything: DAS's IIA is the whole-vector IIA, value for value (the memory of
    each segment memory model, whatever its shape)."""
    task = get_task("parity")
    model = build_model(ModelConfig(arch, 2, 2, d_hidden=8, n_heads=2, segment_length=2, n_ctx=64, seed=3, **fields))
    res = das(model, task, k=dim, length=10, n_test=N, n_train=16)
    assert res.dim == dim
    whole = interchange_intervention_accuracy(model, task, 10, n=N)
    assert res.site == "hook_memory" and res.unit == "segment"
    np.testing.assert_array_equal(res.iia[0], whole.iia[0])
    np.testing.assert_array_equal(res.iia_local[0], whole.iia_local[0])
    assert res.whole == pytest.approx(float(np.nanmean(whole.iia[0])))


@pytest.mark.slow
def test_das_finds_a_trained_grus_state_in_few_dimensions():
    task = get_task("cyclic:n=3")
    run = train(task, ModelConfig("gru", 2, 3, d_hidden=16, seed=0),
                TrainConfig(train_lengths=(1, 12), max_steps=600, lr=1e-2, seed=0), progress=False)
    assert run.learned
    res = das(run.model, task, site="layers.0", k=[1, 2, 3], length=12, steps=150)
    score = res.score()
    assert res.dimension is not None and res.dimension <= 3 and score[res.dimension] >= 0.99
    assert res.bases[2].shape == (2, 16)
    q = torch.as_tensor(res.bases[2])
    assert torch.allclose(q @ q.T, torch.eye(2), atol=1e-4)
    random = das(run.model, task, site="layers.0", k=1, length=12, steps=0)
    assert random.score()[1] < 0.5  # an untrained direction: the swap barely moves the state


def test_a_subspace_without_the_state_has_low_iia():
    """compile_rnn's directions e_(s, a) - e_(s, b) carry the last symbol, not the state: swapping
    them leaves the base's state, so the outputs follow the base (IIA 0 on cyclic C_3, whose
    labels are its states), and a random direction of that subspace does no better."""
    task = get_task("cyclic:n=3")
    model = compile_rnn(task.automaton)
    q = np.zeros((3, 7), dtype=np.float32)
    for s in range(3):
        q[s, 2 * s], q[s, 2 * s + 1] = np.sqrt(0.5), -np.sqrt(0.5)
    res = interchange_intervention_accuracy(model, task, 10, n=64, basis=q)
    assert np.nanmax(res.iia) == 0.0
    one = (np.random.default_rng(0).normal(size=(1, 3)) @ q).astype(np.float32)
    one /= np.linalg.norm(one)
    assert np.nanmax(interchange_intervention_accuracy(model, task, 10, n=64, basis=one).iia) == 0.0


def test_to_dict_round_trip_and_automaton_input():
    task = get_task("parity")
    model = compile_rnn(task.automaton)
    res = das(model, task.automaton, k=[1, 5], length=LENGTH, n_train=32, n_test=N, steps=3)
    assert res.ks == [1, 5] and res.dim == 5 and res.hooks == ["layers.0.hook_h"]
    d = json.loads(json.dumps(res.to_dict()))
    back = DASResult.from_dict(d)
    assert back.to_dict() == d
    np.testing.assert_array_equal(back.iia, res.iia)
    np.testing.assert_array_equal(back.bases[1], res.bases[1])
    assert d["dimension"] == res.dimension and set(d["score"]) == {"1", "5"}


def test_default_ks():
    assert default_ks(2, 16) == [1, 2]
    assert default_ks(5, 16) == [1, 3, 4, 5]
    assert default_ks(6, 4) == [1, 3, 4]


def test_bad_site_and_k():
    task = get_task("parity")
    model = build_model(ModelConfig("gru", 2, 2, d_hidden=4, n_layers=2))
    with pytest.raises(InputError, match=r"unknown DAS site 'layers\.5'.*'layers\.0', 'layers\.1', 'layers'"):
        das(model, task, site="layers.5")
    with pytest.raises(InputError, match=r"k must lie in 1\.\.4"):
        das(model, task, site="layers.0", k=9)
    with pytest.raises(InputError, match="orthonormal"):
        interchange_intervention_accuracy(model, task, 5, sites=["layers.0"], basis=np.ones((1, 4)))
    with pytest.raises(InputError, match="one site"):
        interchange_intervention_accuracy(model, task, 5, basis=np.eye(4)[:1])

"""automata.algorithms and automata.convert as functions: agreement with the Automaton methods,
and properties (trim, power, equivalence vs minimization, JSON files, counter machines)."""

import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_automata import automata

from fsm_probe.automata import (
    Automaton,
    CounterMachine,
    anbn,
    convert,
    dyck1,
    majority,
    segment_tokens,
)
from fsm_probe.automata import algorithms as alg


@settings(max_examples=40, deadline=None)
@given(automata(), automata())
def test_functions_agree_with_methods(a, b):
    assert alg.reachable(a).tolist() == a.reachable().tolist()
    assert alg.trim(a) == a.trim()
    assert alg.minimize(a) == a.minimize()
    assert alg.is_minimal(a) == a.is_minimal()
    assert alg.power(a, 2) == a.power(2)
    assert convert.to_dict(a) == a.to_dict()
    assert convert.from_dict(a.to_dict()) == Automaton.from_dict(a.to_dict())
    assert convert.from_networkx(convert.to_networkx(a)) == a
    if set(a.alphabet) == set(b.alphabet):
        assert alg.equivalent(a, b) == a.equivalent(b)
        assert alg.isomorphism(a, b) == a.isomorphism(b)


@settings(max_examples=60, deadline=None)
@given(automata())
def test_trim_keeps_the_reachable_states_in_order_and_the_language(a):
    t = a.trim()
    assert t.equivalent(a) is None
    assert list(t.states) == [a.states[i] for i in sorted(a.reachable())]
    assert len(t.reachable()) == t.n_states
    assert t.trim() == t


@settings(max_examples=60, deadline=None)
@given(automata(max_states=5, max_symbols=3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_power_agrees_with_running_the_word(a, length, seed):
    p = alg.power(a, length)
    x = np.random.default_rng(seed).integers(0, a.n_symbols, size=(8, 4 * length))
    seg = segment_tokens(x, a.n_symbols, length)
    names = np.array(a.states)[a.run(x)[:, length - 1 :: length]]
    assert (np.array(p.states)[p.run(seg)] == names).all()
    labels = np.array(a.labels)[a.run_outputs(x)][:, length - 1 :: length]
    assert (np.array(p.labels)[p.run_outputs(seg)] == labels).all()


@settings(max_examples=40, deadline=None)
@given(automata(max_states=5, max_symbols=2))
def test_power_composes(a):
    twice, four = a.power(2).power(2), a.power(4)
    assert twice.states == four.states and twice.start == four.start
    assert np.array_equal(twice.transitions, four.transitions)


@settings(max_examples=80, deadline=None)
@given(automata(max_states=4, max_symbols=2), automata(max_states=4, max_symbols=2))
def test_equivalent_iff_minimal_automata_are_isomorphic(a, b):
    if a.alphabet != b.alphabet:
        return
    a_min = a.minimize().relabel_states([f"a{i}" for i in range(a.minimize().n_states)])
    b_min = b.minimize()
    same = a.equivalent(b) is None
    assert same == (a_min.isomorphism(b_min) is not None)
    assert same == (b.equivalent(a) is None)


@settings(max_examples=30, deadline=None)
@given(automata())
def test_json_file_roundtrip(a):
    with tempfile.TemporaryDirectory() as tmp:
        path = convert.save_json(a, Path(tmp) / "a.json")
        assert convert.load_json(path) == a
        b, doc = convert.read_json(path)
        assert b == a and doc == json.loads(path.read_text())


@pytest.mark.parametrize("build", [dyck1, majority, anbn])
def test_counter_machine_roundtrip_sizes_and_truncation(build):
    m = build()
    assert CounterMachine.from_dict(json.loads(json.dumps(m.to_dict()))).to_dict() == m.to_dict()
    assert (m.n_states, m.n_symbols, m.n_labels) == (len(m.states), len(m.alphabet), len(m.labels))
    t = m.truncate(4)
    words = np.array(list(itertools.product(range(m.n_symbols), repeat=4)))
    names = np.array(m.labels)[m.run_outputs(words)]
    assert (np.array(t.labels)[t.run_outputs(words)] == names).all()


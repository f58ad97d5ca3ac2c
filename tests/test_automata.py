"""Automaton: validation, running, minimization, equivalence, isomorphism, serialization."""

import itertools
import json

import networkx as nx
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fsm_probe.automata import Automaton
from fsm_probe.errors import AutomatonError, InputError


def mod3() -> Automaton:
    return Automaton.from_dict(
        {
            "name": "mod3",
            "alphabet": ["a", "b"],
            "states": ["s0", "s1", "s2"],
            "start": "s0",
            "transitions": {
                "s0": {"a": "s1", "b": "s0"},
                "s1": {"a": "s2", "b": "s1"},
                "s2": {"a": "s0", "b": "s2"},
            },
            "outputs": {"s0": "0", "s1": "1", "s2": "2"},
        }
    )


@st.composite
def automata(draw, max_states=6, max_symbols=3, max_labels=3):
    n = draw(st.integers(1, max_states))
    k = draw(st.integers(1, max_symbols))
    n_labels = draw(st.integers(1, max_labels))
    table = draw(
        st.lists(st.lists(st.integers(0, n - 1), min_size=k, max_size=k), min_size=n, max_size=n)
    )
    outputs = draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n))
    start = draw(st.integers(0, n - 1))
    return Automaton(
        [chr(ord("a") + j) for j in range(k)],
        [f"s{i}" for i in range(n)],
        start,
        table,
        outputs,
        [f"L{i}" for i in range(n_labels)],
    )


def words(alphabet, max_len):
    for length in range(max_len + 1):
        yield from itertools.product(alphabet, repeat=length)


def brute_force_size(a: Automaton) -> int:
    """Myhill-Nerode: number of distinct residual output functions over prefixes/suffixes."""
    n = a.n_states
    suffixes = list(words(a.alphabet, n))
    residuals = {
        tuple(a.output_of(list(p) + list(u)) for u in suffixes) for p in words(a.alphabet, n)
    }
    return len(residuals)


def test_basic_properties_and_run():
    a = mod3()
    assert (a.n_states, a.n_symbols, a.n_labels) == (3, 2, 3)
    assert a.transitions.dtype == np.int64 and not a.transitions.flags.writeable
    with pytest.raises(ValueError):
        a.transitions[0, 0] = 2
    x = a.encode("abaab")
    assert x.tolist() == [0, 1, 0, 0, 1]
    assert a.decode(x) == list("abaab")
    assert a.run(x).tolist() == [1, 1, 2, 0, 0]
    batch = np.stack([x, x[::-1]])
    assert a.run(batch).shape == (2, 5)
    assert a.run(batch)[1].tolist() == a.run(x[::-1]).tolist()
    assert a.run_outputs(batch).tolist() == a.outputs[a.run(batch)].tolist()
    assert a.run(x, start="s1").tolist() == [2, 2, 0, 1, 1]
    assert a.output_of("") == 0 and a.output_of([]) == 0
    assert a.output_of("aa") == 2 and a.state_after(["a"]) == 1
    assert "mod3" in repr(a)


def test_run_empty_length():
    a = mod3()
    assert a.run(np.zeros((3, 0), dtype=np.int64)).shape == (3, 0)


def test_multichar_symbols_split_on_whitespace():
    a = Automaton(["go", "stop"], ["x"], 0, [[0, 0]])
    assert a.encode("go stop go").tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "bad, match",
    [
        ([-1, 0], "token id -1"),
        ([0, 2], "token id 2"),
        (np.array([0.5]), "integer"),
    ],
)
def test_bad_tokens(bad, match):
    with pytest.raises(InputError, match=match):
        mod3().run(bad)


def test_encode_unknown_symbol():
    with pytest.raises(InputError, match="'c' at position 2"):
        mod3().encode("abc")


def test_run_bad_shape():
    with pytest.raises(InputError, match="shape"):
        mod3().run(np.zeros((1, 2, 3), dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alphabet=[]), "alphabet is empty"),
        (dict(alphabet=["a", "a"]), "duplicate entry 'a' in alphabet"),
        (dict(states=["s", "s"]), "duplicate entry 's' in states"),
        (dict(start="nope"), "unknown start state 'nope'"),
        (dict(start=5), "start state index 5"),
        (dict(transitions={"s": {"a": "s"}, "t": {"a": "s", "b": "t"}}), r"missing \('s', 'b'\)"),
        (dict(transitions={"s": {"a": "s", "b": "zz"}, "t": {"a": "s", "b": "t"}}), "'zz'"),
        (
            dict(transitions={"s": {"a": "s", "b": "s", "c": "s"}, "t": {"a": "s", "b": "t"}}),
            "unknown symbol 'c'",
        ),
        (dict(transitions={"s": {"a": "s", "b": "s"}}), "no transitions for state 't'"),
        (
            dict(transitions={"s": {"a": "s", "b": "s"}, "t": {"a": "s", "b": "t"}, "u": {}}),
            "unknown state 'u'",
        ),
        (dict(transitions=[[0, 1]]), "shape"),
        (dict(transitions=[[0, 2], [1, 1]]), "unknown state index 2"),
        (dict(outputs={"s": "x", "zz": "y"}), "unknown state 'zz'"),
        (dict(outputs={"s": "x"}), "no output for state"),
        (dict(outputs=[0, 5], labels=["x", "y"]), "out of range"),
        (dict(outputs=["x", "q"], labels=["x", "y"]), "'q' of state 't'"),
        (dict(outputs=[0]), "1 outputs for 2 states"),
    ],
)
def test_constructor_validation(kwargs, match):
    base = dict(alphabet=["a", "b"], states=["s", "t"], start="s", transitions=[[0, 1], [1, 0]])
    base.update(kwargs)
    with pytest.raises(AutomatonError, match=match):
        Automaton(**base)


def test_dict_roundtrip_and_json(tmp_path):
    a = mod3()
    assert Automaton.from_dict(a.to_dict()) == a
    assert Automaton.from_dict(json.loads(json.dumps(a.to_dict()))).name == "mod3"
    p = a.save_json(tmp_path / "sub" / "a.json")
    b = Automaton.load_json(p)
    assert b == a and b.name == "mod3"
    d = a.to_dict()
    del d["outputs"], d["labels"]
    c = Automaton.from_dict(d)
    assert c.labels == c.states and c.outputs.tolist() == [0, 1, 2]
    d["input_distribution"] = {"a": 0.5, "b": 0.5}
    Automaton.from_dict(d)


def test_label_order_preserved_through_dict():
    a = Automaton(["0"], ["x", "y"], 0, [[1], [1]], ["accept", "accept"], ["reject", "accept"])
    b = Automaton.from_dict(a.to_dict())
    assert b.labels == ("reject", "accept") and b.outputs.tolist() == [1, 1]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("start"), r"lacks key\(s\) \['start'\]"),
        (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda d: d.update(start=0), "'start' must be a state name"),
        (lambda d: d.update(transitions=[1, 2]), "'transitions' must be an object"),
        (lambda d: d["transitions"]["s0"].update(a=1), r"target of \('s0', 'a'\)"),
        (lambda d: d.update(outputs=["0"]), "'outputs' must be an object"),
        (lambda d: d.update(alphabet="ab"), "alphabet must be a list"),
        (lambda d: d["transitions"]["s1"].pop("b"), r"missing \('s1', 'b'\)"),
    ],
)
def test_from_dict_errors(mutate, match):
    d = mod3().to_dict()
    mutate(d)
    with pytest.raises(AutomatonError, match=match):
        Automaton.from_dict(d)


def test_from_dict_not_object():
    with pytest.raises(AutomatonError, match="JSON object"):
        Automaton.from_dict([1, 2])


def test_load_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AutomatonError, match="bad.json.*not valid JSON"):
        Automaton.load_json(bad)
    with pytest.raises(AutomatonError, match="cannot read"):
        Automaton.load_json(tmp_path / "missing.json")
    arr = tmp_path / "arr.json"
    arr.write_text("[1]")
    with pytest.raises(AutomatonError, match="arr.json.*JSON object"):
        Automaton.load_json(arr)


def test_networkx_roundtrip():
    a = mod3()
    g = a.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert (
        g.graph["alphabet"] == ["a", "b"] and g.graph["start"] == "s0" and g.graph["name"] == "mod3"
    )
    assert g.nodes["s0"] == {"output": "0", "start": True}
    assert g.edges["s0", "s1", "a"]["symbol"] == "a"
    assert Automaton.from_networkx(g) == a
    g2 = nx.MultiDiGraph()
    for s, o in [("s0", "0"), ("s1", "1"), ("s2", "2")]:
        g2.add_node(s, output=o, start=s == "s0")
    for u, v, k, d in g.edges(keys=True, data=True):
        g2.add_edge(u, v, key=k, **d)
    b = Automaton.from_networkx(g2)
    assert b.equivalent(a) is None and b.isomorphism(a) is not None


def test_from_networkx_errors():
    g = mod3().to_networkx()
    g.remove_edge("s0", "s1", key="a")
    with pytest.raises(AutomatonError, match=r"missing \('s0', 'a'\)"):
        Automaton.from_networkx(g)
    h = nx.MultiDiGraph()
    h.add_edge("x", "x", key="a", symbol="a")
    with pytest.raises(AutomatonError, match="start"):
        Automaton.from_networkx(h)
    with pytest.raises(AutomatonError, match="MultiDiGraph"):
        Automaton.from_networkx(nx.DiGraph())


def test_trim_and_minimize_example():
    a = Automaton(
        ["0", "1"],
        ["a", "b", "c", "dead"],
        "a",
        [[1, 0], [0, 1], [2, 2], [3, 3]],
        ["x", "x", "y", "y"],
    )
    t = a.trim()
    assert t.states == ("a", "b")
    m = a.minimize()
    assert m.n_states == 1 and m.states == ("q0",) and m.labels == a.labels
    assert not a.is_minimal() and m.is_minimal()


def test_equivalent_requires_same_alphabet():
    a = mod3()
    b = Automaton(["x", "y"], ["s"], 0, [[0, 0]])
    with pytest.raises(AutomatonError, match="alphabets differ"):
        a.equivalent(b)


def test_equivalent_empty_word_and_alphabet_order():
    a = mod3()
    b = a.relabel_states(["p", "q", "r"])
    assert a.equivalent(b) is None
    c = Automaton(["a", "b"], ["s"], 0, [[0, 0]], ["5"])
    assert a.equivalent(c) == []
    swapped = Automaton(
        ["b", "a"], ["s0", "s1", "s2"], 0, a.transitions[:, ::-1], a.outputs, a.labels
    )
    assert a.equivalent(swapped) is None
    assert a.isomorphism(swapped) == {"s0": "s0", "s1": "s1", "s2": "s2"}


def test_isomorphism_detects_mismatch():
    a = mod3()
    b = Automaton(a.alphabet, a.states, 0, a.transitions, [0, 2, 1], a.labels)
    assert a.isomorphism(b) is None
    assert a.equivalent(b) == ["a"]


def test_isomorphism_with_unreachable_states():
    a = Automaton(["0"], ["s", "u", "v"], 0, [[0], [2], [1]], [0, 1, 1])
    b = Automaton(["0"], ["v2", "s2", "u2"], 1, [[2], [1], [0]], [1, 0, 1])
    m = a.isomorphism(b)
    assert m is not None and m["s"] == "s2"


def test_relabel_states():
    a = mod3()
    b = a.relabel_states({"s0": "zero"})
    assert b.states == ("zero", "s1", "s2") and b.labels == a.labels
    with pytest.raises(AutomatonError, match="unknown state"):
        a.relabel_states({"nope": "x"})
    with pytest.raises(AutomatonError, match="2 names for 3 states"):
        a.relabel_states(["x", "y"])


@settings(max_examples=60, deadline=None)
@given(automata(), st.integers(0, 2**31 - 1))
def test_minimize_preserves_language_and_is_idempotent(a, seed):
    m = a.minimize()
    assert a.equivalent(m) is None
    rng = np.random.default_rng(seed)
    x = rng.integers(0, a.n_symbols, size=(16, 12))
    names_a = np.array(a.labels)[a.run_outputs(x)]
    names_m = np.array(m.labels)[m.run_outputs(x)]
    assert (names_a == names_m).all()
    assert m.minimize() == m
    assert m.is_minimal()


@settings(max_examples=40, deadline=None)
@given(automata(max_states=5, max_symbols=2))
def test_minimal_size_matches_myhill_nerode(a):
    assert a.minimize().n_states == brute_force_size(a)


@settings(max_examples=60, deadline=None)
@given(automata(max_states=4, max_symbols=2), automata(max_states=4, max_symbols=2))
def test_equivalent_counterexample_is_shortest(a, b):
    assume(a.alphabet == b.alphabet)
    cex = a.equivalent(b)

    def differs(w):
        return a.labels[a.output_of(list(w))] != b.labels[b.output_of(list(w))]

    short = next((list(w) for w in words(a.alphabet, 8) if differs(w)), None)
    if cex is None:
        assert short is None
    else:
        assert differs(cex)
        assert short is not None and len(cex) == len(short)


@settings(max_examples=60, deadline=None)
@given(automata(), st.randoms(use_true_random=False))
def test_isomorphism_of_permuted_copy(a, rnd):
    perm = list(range(a.n_states))
    rnd.shuffle(perm)
    inv = np.argsort(perm)
    b = Automaton(
        a.alphabet,
        [f"t{i}" for i in range(a.n_states)],
        int(inv[a.start]),
        inv[a.transitions[perm]],
        a.outputs[perm],
        a.labels,
    )
    m = a.isomorphism(b)
    assert m is not None
    si = {s: i for i, s in enumerate(b.states)}
    assert si[m[a.states[a.start]]] == b.start
    for i, s in enumerate(a.states):
        t = si[m[s]]
        assert b.labels[b.outputs[t]] == a.labels[a.outputs[i]]
        for j in range(a.n_symbols):
            assert si[m[a.states[a.transitions[i, j]]]] == b.transitions[t, j]
    assert len(set(m.values())) == a.n_states
    assert a.minimize() == b.minimize()


@settings(max_examples=40, deadline=None)
@given(automata())
def test_serialization_roundtrips(a):
    assert Automaton.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert Automaton.from_networkx(a.to_networkx()) == a

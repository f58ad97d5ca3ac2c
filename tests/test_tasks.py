"""Task zoo: minimal sizes, language definitions, source examples, registry and samplers."""

import itertools
import json
import re

import numpy as np
import pytest

from fsm_probe.errors import AutomatonError, ConfigError, TaskError
from fsm_probe.tasks import (
    CategoricalSampler,
    FlipFlopSampler,
    Sampler,
    Task,
    get_task,
    list_tasks,
    task_from_automaton,
    task_from_file,
)

MINIMAL = {
    "tomita1": 2, "tomita2": 3, "tomita3": 5, "tomita4": 4, "tomita5": 4, "tomita6": 3, "tomita7": 5,
    "parity_check": 2, "cycle_navigation": 5, "even_pairs": 5, "parity": 2,
    "cyclic": 5, "cyclic:n=7": 7, "dihedral": 8, "dihedral:n=5": 10, "quaternion": 8,
    "symmetric": 6, "alternating": 12, "modular_arithmetic": 51, "flipflop": 3, "gridworld": 9,
    "abab": 5, "adder": 4,
}  # fmt: skip


def _tomita3(w: str) -> bool:
    runs = [(m.group()[0], len(m.group())) for m in re.finditer(r"0+|1+", w)]
    for (c1, n1), (c2, n2) in itertools.pairwise(runs):
        if c1 == "1" and n1 % 2 and c2 == "0" and n2 % 2:
            return False
    return True


TOMITA = {
    1: lambda w: re.fullmatch("1*", w) is not None,
    2: lambda w: re.fullmatch("(10)*", w) is not None,
    3: _tomita3,
    4: lambda w: "000" not in w,
    5: lambda w: w.count("0") % 2 == 0 and w.count("1") % 2 == 0,
    6: lambda w: (w.count("0") - w.count("1")) % 3 == 0,
    7: lambda w: re.fullmatch("0*1*0*1*", w) is not None,
}


def all_words(alphabet, max_len):
    for n in range(max_len + 1):
        for w in itertools.product(alphabet, repeat=n):
            yield "".join(w)


@pytest.mark.parametrize("spec, size", MINIMAL.items())
def test_minimal_state_counts(spec, size):
    a = get_task(spec).automaton
    assert a.minimize().n_states == size


@pytest.mark.parametrize("k", range(1, 8))
def test_tomita_languages(k):
    a = get_task(f"tomita{k}").automaton
    assert a.labels == ("reject", "accept")
    ws = list(all_words("01", 10))
    by_len: dict[int, list[str]] = {}
    for w in ws[1:]:
        by_len.setdefault(len(w), []).append(w)
    assert a.labels[a.output_of("")] == "accept"
    for n, group in by_len.items():
        got = a.run_outputs(np.array([a.encode(w) for w in group]))[:, -1]
        want = [int(TOMITA[k](w)) for w in group]
        assert got.tolist() == want, f"tomita{k} length {n}"


def final_label(spec: str, word: str) -> str:
    a = get_task(spec).automaton
    return a.labels[a.output_of(word)]


def test_deletang_examples():
    assert final_label("even_pairs", "001110") == "0"
    assert final_label("even_pairs", "0101001") == "1"
    assert final_label("even_pairs", "0") == "0"
    assert final_label("parity_check", "1010100") == "1"
    assert final_label("cycle_navigation", "010211") == "4"
    assert final_label("modular_arithmetic", "1+2*3") == "2"
    assert final_label("modular_arithmetic", "1-1-1") == "4"
    assert final_label("modular_arithmetic", "0*1+4*3-2") == "0"


def _eval_expr(w: str) -> int:
    return eval(w) % 5  # noqa: S307 - digits and + - * only


def test_modular_arithmetic_matches_python_eval():
    a = get_task("modular_arithmetic").automaton
    rng = np.random.default_rng(0)
    for length in (1, 3, 5, 9, 15):
        for _ in range(40):
            digits = rng.integers(0, 5, size=(length + 1) // 2)
            ops = rng.choice(list("+-*"), size=length // 2)
            w = "".join(str(d) + (ops[i] if i < len(ops) else "") for i, d in enumerate(digits))
            assert int(a.labels[a.output_of(w)]) == _eval_expr(w), w


def test_modular_arithmetic_invalid_and_operator_states():
    a = get_task("modular_arithmetic").automaton
    assert a.labels[a.output_of("1+")] == "op"
    for bad in ("+", "12", "1+*", "1++2"):
        assert a.labels[a.output_of(bad)] == "invalid"
    m = a.minimize()
    valid = [s for s in range(m.n_states) if m.labels[m.outputs[s]] != "invalid"]
    assert len(valid) == 50


def test_liu_semiautomata_semantics():
    cyc = get_task("cyclic:n=5,n_actions=3").automaton
    assert cyc.output_of("2221") == int("2221".count("2") * 2 + 1) % 5
    grid = get_task("gridworld:n=3").automaton
    assert grid.labels[grid.output_of("LRRRRL")] == "1"
    ff = get_task("flipflop").automaton
    assert ff.output_of("") == 0 and ff.output_of("0200") == 2 and ff.output_of("21") == 1
    q = get_task("quaternion").automaton
    assert q.states[q.state_after(["i", "j"])] == "+k"
    assert q.states[q.state_after(["i", "i"])] == "-1"
    assert q.states[q.state_after(["j", "i"])] == "-k"
    d = get_task("dihedral").automaton
    assert d.output_of("1") == 1 and d.output_of("01") == 4 + 3 and d.output_of("0") == 4
    ab = get_task("abab").automaton
    assert ab.run(ab.encode("0101")).tolist() == [0, 1, 2, 3]
    assert ab.output_of("011") == 4 and ab.states[ab.start] == "3"
    add = get_task("adder").automaton
    # 3 + 3 = 6: columns (1,1), (1,1), (0,0) -> digits 0, 1, 1 with carries 1, 1, 0
    assert add.run(add.encode("11 11 00")).tolist() == [0 + 2, 1 + 2, 1]
    s = get_task("symmetric").automaton
    assert s.states[s.state_after("1")] == "120" and s.states[s.state_after("2")] == "102"


def test_group_tasks_are_permutation_automata():
    for spec in ("cyclic", "dihedral", "quaternion", "symmetric", "alternating", "parity"):
        a = get_task(spec).automaton
        for j in range(a.n_symbols):
            assert sorted(a.transitions[:, j].tolist()) == list(range(a.n_states)), spec


def test_random_dfa_is_uniform_and_seeded():
    """Each successor and label is a uniform draw: over many seeds every target state and label
    turns up about equally often; one seed gives one automaton."""
    a = get_task("random:n=6,n_symbols=3,n_labels=3,seed=7").automaton
    assert (a.n_states, a.n_symbols, a.n_labels, a.start) == (6, 3, 3, 0)
    again = get_task("random:n=6,n_symbols=3,n_labels=3,seed=7").automaton
    assert np.array_equal(a.transitions, again.transitions) and np.array_equal(a.outputs, again.outputs)
    assert not np.array_equal(a.transitions, get_task("random:n=6,n_symbols=3,n_labels=3,seed=8").automaton.transitions)
    many = [get_task(f"random:n=6,n_symbols=3,n_labels=3,seed={s}").automaton for s in range(300)]
    targets = np.bincount(np.concatenate([m.transitions.ravel() for m in many]), minlength=6) / (300 * 18)
    labels = np.bincount(np.concatenate([m.outputs for m in many]), minlength=3) / (300 * 6)
    assert np.abs(targets - 1 / 6).max() < 0.02 and np.abs(labels - 1 / 3).max() < 0.03


def test_spec_roundtrip_and_params():
    t = get_task("cyclic:n=7")
    assert t.spec == "cyclic:n=7,n_actions=2" and t.params == {"n": 7, "n_actions": 2}
    assert get_task(t.spec).automaton == t.automaton
    f = get_task("flipflop:p_write=0.2")
    assert f.spec == "flipflop:n=2,p_write=0.2" and f.sampler == FlipFlopSampler(2, 0.2)
    for info in list_tasks():
        task = get_task(info.name)
        again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
        assert again.spec == task.spec and again.automaton == task.automaton
        assert info.description and info.source
    assert get_task("modular_arithmetic").final_only
    assert get_task("modular_arithmetic").length_rule == "odd"
    assert not get_task("parity").final_only


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nope", "unknown task 'nope'; known tasks: parity, cyclic"),
        ("cyclic:m=3", "unknown parameter 'm'; accepted parameters: n, n_actions"),
        ("parity:n=3", "accepted parameters: none"),
        ("cyclic:n=1", r"n=1 outside \[2, 1000\]"),
        ("cyclic:n=x", "'x' is not an integer"),
        ("cyclic:n", "expected key=value"),
        ("cyclic:n=3,n_actions=4", "n_actions=4 must be <= n=3"),
        ("flipflop:p_write=1.5", "p_write=1.5 outside"),
        ("flipflop:p_write=nan", "p_write='nan' is not a finite number"),
        ("flipflop:p_write=inf", "p_write='inf' is not a finite number"),
        ("symmetric:n=3,n_actions=7", "n! = 6"),
        ("", "non-empty"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(TaskError, match=match):
        get_task(spec)


def test_task_from_file(tmp_path):
    a = get_task("tomita3").automaton
    d = a.to_dict()
    d["input_distribution"] = {"0": 0.7, "1": 0.3}
    p = tmp_path / "t3.json"
    p.write_text(json.dumps(d))
    t = task_from_file(p)
    assert t.automaton == a and t.sampler == CategoricalSampler((0.7, 0.3))
    assert t.spec == "file:tomita3"
    again = Task.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.automaton == a and again.sampler == t.sampler
    assert get_task(f"file:{p}").automaton == a
    x = t.sampler.sample(np.random.default_rng(0), 200, 50)
    assert abs((x == 0).mean() - 0.7) < 0.03
    plain = task_from_automaton(a)
    assert plain.sampler.to_dict() == {"kind": "uniform", "n": 2}


def test_task_from_file_errors(tmp_path):
    d = get_task("tomita3").automaton.to_dict()
    d["input_distribution"] = {"0": 0.7, "2": 0.3}
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(AutomatonError, match="bad.json.*unknown symbol"):
        task_from_file(p)
    d["input_distribution"] = {"0": 0.7, "1": 0.7}
    p.write_text(json.dumps(d))
    with pytest.raises(AutomatonError, match="sum to 1"):
        task_from_file(p)
    p.write_text("{")
    with pytest.raises(AutomatonError, match="not valid JSON"):
        task_from_file(p)


def test_task_from_dict_errors():
    with pytest.raises(TaskError, match="'spec'"):
        Task.from_dict({"x": 1})
    with pytest.raises(TaskError, match="unknown key"):
        Task.from_dict({"spec": "parity", "extra": 1})
    with pytest.raises(TaskError, match="automaton"):
        Task.from_dict({"spec": "file:x"})


def test_sampler_roundtrip_and_errors():
    rng = np.random.default_rng(0)
    for info in list_tasks():
        s = get_task(info.name).sampler
        assert Sampler.from_dict(json.loads(json.dumps(s.to_dict()))) == s
        x = s.sample(rng, 4, 7)
        assert x.shape == (4, 7) and x.dtype == np.int64
        get_task(info.name).automaton.check_tokens(x)
    with pytest.raises(TaskError, match="unknown sampler"):
        Sampler.from_dict({"kind": "zz"})
    for bad in ({"kind": []}, {"kind": {}}, ["uniform"]):
        with pytest.raises(TaskError, match="unknown sampler"):
            Sampler.from_dict(bad)
    with pytest.raises(ConfigError, match="length"):
        FlipFlopSampler().sample(rng, 2, 0)


def test_sampler_distributions():
    rng = np.random.default_rng(1)
    x = get_task("flipflop:p_write=0.3").sampler.sample(rng, 400, 100)
    assert abs((x != 0).mean() - 0.3) < 0.01
    assert abs((x == 1).mean() - (x == 2).mean()) < 0.01
    ab = get_task("abab").sampler.sample(rng, 4000, 8)
    exact = (ab == np.arange(8) % 2).all(axis=1).mean()
    assert abs(exact - (0.25 + 0.75 / 256)) < 0.03
    ma = get_task("modular_arithmetic").sampler.sample(rng, 100, 9)
    assert (ma[:, ::2] < 5).all() and (ma[:, 1::2] >= 5).all()
    add = get_task("adder").sampler.sample(rng, 100, 10)
    assert (add[:, -1] == 0).all() and set(np.unique(add[:, :-1])) == {0, 1, 2, 3}

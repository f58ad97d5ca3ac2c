"""A user automaton's state names survive extraction: results, fsm.json, extraction.json, figures."""

import json

import numpy as np

from fsm_probe.automata import Automaton
from fsm_probe.extraction import FSMExtractor, check_extraction, save_extraction
from fsm_probe.extraction.checks import compare_to_task, name_like_task, task_states_met
from fsm_probe.figures.extraction import automaton_figure, trajectories_figure
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import task_from_file

LIGHT = {
    "name": "light",
    "alphabet": ["tick", "wait"],
    "states": ["red", "green", "yellow"],
    "start": "red",
    "transitions": {
        "red": {"tick": "green", "wait": "red"},
        "green": {"tick": "yellow", "wait": "green"},
        "yellow": {"tick": "red", "wait": "yellow"},
    },
    "outputs": {"red": "stop", "green": "go", "yellow": "stop"},
    "labels": ["stop", "go"],
}


def _task(tmp_path, spec=LIGHT):
    path = tmp_path / "light.json"
    path.write_text(json.dumps(spec))
    return task_from_file(path)


def _words_reach(a: Automaton, name: str, tokens: np.ndarray) -> np.ndarray:
    return np.array(a.states, dtype=object)[a.run(tokens)] == name


def test_extraction_keeps_the_users_state_names(tmp_path):
    task = _task(tmp_path)
    model = compile_rnn(task.automaton)
    ex = FSMExtractor(empty_output="network").fit(model, task)
    assert set(ex.automaton_.states) == {"red", "green", "yellow"}
    # the names mean the same states: every word ends in the state of the same name
    tokens = np.random.default_rng(0).integers(0, 2, (64, 12))
    for name in ("red", "green", "yellow"):
        np.testing.assert_array_equal(_words_reach(ex.automaton_, name, tokens), _words_reach(task.automaton, name, tokens))
    report = check_extraction(model, ex, task, lengths=(20,), n=50)
    assert report["equivalent_to_task"] is True
    assert report["state_mapping"] == {"red": "red", "green": "green", "yellow": "yellow"}
    paths = save_extraction(tmp_path / "out", ex, report)
    saved = json.loads(paths["fsm.json"].read_text())
    assert set(saved["states"]) == {"red", "green", "yellow"} and saved["start"] == "red"
    assert json.loads(paths["extraction.json"].read_text())["state_mapping"]["green"] == "green"
    nodes = {str(t) for d in automaton_figure(ex.graph_).data for t in (d.text if d.text is not None else [])}
    assert {"red", "green", "yellow"} <= nodes
    legend = {d.name for d in trajectories_figure(ex).data if d.name}
    assert {"true state: red", "extracted state: red", "extracted state: yellow"} <= legend


def test_mapping_names_task_states_when_the_extraction_is_unnamed():
    a = Automaton.from_dict(LIGHT)
    minimal = a.minimize()  # states q0, q1, q2
    assert set(minimal.states) == {"q0", "q1", "q2"}
    mapping = compare_to_task(minimal, a)["state_mapping"]
    tokens = np.random.default_rng(1).integers(0, 2, (32, 9))
    for q, user in mapping.items():
        np.testing.assert_array_equal(_words_reach(minimal, q, tokens), _words_reach(a, user, tokens))
    assert set(name_like_task(minimal, a).states) == {"red", "green", "yellow"}


def test_equivalent_user_states_are_joined_and_a_wrong_automaton_keeps_its_names():
    spec = json.loads(json.dumps(LIGHT))
    spec["states"].append("amber")  # yellow's twin: same label, same successors
    spec["transitions"]["green"]["wait"] = "amber"
    spec["transitions"]["amber"] = {"tick": "red", "wait": "yellow"}
    spec["outputs"]["amber"] = "stop"
    a = Automaton.from_dict(spec)
    named = name_like_task(a.minimize(), a)
    assert set(named.states) == {"red", "green", "yellow|amber"}
    met, agree = task_states_met(a.minimize(), a)
    assert agree and sorted(map(len, met.values())) == [1, 1, 2]
    wrong = Automaton.from_dict({**LIGHT, "outputs": {"red": "go", "green": "go", "yellow": "stop"}})
    assert name_like_task(wrong.relabel_states(["a", "b", "c"]), a).states == ("a", "b", "c")
    assert compare_to_task(wrong, a)["state_mapping"] is None


def test_segment_automaton_keeps_names():
    """An RMT's extraction reads segments: the task's power automaton names its states too."""
    a = Automaton.from_dict(LIGHT)
    power = a.power(2)
    assert set(name_like_task(power.minimize(), power).states) == set(power.states)

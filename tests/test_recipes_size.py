"""The size-aware GRU recipe: the start depth it reads and the full-length batches of deep automata."""

from __future__ import annotations

import numpy as np
import pytest

from fsm_probe.automata.machine import Automaton
from fsm_probe.errors import ConfigError
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig
from fsm_probe.training.recipes import recipe
from fsm_probe.training.recipes_size import DEEP, full_length, start_depth


def _depth_by_sets(a: Automaton) -> int:
    """Independent: the first length by which every reachable state has been reached, growing the
    set of states reached by words of length <= L with the transition table."""
    reached = np.zeros(a.n_states, dtype=bool)
    reached[a.start] = True
    for length in range(a.n_states + 1):
        grown = reached.copy()
        grown[np.asarray(a.transitions)[reached].ravel()] = True
        if (grown == reached).all():
            return length
        reached = grown
    raise AssertionError("no fixed point")


@pytest.mark.parametrize("n", [3, 9, 30])
def test_gridworld_depth_is_its_far_end(n: int) -> None:
    a = get_task(f"gridworld:n={n}").automaton
    assert start_depth(a) == n - 1 == _depth_by_sets(a)


@pytest.mark.parametrize("n", [4, 7, 15, 50])
def test_dihedral_depth_is_half_way_round_then_a_toggle(n: int) -> None:
    a = get_task(f"dihedral:n={n}").automaton
    assert start_depth(a) == n // 2 + 1 == _depth_by_sets(a)


@pytest.mark.parametrize("spec", ["symmetric:n=4", "alternating:n=5", "cyclic:n=19,n_actions=19", "parity"])
def test_depth_agrees_with_the_set_computation(spec: str) -> None:
    a = get_task(spec).automaton
    assert start_depth(a) == _depth_by_sets(a)


def test_unreachable_states_do_not_count() -> None:
    # 0 -a-> 1 -a-> 1; state 2 is only reachable from itself
    a = Automaton(["a"], ["s0", "s1", "s2"], 0, [[1], [1], [2]])
    assert start_depth(a) == 1


@pytest.mark.parametrize("spec", ["gridworld:n=30", "dihedral:n=50"])
def test_deep_automata_train_on_full_length_batches(spec: str) -> None:
    task = get_task(spec)
    assert start_depth(task.automaton.minimize()) > DEEP
    assert recipe("gru", task).train["full_length"] is True
    assert recipe("gru", task).train["max_steps"] == 12000  # twice gru_recipe's 6000
    assert TrainConfig().resolved("gru", task).full_length is True
    assert TrainConfig(full_length=False).resolved("gru", task).full_length is False  # a flag still wins
    assert recipe("gru", task).train["mixed_inputs"] == 0.5
    assert TrainConfig(mixed_inputs=0.0).resolved("gru", task).mixed_inputs == 0.0


@pytest.mark.parametrize(("spec", "d_hidden", "max_steps", "batch_size"), [
    ("symmetric:n=4", 64, 6000, 64),
    ("alternating:n=5", 64, 6000, 64),
    ("dihedral:n=15", 64, 6000, 64),
    ("cyclic:n=19,n_actions=19", 128, 12000, 128),
])
def test_measured_shallow_automata_keep_their_recipe(spec: str, d_hidden: int, max_steps: int, batch_size: int) -> None:
    r = recipe("gru", get_task(spec))
    assert r.model["d_hidden"] == d_hidden
    assert {k: r.train[k] for k in ("lr", "max_steps", "batch_size", "full_length", "mixed_inputs")} == {
        "lr": 3e-3, "max_steps": max_steps, "batch_size": batch_size, "full_length": False, "mixed_inputs": 0.0}


def test_small_automata_keep_the_architecture_recipe() -> None:
    r = recipe("gru", get_task("gridworld:n=9"))  # 9 states: the measured small recipe, uniform lengths
    assert r.train["full_length"] is False and r.train["lr"] == 1e-2


def test_full_length_starts_past_the_deep_threshold() -> None:
    assert full_length(DEEP) is False and full_length(DEEP + 1) is True
    with pytest.raises(ConfigError, match="depth"):
        full_length(-1)


def test_mixed_inputs_only_for_tasks_of_iid_symbols():
    from fsm_probe.training.recipes import iid_symbols

    assert iid_symbols(get_task("gridworld:n=30")) and iid_symbols(get_task("dihedral:n=50"))
    assert not iid_symbols(get_task("flipflop")) and not iid_symbols(get_task("dyck1"))


def test_a_record_from_before_mixed_inputs_trained_on_the_tasks_sampler():
    import torch

    from fsm_probe.models import ModelConfig, build_model
    from fsm_probe.training.run import Run

    task = get_task("gridworld:n=30")
    record = {k: v for k, v in TrainConfig(lr=3e-3).to_dict().items() if k != "mixed_inputs"}
    torch.manual_seed(0)
    run = Run.from_record(build_model(ModelConfig("gru", 2, 30, d_hidden=4)), task, record)
    assert run.train_config.mixed_inputs == 0.0
    assert "mixed_inputs" not in run.settings  # the stored record is given back as stored


@pytest.mark.parametrize(("spec", "d_hidden", "max_steps", "lr"), [
    ("parity", 64, 3000, 3e-3),
    ("random:n=50,n_symbols=10", 64, 12000, 3e-3),
    ("random:n=100,n_symbols=10", 128, 20000, 3e-3),
    ("dyck1", 32, 1500, 3e-3),
])
def test_second_order_recipe_by_size(spec: str, d_hidden: int, max_steps: int, lr: float) -> None:
    r = recipe("second_order", get_task(spec))
    assert (r.model["d_hidden"], r.train["max_steps"], r.train["lr"]) == (d_hidden, max_steps, lr)


def test_retry_hint_names_the_second_order_net_for_large_first_order_failures() -> None:
    from fsm_probe.training.recipes import retry_hint

    large, small = get_task("random:n=50,n_symbols=10"), get_task("parity")
    assert "--arch second_order" in retry_hint("gru", large)
    assert "--arch second_order" not in retry_hint("gru", small)
    assert "--arch second_order" not in retry_hint("second_order", large)
    assert "--arch second_order" not in retry_hint("gru", get_task("dyck1"))

"""Datasets: reproducibility, labels from the automaton, final-only masking, length rules."""

import itertools

import numpy as np
import pytest

from fsm_probe.errors import ConfigError
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import IGNORE_INDEX, Batch, eval_set, iterate_batches, sample_batch


def test_sample_batch_labels_and_states():
    task = get_task("dihedral")
    b = sample_batch(task, 8, 20, np.random.default_rng(0))
    assert isinstance(b, Batch)
    assert b.tokens.shape == b.labels.shape == b.states.shape == (8, 20)
    assert all(x.dtype == np.int64 for x in (b.tokens, b.labels, b.states))
    assert (b.states == task.automaton.run(b.tokens)).all()
    assert (b.labels == task.automaton.run_outputs(b.tokens)).all()
    assert (b.batch_size, b.length) == (8, 20)


def test_final_only_masking():
    task = get_task("parity_check")
    b = sample_batch(task, 16, 9, np.random.default_rng(0))
    assert (b.labels[:, :-1] == IGNORE_INDEX).all()
    assert (b.labels[:, -1] == b.tokens.sum(axis=1) % 2).all()
    full = sample_batch(task, 16, 9, np.random.default_rng(0), final_only=False)
    assert (full.labels == task.automaton.run_outputs(full.tokens)).all()
    assert (full.tokens == b.tokens).all()
    forced = sample_batch(get_task("parity"), 4, 5, np.random.default_rng(0), final_only=True)
    assert (forced.labels[:, :-1] == IGNORE_INDEX).all()


def test_odd_length_rule():
    task = get_task("modular_arithmetic")
    rng = np.random.default_rng(0)
    assert sample_batch(task, 4, 10, rng).length == 9
    assert sample_batch(task, 4, 11, rng).length == 11
    assert sample_batch(task, 4, 1, rng).length == 1
    b = sample_batch(task, 64, 2, rng)
    assert b.length == 1 and set(np.unique(b.labels)) <= set(range(5))
    b = sample_batch(task, 256, 15, rng)
    assert (b.labels[:, -1] < 5).all()


def test_iterate_batches_reproducible_and_lengths():
    task = get_task("cyclic")
    a = list(itertools.islice(iterate_batches(task, 4, (3, 6), seed=7), 30))
    b = list(itertools.islice(iterate_batches(task, 4, (3, 6), seed=7), 30))
    c = list(itertools.islice(iterate_batches(task, 4, (3, 6), seed=8), 30))
    assert all((x.tokens == y.tokens).all() for x, y in zip(a, b, strict=True))
    assert any(
        x.tokens.shape != y.tokens.shape or (x.tokens != y.tokens).any()
        for x, y in zip(a, c, strict=True)
    )
    assert {x.length for x in a} == {3, 4, 5, 6}
    fixed = next(iterate_batches(task, 2, 5))
    assert fixed.length == 5


def test_eval_set_fixed_per_length():
    task = get_task("even_pairs")
    a = eval_set(task, 12, n=32, seed=3)
    b = eval_set(task, 12, n=32, seed=3)
    assert (a.tokens == b.tokens).all() and (a.labels == b.labels).all()
    assert not (eval_set(task, 12, n=32, seed=4).tokens == a.tokens).all()
    assert eval_set(task, 13, n=32, seed=3).length == 13
    assert eval_set(task, 12, n=32, seed=3, final_only=False).labels.min() >= 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: sample_batch(t, 0, 5, np.random.default_rng()), "batch_size"),
        (lambda t: sample_batch(t, 2, 0, np.random.default_rng()), "length"),
        (lambda t: iterate_batches(t, 2, (5, 3)), "minimum length 5 exceeds maximum length 3"),
        (lambda t: iterate_batches(t, 2, (0, 3)), "minimum length"),
        (lambda t: iterate_batches(t, 0, (1, 3)), "batch_size"),
        (lambda t: iterate_batches(t, 2, "ab c"), r"\(min, max\)"),
        (lambda t: iterate_batches(t, 2, (1, 3), mixed=1.5), r"mixed must be a share in \[0, 1\], got 1.5"),
        (lambda t: iterate_batches(t, 2, (1, 3), mixed=True), "mixed must be a share"),
        (lambda t: eval_set(t, 0), "length"),
        (lambda t: eval_set(t, 4, n=0), "n must"),
        (lambda t: eval_set(t, 4, seed=-1), "seed"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call(get_task("parity"))


def test_flipflop_write_rate_in_batches():
    task = get_task("flipflop:n=3,p_write=0.25")
    b = sample_batch(task, 200, 100, np.random.default_rng(0))
    assert abs((b.tokens != 0).mean() - 0.25) < 0.01
    assert set(np.unique(b.labels)) == {0, 1, 2, 3}


def test_mixed_words_dwell_on_symbols_and_reach_far_states():
    """Half the words with their own Dirichlet(1) symbol probabilities: per-word symbol shares
    spread far beyond the binomial spread of uniform words, and far gridworld cells (more than 20
    steps right of the start) are reached several times as often, while labels stay the
    automaton's."""
    task = get_task("gridworld:n=30")
    uniform = list(itertools.islice(iterate_batches(task, 64, 40, seed=0), 20))
    mixed = list(itertools.islice(iterate_batches(task, 64, 40, seed=0, mixed=0.5), 20))
    for b in mixed:
        assert (b.states == task.automaton.run(b.tokens)).all()
        assert (b.labels == task.automaton.run_outputs(b.tokens)).all()
    share = np.concatenate([(b.tokens == 0).mean(axis=1) for b in mixed])
    binomial_sd = np.sqrt(0.25 / 40)
    assert share.std() > 2.5 * binomial_sd
    assert abs(np.concatenate([(b.tokens == 0).mean(axis=1) for b in uniform]).std() - binomial_sd) < 0.3 * binomial_sd

    def far(batches):
        return np.mean([(b.states.max(axis=1) > 20).mean() for b in batches])

    assert far(mixed) > 5 * far(uniform)
    assert all(set(np.unique(b.tokens)) <= {0, 1} for b in mixed)


def test_dirichlet_words_cover_every_symbol_and_vary_per_word():
    from fsm_probe.tasks.datasets import dirichlet_words

    w = dirichlet_words(np.random.default_rng(0), 5, 400, 200)
    assert w.shape == (400, 200) and w.dtype == np.int64
    assert set(np.unique(w)) == set(range(5))
    counts = np.stack([(w == s).mean(axis=1) for s in range(5)], axis=1)
    assert abs(counts.mean() - 0.2) < 0.01
    assert counts.max(axis=1).mean() > 0.4  # a Dirichlet(1) word's most frequent symbol: about 0.46 of it


def test_mixed_words_keep_to_the_symbols_the_task_can_draw():
    from fsm_probe.automata.machine import Automaton
    from fsm_probe.tasks.task import task_from_automaton

    a = Automaton(["a", "b", "c"], ["s0", "s1"], 0, [[1, 0, 0], [0, 1, 1]])
    task = task_from_automaton(a, input_distribution={"a": 0.5, "b": 0.5, "c": 0.0})
    for b in itertools.islice(iterate_batches(task, 32, 20, seed=1, mixed=1.0), 10):
        assert set(np.unique(b.tokens)) <= {0, 1}
    assert next(iterate_batches(task, 4, 5, mixed=np.int64(1))).tokens.shape == (4, 5)

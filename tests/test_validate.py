"""The shared parameter checks (_validate) and the places that use them: the exception type of
each caller, the parameter named in the message, numpy integers where a caller accepts them."""

import numpy as np
import pytest

from fsm_probe import _validate as v
from fsm_probe.automata import dyck1, segment_tokens, segment_words
from fsm_probe.errors import AutomatonError, ConfigError, InputError
from fsm_probe.tasks import UniformSampler, eval_set, get_task, iterate_batches, sample_batch


@pytest.mark.parametrize("bad", [0, -3, True, 1.0, "2", None, np.int64(2)])
def test_positive_int_refuses(bad):
    with pytest.raises(ConfigError, match=r"^width must be a positive integer, got "):
        v.positive_int(bad, "width")


def test_positive_int_options():
    assert v.positive_int(3, "n") == 3
    out = v.positive_int(np.int64(3), "n", numpy=True)
    assert out == 3 and type(out) is int
    with pytest.raises(InputError, match="n must be a positive integer, got 0"):
        v.positive_int(0, "n", error=InputError)
    with pytest.raises(ConfigError, match="got True"):
        v.positive_int(True, "n", numpy=True)
    assert v.non_negative_int(np.int32(0), "seed", numpy=True) == 0
    with pytest.raises(AutomatonError, match="seed must be a non-negative integer, got -1"):
        v.non_negative_int(-1, "seed", error=AutomatonError)


def test_callers_keep_their_exception_types():
    task = get_task("parity")
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        sample_batch(task, 0, 5, rng)
    with pytest.raises(ConfigError, match="length must be a positive integer, got 0"):
        UniformSampler(2).sample(rng, 3, 0)
    with pytest.raises(ConfigError, match="minimum length must be a positive integer"):
        iterate_batches(task, 4, (0, 3))
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        eval_set(task, 4, seed=-1)
    with pytest.raises(InputError, match="segment length must be a positive integer, got 0"):
        segment_tokens([[0, 1]], 2, 0)
    with pytest.raises(InputError, match="segment length"):
        segment_words([[0]], 2, -1)
    with pytest.raises(InputError, match="segment length"):
        task.automaton.power(0)
    with pytest.raises(AutomatonError, match="max_count must be a positive integer, got 0"):
        dyck1().truncate(0)


def test_numpy_integers_still_accepted():
    task = get_task("parity")
    b = sample_batch(task, np.int64(3), np.int32(4), np.random.default_rng(0))
    assert b.tokens.shape == (3, 4)
    assert eval_set(task, np.int64(4), n=np.int64(2), seed=np.int64(1)).tokens.shape == (2, 4)
    assert segment_tokens([[0, 1, 1, 0]], 2, np.int64(2)).tolist() == [[1, 2]]
    assert dyck1().truncate(np.int64(3)).n_states == dyck1().truncate(3).n_states

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from fsm_probe import ConfigError, InputError, ModelConfig, build_model, get_task
from fsm_probe.circuits.attention import (
    attention_dilution,
    attention_patterns,
    head_stats,
    head_stats_from_patterns,
    token_labels,
)
from fsm_probe.tasks.datasets import eval_set

PARITY = get_task("parity")


def _transformer(zero_queries: bool = False):
    model = build_model(ModelConfig("transformer", 2, 2, n_layers=2, d_hidden=16, n_heads=2, n_ctx=64)).eval()
    if zero_queries:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".q." in name:
                    p.zero_()
    return model


def _synthetic(kind: str, t: int) -> np.ndarray:
    p = np.zeros((t, t))
    for q in range(t):
        if kind == "uniform":
            p[q, : q + 1] = 1 / (q + 1)
        elif kind == "prev":
            p[q, max(q - 1, 0)] = 1
        else:
            p[q, 0] = 1
    return p[None, None, None]


def test_statistics_of_known_patterns():
    t = 7
    u = head_stats_from_patterns(_synthetic("uniform", t))
    assert u.uniform_distance[0, 0] == pytest.approx(0, abs=1e-12)
    assert u.entropy[0, 0] == pytest.approx(1)
    prev = head_stats_from_patterns(_synthetic("prev", t))
    assert prev.prev_token[0, 0] == 1 and prev.entropy[0, 0] == 0
    expected = np.mean([1 - 1 / (q + 1) for q in range(1, t)])
    assert prev.uniform_distance[0, 0] == pytest.approx(expected)
    first = head_stats_from_patterns(_synthetic("first", t))
    assert first.first_token[0, 0] == 1 and first.most_uniform() == (0, 0)


def test_entropy_matches_scipy_on_a_model():
    model = _transformer()
    tokens = eval_set(PARITY, 9, n=6).tokens
    p = attention_patterns(model, tokens)
    assert p.shape == (6, 2, 2, 9, 9)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(p, k=1) == 0)
    stats = head_stats(model, tokens=tokens)
    ref = np.mean([[entropy(p[b, 1, 0, q, : q + 1]) / np.log(q + 1) for q in range(1, 9)] for b in range(6)])
    assert stats.entropy[1, 0] == pytest.approx(ref, rel=1e-5)
    rows = stats.rows()
    assert len(rows) == 4 and rows[1]["head"] == "L0H1"
    assert stats.to_dict()["length"] == 9


def test_uniform_heads_dilute_like_one_over_t():
    model = _transformer(zero_queries=True)
    dil = attention_dilution(model, PARITY, [4, 8, 16, 32], n=4)
    np.testing.assert_allclose(dil.max_weight, dil.reference[:, None, None] * np.ones((1, 2, 2)), rtol=1e-4)
    np.testing.assert_allclose(dil.exponent, -1, atol=1e-3)
    np.testing.assert_allclose(dil.uniform_distance, 0, atol=1e-4)
    assert dil.to_dict()["lengths"] == [4, 8, 16, 32]
    stats = head_stats(model, PARITY, length=10, n=4)
    np.testing.assert_allclose(stats.uniform_distance, 0, atol=1e-5)


def test_dilution_uses_the_evaluated_length_of_odd_length_tasks():
    task = get_task("modular_arithmetic")
    a = task.automaton
    model = build_model(ModelConfig("transformer", a.n_symbols, a.n_labels, d_hidden=16, n_heads=2, n_ctx=64)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".q." in name:
                p.zero_()
    dil = attention_dilution(model, task, [4, 8, 16], n=4)
    assert dil.lengths == [3, 7, 15]
    np.testing.assert_allclose(dil.max_weight, dil.reference[:, None, None] * np.ones((1, 1, 2)), rtol=1e-4)


def test_attention_errors_and_labels():
    gru = build_model(ModelConfig("gru", 2, 2, d_hidden=8))
    with pytest.raises(InputError, match="no attention"):
        head_stats(gru, tokens=np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(ConfigError, match="context"):
        attention_dilution(_transformer(), PARITY, [8, 128])
    labels = token_labels(PARITY, [1, 1, 0])
    assert labels == ["1·0", "1·1", "0·2"] and len(set(labels)) == 3

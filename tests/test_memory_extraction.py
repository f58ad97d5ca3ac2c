"""Extraction from an RMT's memory: segment automata, collection at segment boundaries, the
pipeline on a trained RMT (fsm_probe/extraction/collect.py, estimator.py, search.py, automata.py)."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_automata import automata

from fsm_probe.automata import Automaton, segment_alphabet, segment_tokens, segment_words
from fsm_probe.cli import main
from fsm_probe.errors import AutomatonError, ConfigError, InputError
from fsm_probe.extraction import (
    FSMExtractor,
    check_extraction,
    collect,
    extract,
    fidelity,
    interchange_accuracy,
    resolve_site,
)
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, train
from fsm_probe.training.checkpoint import save

# ---------------------------------------------------------------- segment (power) automata


@settings(max_examples=60, deadline=None)
@given(automata(max_states=5, max_symbols=3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_power_automaton_runs_like_the_original_at_segment_boundaries(a, length, seed):
    p = a.power(length)
    assert p.alphabet == segment_alphabet(a.alphabet, length)
    assert p.n_states <= a.n_states
    x = np.random.default_rng(seed).integers(0, a.n_symbols, (8, 4 * length))
    seg = segment_tokens(x, a.n_symbols, length)
    assert seg.shape == (8, 4)
    assert np.array_equal(segment_words(seg, a.n_symbols, length), x)
    names = np.array(a.states)[a.run(x)[:, length - 1 :: length]]
    assert (np.array(p.states)[p.run(seg)] == names).all()
    assert (np.array(p.labels)[p.run_outputs(seg)] == np.array(a.labels)[a.run_outputs(x)[:, length - 1 :: length]]).all()
    assert p.states[p.start] == a.states[a.start]
    assert p.n_states == len(p.reachable())


def test_power_of_parity_and_segment_encoding_order():
    a = get_task("parity").automaton
    p = a.power(2)
    assert p.alphabet == ("00", "01", "10", "11")
    assert segment_tokens([[0, 1, 1, 0, 1, 1]], 2, 2).tolist() == [[1, 2, 3]]
    # the odd-parity words flip the state, the even ones keep it
    assert p.transitions[p.start].tolist() == [p.start, 1 - p.start, 1 - p.start, p.start]
    assert a.power(1).equivalent(a) is None
    # parity read two symbols at a time only reaches even-length prefixes
    odd = Automaton(["a"], ["e", "o"], 0, [[1], [0]], [0, 1])
    assert odd.power(2).states == ("e",)
    assert segment_alphabet(["ab", "c"], 2) == ("ab ab", "ab c", "c ab", "c c")


def test_segment_errors():
    a = get_task("parity").automaton
    with pytest.raises(InputError, match="multiple of the segment length 3"):
        segment_tokens(np.zeros((2, 5), dtype=np.int64), 2, 3)
    with pytest.raises(InputError, match="segment length"):
        a.power(0)
    with pytest.raises(AutomatonError, match="segment symbols"):
        a.power(17)


# ---------------------------------------------------------------- collection on the memory


def rmt(**kw):
    base = dict(arch="rmt", d_vocab=2, d_out=2, n_layers=1, d_hidden=16, n_heads=2,
                segment_length=2, n_memory=2, n_ctx=512)
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


def test_memory_collection_rows_are_segment_boundaries():
    m = rmt(segment_length=3)
    a = get_task("parity").automaton
    x = np.random.default_rng(0).integers(0, 2, (5, 12))
    assert resolve_site(m, None) == ("hook_memory",) == resolve_site(m, ["hook_memory"])
    col = collect(m, x, automaton=a)
    assert col.tokens.shape == (5, 4) and col.vectors.shape == (5, 5, 2 * 16)
    assert np.array_equal(col.tokens, segment_tokens(x, 2, 3))
    assert not col.virtual_initial and col.segment_length == 3
    init = m.initial_state(1)["hook_memory"].reshape(-1).detach().numpy()
    assert np.allclose(col.vectors[:, 0], init)
    assert np.allclose(col.vectors[:, 1:], m.memory_states(x).reshape(5, 4, -1).numpy(), atol=1e-6)
    with torch.no_grad():
        pred = m(torch.as_tensor(x)).argmax(-1).numpy()
    assert np.array_equal(col.predictions[:, 1:], pred[:, 2::3])
    assert (col.predictions[:, 0] == a.outputs[a.start]).all()
    assert np.array_equal(col.true_states[:, 1:], a.run(x)[:, 2::3])
    assert (col.true_states[:, 0] == a.start).all()
    edges = col.edges()
    assert len(edges[0]) == 20


def test_memory_extraction_errors_are_clear():
    m = rmt(segment_length=4)
    with pytest.raises(InputError, match="not a multiple of segment_length=4"):
        collect(m, np.zeros((2, 10), dtype=np.int64))
    with pytest.raises(InputError, match="site must be 'hook_memory'"):
        resolve_site(m, "blocks.0.hook_resid_post")
    with pytest.raises(ConfigError, match="lstar needs an rnn"):
        extract(m, get_task("parity"), method="lstar")
    parity = get_task("parity").automaton  # reads tokens, not the 16 segments of 4 tokens
    with pytest.raises(InputError, match=r"must read the 16 segments \(e.g. task.automaton.power\(4\)\)"):
        fidelity(m, parity, np.zeros((2, 3), dtype=np.int64))
    assert set(fidelity(m, parity.power(4), np.zeros((2, 3), dtype=np.int64))) >= {"per_position"}
    pad = build_model(ModelConfig("scratchpad", 2, 2, d_hidden=16, n_heads=2, positional="none"))
    for site in (None, "hook_memory"):
        with pytest.raises(InputError, match="scratchpad has none"):
            resolve_site(pad, site)
    with pytest.raises(InputError, match="scratchpad has none"):
        extract(pad, get_task("parity"))


def test_untrained_rmt_extraction_retries_and_is_not_parity():
    m = rmt(seed=1, n_layers=2, normalization=None)  # an untrained net whose labels vary
    task = get_task("parity")
    ex = FSMExtractor(sizes=(2, 3, 4), n_words=64, n_val=64, time_limit=3.0, retry_length=12).fit(m, task)
    assert ex.automaton_.alphabet == ("00", "01", "10", "11")
    assert ex.fidelity_ < 1.0
    assert {c["length"] for c in ex.curve_} == {10, 6}  # the retry collected 12-token words
    report = check_extraction(m, ex, task, lengths=(12,), n=64, n_pairs=64)
    assert report["equivalent_to_task"] is False
    assert report["segment_length"] == 2
    assert report["interchange_accuracy"] < 1.0


def test_completion_steps_the_memory_by_one_segment():
    from fsm_probe.extraction.search import Completer

    m = rmt(segment_length=3)
    x = np.random.default_rng(1).integers(0, 2, (4, 9))
    col = collect(m, x)
    rows = np.array([0, 1 * 4 + 2, 3 * 4 + 3])  # positions 0, 2 and 3 of sequences 0, 1, 3
    symbols = np.array([5, 0, 7])
    got = Completer(m, col, None, None, False).step(rows, symbols)
    for r, a, g in zip(rows, symbols, got, strict=True):
        seq, pos = divmod(r, 4)
        words = np.concatenate([col.tokens[seq, :pos], [a]])[None]
        want = collect(m, segment_words(words, 2, 3)).vectors[0, -1]
        assert np.allclose(g, want, atol=1e-5)


# ---------------------------------------------------------------- a trained RMT


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    task = get_task("parity")
    cfg = ModelConfig("rmt", 2, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2,
                      n_memory=1, n_ctx=512)
    run = train(task, cfg, TrainConfig(train_lengths=(1, 12), max_steps=600, eval_every=50,
                                         lr=1e-2, val_size=128, val_lengths=(12,)), progress=False)
    model = run.model
    return task, model


def test_extraction_from_trained_rmt_memory_is_parity_over_segments(trained):
    task, model = trained
    ex = extract(model, task)
    power = task.automaton.power(2)
    assert ex.segment_length_ == 2 and ex.site_ == ("hook_memory",)
    assert ex.automaton_.alphabet == power.alphabet
    assert ex.automaton_.n_states == 2
    assert ex.automaton_.equivalent(power) is None
    held_out = np.random.default_rng(7).integers(0, 4, (200, 40))  # 80 tokens, twice the training length
    assert fidelity(model, ex.automaton_, held_out)["per_position"] == 1.0
    with pytest.warns(DeprecationWarning, match="now fidelity\\(model, automaton"):
        assert fidelity(ex.automaton_, model, held_out)["per_position"] == 1.0  # the old order, for one release
    assert ex.score(model, held_out) == 1.0
    report = check_extraction(model, ex, task, lengths=(40, 101), n=200)
    assert report["equivalent_to_task"] is True and report["counterexample"] is None
    assert report["fidelity"] == 1.0 and report["accuracy"] == 1.0
    assert report["purity"] == 1.0
    assert report["interchange_accuracy"] == 1.0 and report["interchange"]["changed"] > 0.5
    # the interchange check can fail: an automaton counting segments mod 2 is refuted
    count = Automaton(power.alphabet, ["even", "odd"], 0, [[1] * 4, [0] * 4], [0, 1], power.labels)
    ic = interchange_accuracy(model, count, held_out[:64, :10], n_pairs=64)
    assert ic["accuracy"] < 0.8


def test_cli_extract_on_an_rmt_run(trained, tmp_path, capsys):
    task, model = trained
    save(model, tmp_path / "run", task=task)
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(tmp_path / "run"), "--out", str(tmp_path / "fsm"), "--lengths", "40", "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["site"] == ["hook_memory"] and report["segment_length"] == 2
    assert report["equivalent_to_task"] is True
    fsm = Automaton.load_json(tmp_path / "fsm" / "fsm.json")
    assert fsm.equivalent(task.automaton.power(2)) is None

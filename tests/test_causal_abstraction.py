"""Interchange intervention accuracy against independent computations: a compiled RNN (IIA is 1 by
construction), restarts from a transplanted state (RNN, RMT) and swapped input tokens
(Transformer: the residual stream entering block 0 is the embedding of the token and position)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsm_probe.circuits.causal_abstraction import interchange_intervention_accuracy, state_sites
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import eval_set

LENGTH, N = 9, 24


def _pairs(task, length=LENGTH, n=N, seed=0):
    """The base/source sets the function under test draws (same seeds)."""
    base = eval_set(task, length, n=n, seed=seed + 101, final_only=False).tokens
    source = eval_set(task, length, n=n, seed=seed + 202, final_only=False).tokens
    return base, source


def _reference(task, base, source, end, first, patched_logits) -> tuple[float, float]:
    """IIA at one intervention from the patched logits of the kept pairs, with the counterfactual
    labels written out step by step."""
    a = task.automaton
    keep = a.run(source)[:, end] != a.run(base)[:, end]
    pred = patched_logits(keep).argmax(-1).numpy()
    right = []
    for row, (b, s) in enumerate(zip(base[keep], source[keep], strict=True)):
        state = a.run(s[None])[0, end]
        labels = [a.outputs[state]]
        for sym in b[end + 1 :]:
            state = a.transitions[state, sym]
            labels.append(a.outputs[state])
        right.append(pred[row, first:] == np.array(labels)[first - end :])
    right = np.array(right)
    return float(right.mean()), float(right[:, 0].mean())


@pytest.mark.parametrize("name", ["parity", "tomita3", "cyclic:n=5", "flipflop"])
def test_compiled_rnn_has_iia_one(name):
    task = get_task(name)
    model = compile_rnn(task.automaton)
    res = interchange_intervention_accuracy(model, task, 12, n=32)
    assert np.all(res.iia[~np.isnan(res.iia)] == 1.0)
    assert res.best() == ("layers.0", 1.0)
    assert (res.n_pairs > 0).any()


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "second_order"])
def test_rnn_iia_equals_a_restart_from_the_source_state(arch):
    task = get_task("cyclic:n=3")
    model = build_model(ModelConfig(arch, 2, 3, d_hidden=8, n_layers=2, seed=1)).eval()
    res = interchange_intervention_accuracy(model, task, LENGTH, n=N, sites=["layers.1"], max_positions=LENGTH)
    base, source = _pairs(task)
    for j, t in enumerate(res.positions[:-1]):
        def patched(keep, t=t):
            with torch.no_grad():
                _, src_state = model(torch.as_tensor(source[keep, : t + 1]), return_state=True)
                _, b_state = model(torch.as_tensor(base[keep, : t + 1]), return_state=True)
                state = {**b_state, **{k: v for k, v in src_state.items() if k.startswith("layers.1.")}}
                out_t = model.unembed(state["layers.1.hook_h"])[:, None]
                rest = model(torch.as_tensor(base[keep, t + 1 :]), state=state)
            head = torch.zeros(int(keep.sum()), t, out_t.shape[-1])
            return torch.cat([head, out_t, rest], dim=1)

        want = _reference(task, base, source, t, t, patched)
        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx(want, abs=1e-12), t


@pytest.mark.parametrize("site", ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"])
def test_transformer_iia_equals_a_hand_written_patch(site):
    task = get_task("tomita3")
    model = build_model(ModelConfig("transformer", 2, 2, d_hidden=16, n_heads=2, n_layers=2, n_ctx=16, seed=2)).eval()
    res = interchange_intervention_accuracy(model, task, LENGTH, n=N, sites=[site], max_positions=LENGTH)
    assert res.positions == list(range(1, LENGTH))  # position 0 depends on the first token alone
    base, source = _pairs(task)
    _, cache = model.run_with_cache(torch.as_tensor(source), names_filter=[site])
    for j, t in enumerate(res.positions):
        def patched(keep, t=t):
            donor = cache[site][torch.as_tensor(keep), t]

            def hook(act, hook):
                act = act.clone()
                act[:, t] = donor
                return act

            with torch.no_grad():
                return model.run_with_hooks(torch.as_tensor(base[keep]), fwd_hooks=[(site, hook)])

        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx(
            _reference(task, base, source, t, t, patched), abs=1e-12)


def test_transformer_sites_are_not_tautologies():
    """The last block's resid_mid/resid_post determine the output at their position: a swap
    there returns the source's own output, so they are not sites (a one-block model has none)."""
    deep = build_model(ModelConfig("transformer", 2, 2, d_hidden=16, n_heads=2, n_layers=3, n_ctx=16))
    assert list(state_sites(deep)) == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre",
                                       "blocks.1.hook_resid_mid", "blocks.2.hook_resid_pre"]
    shallow = build_model(ModelConfig("transformer", 2, 2, d_hidden=16, n_heads=2, n_layers=1, n_ctx=16))
    assert state_sites(shallow) == {}
    with pytest.raises(InputError, match="tautology"):
        interchange_intervention_accuracy(shallow, get_task("parity"), 6)


def test_final_only_tasks_score_only_valid_sequence_ends():
    """modular_arithmetic trains on odd lengths' final labels only: operator positions are never
    scored, so the compiled (exact) RNN keeps IIA 1 even with its operator outputs broken."""
    task = get_task("modular_arithmetic:modulus=3")
    model = compile_rnn(task.automaton)
    op = task.automaton.labels.index("op")
    with torch.no_grad():
        model.unembed.bias[op] -= 1e4  # never predicts "op": wrong where no training label exists
    res = interchange_intervention_accuracy(model, task, 9, n=64)
    assert np.nanmin(res.iia) == 1.0
    everything = interchange_intervention_accuracy(model, task, 9, n=64, final_only=False)
    assert np.nanmin(everything.iia) < 1.0


def test_rmt_memory_iia_equals_a_restart_from_the_source_memory():
    task = get_task("parity")
    model = build_model(ModelConfig("rmt", 2, 2, d_hidden=16, n_heads=2, segment_length=2, n_ctx=64, seed=3)).eval()
    length = 10
    res = interchange_intervention_accuracy(model, task, length, n=N, max_positions=10)
    assert res.unit == "segment" and res.positions == [0, 1, 2, 3]
    base, source = _pairs(task, length)
    for j, s in enumerate(res.positions):
        end = 2 * s + 1

        def patched(keep, end=end):
            with torch.no_grad():
                _, state = model(torch.as_tensor(source[keep, : end + 1]), return_state=True)
                rest = model(torch.as_tensor(base[keep, end + 1 :]), state=state)
            return torch.cat([torch.zeros(int(keep.sum()), end + 1, 2), rest], dim=1)

        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx(
            _reference(task, base, source, end, end + 1, patched), abs=1e-12)


def test_sites_and_errors():
    scratch = build_model(ModelConfig("scratchpad", 2, 2, d_hidden=8, n_heads=2, n_ctx=16))
    with pytest.raises(InputError, match="carries no state"):
        state_sites(scratch)
    lstm = build_model(ModelConfig("lstm", 2, 2, d_hidden=4))
    assert state_sites(lstm) == {"layers.0": ("layers.0.hook_h", "layers.0.hook_c")}
    two = build_model(ModelConfig("gru", 2, 2, d_hidden=4, n_layers=2))
    assert state_sites(two)["layers"] == ("layers.0.hook_h", "layers.1.hook_h")
    with pytest.raises(InputError, match="unknown IIA site"):
        interchange_intervention_accuracy(lstm, get_task("parity"), 5, sites=["layers.3"])

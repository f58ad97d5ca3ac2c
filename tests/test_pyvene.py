"""IIA against pyvene (the reference implementation of interchange interventions and DAS) on a
Transformer, whole vector and a fixed rotated subspace, value for value.

pyvene wraps a TransformerBridge through a thin module that gives it what it reads from
HuggingFace models (`config`, `device`, a registered type) and the hook point's module path.
It does not fit HookedRNN: pyvene's hooks assume `[batch, pos, d]` activations unless the model
is one of pyvene's own GRU classes (its stateful bookkeeping is keyed on those types), and the
RNN's hook points fire once per step with `[batch, d]`; so the RNN is checked against a
hand-written `run_with_hooks` subspace swap instead (no pyvene needed)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from fsm_probe.circuits.causal_abstraction import interchange_intervention_accuracy
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import eval_set

LENGTH, N = 9, 24


def _pairs(task):
    base = eval_set(task, LENGTH, n=N, seed=101, final_only=False).tokens
    source = eval_set(task, LENGTH, n=N, seed=202, final_only=False).tokens
    return base, source


def _scores(task, base, source, t, pred):
    """IIA and local IIA at position t from predictions on the kept pairs, labels written out."""
    a = task.automaton
    keep = a.run(source)[:, t] != a.run(base)[:, t]
    right = []
    for row, (b, s) in enumerate(zip(base[keep], source[keep], strict=True)):
        state = a.run(s[None])[0, t]
        labels = [a.outputs[state]]
        for sym in b[t + 1 :]:
            state = a.transitions[state, sym]
            labels.append(a.outputs[state])
        right.append(pred[row, t:] == np.array(labels))
    right = np.array(right)
    return float(right.mean()), float(right[:, 0].mean())


class _Wrapped(nn.Module):
    """What pyvene reads from a HuggingFace model, around one of ours."""

    device = torch.device("cpu")

    def __init__(self, model, d):
        super().__init__()
        self.model = model
        self.config = types.SimpleNamespace(hidden_size=d)

    def forward(self, tokens):
        return self.model(tokens)


@pytest.mark.parametrize("k", [None, 3])
def test_transformer_iia_matches_pyvene(k):
    import pyvene as pv  # in the test extra: a missing pyvene fails the suite instead of skipping it
    task = get_task("tomita3")
    model = build_model(ModelConfig("transformer", 2, 2, d_hidden=16, n_heads=2, n_layers=2, n_ctx=16, seed=2)).eval()
    site = "blocks.1.hook_resid_pre"
    pv.type_to_module_mapping.setdefault(_Wrapped, {})  # unknown components resolve as module paths
    pv.type_to_dimension_mapping.setdefault(_Wrapped, {})[f"model.{site}.output"] = ("hidden_size",)
    if k is None:
        kind, kwargs = pv.VanillaIntervention, {}
    else:
        kind, kwargs = pv.LowRankRotatedSpaceIntervention, {"low_rank_dimension": k}
    config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        component=f"model.{site}.output", unit="pos", max_number_of_units=1, **kwargs)],
        intervention_types=kind)
    pvm = pv.IntervenableModel(config, _Wrapped(model, 16))
    basis = None
    if k is not None:
        (intervention,) = pvm.interventions.values()
        intervention = intervention[0] if isinstance(intervention, tuple) else intervention
        basis = intervention.rotate_layer.weight.detach().T.clone()  # pyvene's random W [16, k]
        assert basis.shape == (k, 16)
    res = interchange_intervention_accuracy(model, task, LENGTH, n=N, sites=[site], max_positions=LENGTH, basis=basis)
    base, source = _pairs(task)
    a = task.automaton
    for j, t in enumerate(res.positions):
        keep = a.run(source)[:, t] != a.run(base)[:, t]
        m = int(keep.sum())
        with torch.no_grad():
            _, out = pvm({"tokens": torch.as_tensor(base[keep])}, [{"tokens": torch.as_tensor(source[keep])}],
                         {"sources->base": ([[[t]] * m], [[[t]] * m])})
        want = _scores(task, base, source, t, out.argmax(-1).numpy())
        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx(want, abs=1e-12), t


def test_rnn_subspace_iia_matches_a_hand_written_hook():
    task = get_task("cyclic:n=3")
    model = build_model(ModelConfig("gru", 2, 3, d_hidden=8, seed=1)).eval()
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(8, 2)))
    q = torch.as_tensor(q.T, dtype=torch.float32)
    res = interchange_intervention_accuracy(model, task, LENGTH, n=N, max_positions=LENGTH, basis=q)
    base, source = _pairs(task)
    a = task.automaton
    _, cache = model.run_with_cache(torch.as_tensor(source), names_filter="layers.0.hook_h")
    for j, t in enumerate(res.positions):
        keep = a.run(source)[:, t] != a.run(base)[:, t]
        donor = cache["layers.0.hook_h"][torch.as_tensor(keep), t]

        def hook(act, hook, t=t, donor=donor):
            if hook.pos != t:
                return act
            return act + ((donor - act) @ q.T) @ q

        with torch.no_grad():
            logits = model.run_with_hooks(torch.as_tensor(base[keep]), fwd_hooks=[("layers.0.hook_h", hook)])
        want = _scores(task, base, source, t, logits.argmax(-1).numpy())
        assert (res.iia[0, j], res.iia_local[0, j]) == pytest.approx(want, abs=1e-12), t

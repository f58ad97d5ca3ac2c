"""`explain` on compiled Transformers: IIA at exactly the cells where the construction puts the
state, checked against a hand-written swap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsm_probe.explain import explain
from fsm_probe.models.compiled_transformer import compile_transformer
from fsm_probe.tasks import get_task


def _hand_swap(model, automaton, hook: str, t: int, n: int = 96, length: int = 16, seed: int = 0):
    """Swap `hook` at position t from a source into a base run by hand; the patched label at t
    and the automaton's counterfactual (the source's state at t), on pairs whose states differ."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, automaton.n_symbols, (n, length))
    source = rng.integers(0, automaton.n_symbols, (n, length))
    keep = automaton.run(base)[:, t] != automaton.run(source)[:, t]
    base, source = torch.as_tensor(base[keep]), torch.as_tensor(source[keep])
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[hook])
        donor = cache[hook][:, t].clone()

        def swap(act, hook):
            act = act.clone()
            act[:, t] = donor
            return act

        patched = model.run_with_hooks(base, fwd_hooks=[(hook, swap)]).argmax(-1)[:, t].numpy()
    expected = automaton.outputs[automaton.run(source.numpy())[:, t]]
    return patched, expected, base.numpy(), source.numpy()


@pytest.mark.parametrize("spec", ["parity", "cyclic:n=3"])
def test_scan_is_verified_at_the_construction_cells(spec: str) -> None:
    task = get_task(spec)
    built = compile_transformer(task.automaton, "scan", n_ctx=16)
    cells = built.circuit.state_cells
    assert cells == {"blocks.1.hook_resid_pre": [1], "blocks.2.hook_resid_pre": [2, 3],
                     "blocks.3.hook_resid_pre": [4, 5, 6, 7]}
    e = explain(built, task, circuit=False)
    s = e.state_site
    assert s["site"] == "construction" and s["cells"] == cells and s["length"] == 16
    assert s["iia"] >= 0.99 and e.verdict == "implements"
    assert any("from the construction" in line for line in e.evidence)
    assert "the construction's cells blocks.1.hook_resid_pre@1" in e.text()

    # the same cell by hand: the full state is there, so the label follows the source
    hook, t = "blocks.2.hook_resid_pre", 3
    patched, expected, _, _ = _hand_swap(built.model, task.automaton, hook, t)
    hand = float((patched == expected).mean())
    assert hand == pytest.approx(s["iia_cells"][hook][cells[hook].index(t)]) == 1.0


def test_outside_its_cells_a_block_holds_only_a_segment() -> None:
    """One position past block 2's cells, its resid_pre holds x[t-3..t] only: a swap there gives
    the base's prefix followed by the source's last four symbols, not the source's state."""
    task = get_task("cyclic:n=3")
    a = task.automaton
    model = compile_transformer(a, "scan", n_ctx=16).model
    t = 4
    patched, expected, base, source = _hand_swap(model, a, "blocks.2.hook_resid_pre", t)
    mixed = np.concatenate([base[:, : t - 3], source[:, t - 3 : t + 1]], axis=1)
    np.testing.assert_array_equal(patched, a.run_outputs(mixed)[:, t])
    assert (patched == expected).mean() < 0.99


def test_shortcut_has_no_state_cells() -> None:
    task = get_task("cyclic:n=3")
    built = compile_transformer(task.automaton, "shortcut", n_ctx=16)
    assert built.circuit.state_cells == {} and "No state cells" in built.circuit.description
    e = explain(built, task, circuit=False)
    assert e.state_site is None and e.verdict == "unverified"
    assert any("no intermediate state site" in line for line in e.evidence)
    assert "no intermediate state site" in e.text()


@pytest.mark.slow
def test_das_at_the_best_site_when_the_whole_vector_falls_short() -> None:
    """A compiled scan passed without its circuit is searched like a trained model: its best
    site falls short of 0.99, so `das=True` runs DAS there, as `das` itself would."""
    from fsm_probe.circuits.das import das

    task = get_task("parity")
    model = compile_transformer(task.automaton, "scan", n_ctx=8).model
    plain = explain(model, task, circuit=False, iia_n=32)
    assert plain.state_site["iia"] < 0.99 and "das" not in plain.state_site
    e = explain(model, task, circuit=False, iia_n=32, das=True)
    s = e.state_site
    direct = das(model, task, site=s["site"], length=s["length"], n_test=32, local=True, seed=0)
    assert s["das"]["score"] == {str(k): v for k, v in direct.score().items()}
    assert s["das"]["dimension"] == direct.dimension and s["das"]["iia"] == direct.score()[s["das"]["k"]]
    assert f"DAS at {s['site']}" in e.text()

"""compile_transformer: automata as Transformer weights, exact at every length up to n_ctx, with a
ground-truth circuit that circuit discovery recovers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm_probe.automata import Automaton
from fsm_probe.circuits.discovery import METHODS, discover_circuit, mixed_corruption_pairs, roc_auc
from fsm_probe.circuits.patching import activation_patching, logit_diff
from fsm_probe.cli import main
from fsm_probe.errors import AutomatonError, CheckpointError, ConfigError
from fsm_probe.models import compile_transformer, model_config, predict_logits
from fsm_probe.models.compiled_transformer import shortcut_kind, transformation_monoid
from fsm_probe.tasks import get_task
from fsm_probe.training.checkpoint import load, save

SCAN_TASKS = ["parity", "cyclic:n=3", "cyclic:n=5", "flipflop", "symmetric", "tomita3", "tomita5",
              "tomita7", "dihedral", "abab", "adder", "even_pairs"]
SHORTCUT_TASKS = ["parity", "cyclic:n=3", "cyclic:n=5", "cyclic:n=6,n_actions=4", "tomita6", "flipflop",
                  "flipflop:n=3", "tomita1", "parity_check"]


def _inputs(a: Automaton, length: int, seed: int = 0) -> np.ndarray:
    """Random words plus constant words and words that end in long runs (every prefix of a word
    of length `length` is checked, since the models are causal)."""
    rng = np.random.default_rng(seed)
    words = [rng.integers(0, a.n_symbols, (48, length))]
    words.append(np.repeat(np.arange(a.n_symbols)[:, None], length, axis=1))
    tail = rng.integers(0, a.n_symbols, (16, length))
    for b in range(16):
        cut = int(rng.integers(0, length))
        tail[b, cut:] = rng.integers(a.n_symbols)
    words.append(tail)
    return np.concatenate(words)


def _assert_exact(model, a: Automaton, length: int, seed: int = 0) -> None:
    tokens = _inputs(a, length, seed)
    pred = predict_logits(model, tokens).argmax(-1).numpy()
    np.testing.assert_array_equal(pred, a.run_outputs(tokens))


@pytest.mark.parametrize("spec", SCAN_TASKS)
def test_scan_is_exact_up_to_n_ctx(spec: str) -> None:
    a = get_task(spec).automaton
    model = compile_transformer(a, "scan", n_ctx=32).model
    assert model_config(model).n_layers == 5
    _assert_exact(model, a, 32)


@pytest.mark.parametrize("n_ctx", [1, 2, 3, 17, 100])
def test_scan_at_odd_contexts(n_ctx: int) -> None:
    a = get_task("symmetric").automaton
    model = compile_transformer(a, "scan", n_ctx=n_ctx).model
    assert model_config(model).n_layers == max(1, int(np.ceil(np.log2(n_ctx))))
    _assert_exact(model, a, n_ctx)


@pytest.mark.parametrize("spec", SHORTCUT_TASKS)
def test_shortcut_is_exact_up_to_n_ctx(spec: str) -> None:
    a = get_task(spec).automaton
    model = compile_transformer(a, "shortcut", n_ctx=64).model
    assert model_config(model).n_layers == 1
    _assert_exact(model, a, 64)


def test_shortcut_kinds_and_refusals() -> None:
    assert shortcut_kind(get_task("parity").automaton) == "counter"
    assert shortcut_kind(get_task("flipflop").automaton) == "reset"
    assert shortcut_kind(get_task("symmetric").automaton) is None
    with pytest.raises(AutomatonError, match="scan"):
        compile_transformer(get_task("symmetric").automaton, "shortcut")
    with pytest.raises(AutomatonError, match="max_monoid"):
        compile_transformer(get_task("gridworld").automaton, "scan")
    with pytest.raises(ConfigError, match="construction"):
        compile_transformer(get_task("parity").automaton, "tracr")
    with pytest.raises(ConfigError, match="n_ctx"):
        compile_transformer(get_task("parity").automaton, n_ctx=0)
    with pytest.raises(AutomatonError):
        compile_transformer("parity")


def test_monoid_table_is_composition() -> None:
    a = get_task("tomita3").automaton.minimize()
    elements, prod, gens = transformation_monoid(a)
    assert len(elements) == 25
    rng = np.random.default_rng(0)
    for _ in range(50):
        i, j = rng.integers(len(elements), size=2)
        composed = tuple(elements[j][elements[i][q]] for q in range(a.n_states))
        assert elements[prod[i, j]] == composed
    for s, g in enumerate(gens):
        assert elements[g] == tuple(a.transitions[:, s])


@st.composite
def automata(draw):
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    table = draw(st.lists(st.lists(st.integers(0, n - 1), min_size=k, max_size=k), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    start = draw(st.integers(0, n - 1))
    return Automaton([f"a{i}" for i in range(k)], [f"s{i}" for i in range(n)], start, table,
                     [str(o) for o in outputs], name="random")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(automata(), st.integers(1, 20), st.integers(0, 10**6))
def test_scan_is_exact_on_random_automata(a: Automaton, n_ctx: int, seed: int) -> None:
    size = len(transformation_monoid(a.minimize())[0])
    if size > 32:
        with pytest.raises(AutomatonError, match="max_monoid=32"):
            compile_transformer(a, "scan", n_ctx=n_ctx, max_monoid=32)
        return
    built = compile_transformer(a, "scan", n_ctx=n_ctx, max_monoid=32)
    assert built.circuit.monoid_size == size
    model = built.model
    _assert_exact(model, a, n_ctx, seed)
    kind = shortcut_kind(a)
    if kind is not None:
        _assert_exact(compile_transformer(a, "shortcut", n_ctx=n_ctx).model, a, n_ctx, seed)


def _ablated_accuracy(model, a: Automaton, zeroed: list[str], length: int) -> float:
    """Accuracy with the outputs of `zeroed` components set to zero at every position."""
    hooks = []
    for name in zeroed:
        if name.endswith(".mlp"):
            hooks.append((f"blocks.{int(name[1:-4])}.hook_mlp_out", lambda act, hook: torch.zeros_like(act)))
        else:
            li, h = (int(x) for x in name[1:].split("H"))

            def zero(act, hook, h=h):
                act = act.clone()
                act[:, :, h] = 0
                return act

            hooks.append((f"blocks.{li}.attn.hook_z", zero))
    tokens = torch.as_tensor(_inputs(a, length))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        pred = model(tokens).argmax(-1).numpy()
    return float((pred == a.run_outputs(tokens.numpy())).mean())


@pytest.mark.parametrize(("spec", "construction"), [("parity", "scan"), ("symmetric", "scan"),
                                                     ("cyclic:n=3", "shortcut"), ("flipflop", "shortcut")])
def test_ground_truth_circuit_is_necessary_and_sufficient(spec: str, construction: str) -> None:
    a = get_task(spec).automaton
    built = compile_transformer(a, construction, n_ctx=16)
    model, truth = built.model, built.circuit
    rest = [c for c in truth.all_components if c not in truth.components]
    assert truth.components and rest and set(truth.components) <= set(truth.all_components)
    assert set(truth.roles) == set(truth.all_components)
    assert set(truth.positions) == set(truth.components)
    if construction == "scan":
        assert truth.positions["L3H0"] == [8, 15] and truth.positions["L0.mlp"] == [1, 15]
    assert _ablated_accuracy(model, a, rest, 16) == 1.0
    for c in truth.components:
        assert _ablated_accuracy(model, a, [c], 16) < 1.0, c


def test_checkpoint_round_trip_and_plain_transformer_lens(tmp_path) -> None:
    import transformer_lens.model_bridge.sources.native  # noqa: F401
    from safetensors.torch import load_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    task = get_task("tomita3")
    model = compile_transformer(task.automaton, "scan", n_ctx=16).model
    save(model, tmp_path / "run", task=task, training={"compiled": {"construction": "scan"}})
    loaded = load(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    plain = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg["tl_config"]))
    plain.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))
    plain.eval()
    tokens = torch.as_tensor(_inputs(task.automaton, 16))
    with torch.no_grad():
        ref = model(tokens)
        assert torch.equal(loaded.model(tokens), ref)
        assert torch.equal(plain(tokens), ref)
    np.testing.assert_array_equal(ref.argmax(-1).numpy(), task.automaton.run_outputs(tokens.numpy()))


def test_fast_patching_engine_matches_the_hooks() -> None:
    task = get_task("cyclic:n=3")
    model = compile_transformer(task.automaton, "scan", n_ctx=8).model
    clean, corrupted, _ = mixed_corruption_pairs(task, 8, n=8)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    for site in ("head_out", "mlp_out"):
        fast = activation_patching(model, clean, corrupted, metric, site=site, engine="fast")
        hooks = activation_patching(model, clean, corrupted, metric, site=site, engine="hooks")
        torch.testing.assert_close(fast.values, hooks.values, atol=1e-4, rtol=1e-5)


def test_mixed_pairs_change_the_label_at_one_position() -> None:
    task = get_task("flipflop")
    clean, corrupted, where = mixed_corruption_pairs(task, 12, n=16, seed=3)
    a = task.automaton
    assert (a.run_outputs(clean)[:, -1] != a.run_outputs(corrupted)[:, -1]).all()
    diff = clean != corrupted
    assert (diff.sum(1) == 1).all()
    np.testing.assert_array_equal(diff.argmax(1), where)


def test_roc_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(12)]
    scores = dict(zip(names, rng.integers(0, 4, 12).astype(float), strict=True))
    truth = names[:5]
    expected = roc_auc_score([n in truth for n in names], [scores[n] for n in names])
    assert roc_auc(scores, truth) == pytest.approx(expected)
    assert np.isnan(roc_auc(scores, names))


@pytest.mark.parametrize(("spec", "construction"), [("parity", "scan"), ("flipflop", "shortcut"),
                                                     ("cyclic:n=3", "shortcut"), ("symmetric", "scan")])
def test_exact_discovery_ranks_the_truth_first(spec: str, construction: str) -> None:
    task = get_task(spec)
    built = compile_transformer(task.automaton, construction, n_ctx=16)
    found = discover_circuit(built.model, task, n=24)
    assert {c.name for c in found.components} == set(built.circuit.all_components)
    assert roc_auc(found.scores(), built.circuit.components) >= 0.95
    assert set(found.circuit()) == set(built.circuit.components)


def test_every_method_ranks_every_component() -> None:
    task = get_task("cyclic:n=3")
    model = compile_transformer(task.automaton, "shortcut", n_ctx=8).model
    for method in METHODS:
        found = discover_circuit(model, task, method=method, n=16, top_k=4)
        assert sorted(c.name for c in found.components) == ["L0.mlp", "L0H0", "L0H1"], method
        assert found.to_dict()["method"] == method
    # The counter MLP is a staircase: its gradient is zero, so attribution misses the head that
    # feeds it, which exact patching finds.
    attribution = discover_circuit(model, task, method="attribution", n=16).scores()
    exact = discover_circuit(model, task, method="exact", n=16).scores()
    assert attribution["L0H0"] == 0.0 and exact["L0H0"] > 0.5


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize(("spec", "construction"), [("parity", "scan"), ("cyclic:n=3", "shortcut"),
                                                     ("flipflop", "scan")])
def test_cli_compile_eval_circuit(capsys, tmp_path, spec: str, construction: str) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "compile", "--task", spec, "--arch", "transformer",
                           "--construction", construction, "--out", out)
    assert code == 0, err
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["construction"] == construction and circuit["components"] and circuit["description"]
    code, text, err = run_cli(capsys, "eval", out, "--lengths", "8,32", "--json")
    assert code == 0, err
    report = json.loads(text)["lengths"]
    assert report["8"]["accuracy"] == 1.0 and report["32"]["sequence_accuracy"] == 1.0
    code, text, err = run_cli(capsys, "circuit", out, "--json", "--n", "16")
    assert code == 0, err
    found = json.loads(text)
    assert {c["name"] for c in found["components"]} == set(circuit["all_components"])
    assert found["roc_auc"] >= 0.95


def test_cli_compile_errors(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "compile", "--task", "symmetric", "--construction", "shortcut",
                           "--out", tmp_path / "x")
    assert code == 2 and "scan" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "compile", "--task", "parity", "--arch", "gru", "--out", tmp_path / "y")
    assert code == 2 and "--arch" in err
    code, _, err = run_cli(capsys, "compile", "--task", "gridworld", "--out", tmp_path / "z")
    assert code == 2 and "max_monoid" in err
    assert not (tmp_path / "x").exists()


def test_verified_cells_equal_the_full_sweep() -> None:
    from fsm_probe.circuits.discovery import verify_cells

    task = get_task("symmetric")
    model = compile_transformer(task.automaton, "scan", n_ctx=16).model
    clean, corrupted, _ = mixed_corruption_pairs(task, 16, n=16)
    a = task.automaton
    metric = logit_diff(a.run_outputs(clean)[:, -1], a.run_outputs(corrupted)[:, -1])
    rng = np.random.default_rng(0)
    for site in ("head_out", "mlp_out"):
        full = activation_patching(model, clean, corrupted, metric, site=site)
        cells = {tuple(int(rng.integers(n)) for n in full.values.shape) for _ in range(20)}
        measured = verify_cells(model, clean, corrupted, metric, [(site, c) for c in cells])
        for c in cells:
            assert measured[(site, c)] == pytest.approx(float(full.values[c]), abs=1e-5)


def test_a_compiled_transformer_brings_its_circuit_to_the_analyses() -> None:
    """Passed whole, a CompiledTransformer is analysed as compiled (discovery at its full context,
    as `fsm-probe circuit` on its checkpoint); its bare network gets the trained-model default."""
    task = get_task("cyclic:n=3")
    built = compile_transformer(task.automaton, "scan", n_ctx=32)
    assert discover_circuit(built, task, n=8).length == 32
    assert discover_circuit(built.model, task, n=8).length == 16


@pytest.mark.parametrize("construction", ["scan", "shortcut"])
def test_circuit_json_round_trip(tmp_path, construction: str) -> None:
    """A Run's circuit is saved as circuit.json and read back by load; a circuit.json from before
    state_cells loads too (a scan's derived from n_ctx), and one that is not a construction's is
    left to the commands that read it."""
    from fsm_probe.models.compiled_transformer import CompiledCircuit, scan_state_cells
    from fsm_probe.training import as_run

    task = get_task("cyclic:n=3")
    built = compile_transformer(task.automaton, construction, n_ctx=16)
    save(as_run(built, task), tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "circuit.json").read_text())
    assert stored["state_cells"] == ({"blocks.1.hook_resid_pre": [1], "blocks.2.hook_resid_pre": [2, 3],
                                      "blocks.3.hook_resid_pre": [4, 5, 6, 7]} if construction == "scan" else {})
    loaded = load(tmp_path / "run").circuit
    assert isinstance(loaded, CompiledCircuit) and loaded == built.circuit
    del stored["state_cells"]
    (tmp_path / "run" / "circuit.json").write_text(json.dumps(stored))
    old = load(tmp_path / "run").circuit
    assert old.state_cells == (scan_state_cells(16) if construction == "scan" else {})
    assert old.components == built.circuit.components
    (tmp_path / "run" / "circuit.json").write_text(json.dumps({"components": ["L0H0"]}))
    assert load(tmp_path / "run").circuit is None
    (tmp_path / "run" / "circuit.json").write_text(json.dumps({**stored, "bogus": 1}))
    with pytest.raises(CheckpointError, match="not a compiled circuit"):
        load(tmp_path / "run")

import json

import numpy as np
import pytest
import torch

from fsm_probe.automata import Automaton
from fsm_probe.circuits.tracing import causal_tracing
from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model, build_transformer

TOKENS = torch.randint(0, 2, (5, 8), generator=torch.Generator().manual_seed(3))


def _transformer():
    cfg = ModelConfig("transformer", d_vocab=2, d_out=2, n_layers=2, d_hidden=32, n_heads=4, n_ctx=64)
    return build_transformer(cfg).eval()


@pytest.mark.parametrize("make", [_transformer, lambda: build_model(ModelConfig("gru", d_vocab=2, d_out=2, n_layers=2, d_hidden=16)).eval()])
def test_restoring_corrupted_position_at_layer_zero_recovers_clean(make):
    model = make()
    res = causal_tracing(model, TOKENS, corrupt_positions=[2], noise=3.0, n_samples=4, seed=1)
    assert res.scores.shape == (2, 8)
    assert res.scores[0, 2] == pytest.approx(res.high_score, abs=1e-5)
    assert torch.allclose(res.scores[0, :2], torch.tensor(res.low_score), atol=1e-5)
    assert res.indirect_effect()[0, 2] == pytest.approx(res.total_effect, abs=1e-5)
    json.dumps(res.to_dict())


def test_noise_is_seeded_and_windows_run():
    model = _transformer()
    a = causal_tracing(model, TOKENS, corrupt_positions=[1, 3], kind="mlp", window=3, n_samples=3, seed=5)
    b = causal_tracing(model, TOKENS, corrupt_positions=[1, 3], kind="mlp", window=3, n_samples=3, seed=5)
    assert torch.equal(a.scores, b.scores)
    attn = causal_tracing(model, TOKENS, corrupt_positions=[1], kind="attn", n_samples=2)
    assert attn.scores.shape == (2, 8)


def test_symmetric_noise_uses_the_automaton():
    parity = Automaton(["0", "1"], ["even", "odd"], "even", [[0, 1], [1, 0]], outputs=[0, 1])
    model = _transformer()
    labels = parity.run_outputs(np.asarray(TOKENS))[:, -1]
    res = causal_tracing(model, TOKENS, labels, corrupt_positions=4, noise="symmetric", automaton=parity, n_samples=1)
    assert res.scores[0, 4] == pytest.approx(res.high_score, abs=1e-5)
    with pytest.raises(InputError):
        causal_tracing(model, TOKENS, noise="symmetric")
    with pytest.raises(InputError):
        causal_tracing(build_model(ModelConfig("gru", d_vocab=2, d_out=2)), TOKENS, kind="mlp")


def _flip_reference(model, tokens, position, layers, site):
    """p(clean prediction) with the bit at `position` flipped and `site` of `layers` restored at
    every position in turn, by hooks written here (independent of fsm_probe's patching)."""
    flipped = tokens.clone()
    flipped[:, position] = 1 - flipped[:, position]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        target = logits[:, -1].argmax(-1)
        out = []
        for p in range(tokens.shape[1]):
            def restore(name, p=p):
                def hook(act, hook):
                    act = act.clone()
                    act[:, p] = cache[name][:, p]
                    return act

                return name, hook

            hooks = [restore(f"blocks.{li}.{site}") for li in layers]
            probs = model.run_with_hooks(flipped, fwd_hooks=hooks)[:, -1].softmax(-1)
            out.append(float(probs[torch.arange(len(target)), target].mean()))
    return torch.tensor(out)


def test_window_restores_neighbouring_layers_together():
    parity = Automaton(["0", "1"], ["even", "odd"], "even", [[0, 1], [1, 0]], outputs=[0, 1])
    cfg = ModelConfig("transformer", d_vocab=2, d_out=2, n_layers=3, d_hidden=16, n_heads=2, n_ctx=64, seed=2)
    model = build_transformer(cfg).eval()

    def trace(window):
        return causal_tracing(model, TOKENS, corrupt_positions=4, noise="symmetric", automaton=parity,
                              kind="mlp", window=window, n_samples=1).scores

    one, three = trace(1), trace(3)
    for li, layers in enumerate([(0,), (1,), (2,)]):
        assert torch.allclose(one[li], _flip_reference(model, TOKENS, 4, layers, "hook_mlp_out"), atol=1e-5)
    for li, layers in enumerate([(0, 1), (0, 1, 2), (1, 2)]):
        assert torch.allclose(three[li], _flip_reference(model, TOKENS, 4, layers, "hook_mlp_out"), atol=1e-5)
    assert not torch.allclose(one, three, atol=1e-3)  # the window changes what is restored


@pytest.fixture(scope="module")
def compiled_parity_run(tmp_path_factory):
    from fsm_probe.models.compiled import compile_rnn
    from fsm_probe.tasks import get_task
    from fsm_probe.training.checkpoint import save

    task = get_task("parity")
    out = tmp_path_factory.mktemp("trace") / "run"
    save(compile_rnn(task.automaton), out, task=task)
    return out


def _cli(capsys, *args):
    from fsm_probe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_cli_symmetric_trace_on_an_exact_parity_rnn(capsys, compiled_parity_run):
    """The RNN computes parity exactly: a clean state restored before the swapped symbol is
    overwritten by the swap (p = low), from the swap on it carries the clean parity (p = high)."""
    code, out, _ = _cli(capsys, "trace", compiled_parity_run, "--noise", "symmetric", "--samples", "1",
                        "--length", "10", "--position", "4", "--json")
    assert code == 0
    res = json.loads(out)
    scores = np.array(res["scores"])
    assert res["low_score"] < 0.01 and res["high_score"] > 0.99
    np.testing.assert_allclose(scores[0, :4], res["low_score"], atol=1e-6)
    np.testing.assert_allclose(scores[0, 4:], res["high_score"], atol=1e-6)


@pytest.mark.parametrize("site", ["mlp_out", "attn_out", "resid_pre"])
def test_cli_sublayer_trace_on_an_rnn_is_a_one_line_error(capsys, compiled_parity_run, site):
    code, _, err = _cli(capsys, "trace", compiled_parity_run, "--site", site)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"site {site!r} cannot be traced" in lines[0] and "tracing sites are hidden" in lines[0]


@pytest.mark.parametrize(("kind", "new"), [("mlp", "--site mlp_out"), ("attn", "--site attn_out"),
                                           ("resid", "--site resid_pre (RNN: hidden, RMT: memory)")])
def test_cli_old_kind_option_names_the_new_site(capsys, compiled_parity_run, kind, new):
    code, _, err = _cli(capsys, "trace", compiled_parity_run, "--kind", kind)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "--kind is now --site" in lines[0] and new in lines[0] and repr(kind) in lines[0]


def test_cli_trace_site_hidden_is_the_default(capsys, compiled_parity_run):
    args = ("--noise", "symmetric", "--samples", "1", "--length", "10", "--position", "4", "--json")
    default = _cli(capsys, "trace", compiled_parity_run, *args)
    explicit = _cli(capsys, "trace", compiled_parity_run, "--site", "hidden", *args)
    assert default[0] == explicit[0] == 0 and json.loads(default[1]) == json.loads(explicit[1])

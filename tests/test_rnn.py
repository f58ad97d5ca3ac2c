"""HookedRNN: same function as torch's RNN modules (the second-order cell: as its own equations),
per-step hooks, caching, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformer_lens import ActivationCache

from fsm_probe.errors import InputError
from fsm_probe.models.config import ModelConfig
from fsm_probe.models.rnn import HookedRNN

ARCHS = ("rnn", "gru", "lstm")
ALL = (*ARCHS, "second_order")
TORCH_MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
D_VOCAB, D_OUT, D = 3, 4, 8


def make(arch: str, n_layers: int = 1, seed: int = 0) -> HookedRNN:
    cfg = ModelConfig(
        arch=arch, d_vocab=D_VOCAB, d_out=D_OUT, n_layers=n_layers, d_hidden=D, seed=seed
    )
    return HookedRNN(cfg)


def tokens(batch: int = 5, n_pos: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (batch, n_pos), generator=torch.Generator().manual_seed(seed))


class Reference(nn.Module):
    """nn.Embedding + a multi-layer torch RNN module + nn.Linear, weights copied from `model`."""

    def __init__(self, model: HookedRNN) -> None:
        super().__init__()
        cfg = model.cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_hidden)
        self.rnn = TORCH_MODULES[cfg.arch](
            cfg.d_hidden, cfg.d_hidden, cfg.n_layers, batch_first=True
        )
        self.unembed = nn.Linear(cfg.d_hidden, cfg.d_out)
        with torch.no_grad():
            self.embed.weight.copy_(model.embed.weight)
            self.unembed.load_state_dict(model.unembed.state_dict())
            for i, layer in enumerate(model.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.rnn, f"{name}_l{i}").copy_(getattr(layer.cell, f"{name}_l0"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, _ = self.rnn(self.embed(x))
        return self.unembed(hidden), hidden


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("stepwise", [False, True])
def test_matches_torch_modules(arch: str, n_layers: int, stepwise: bool) -> None:
    model = make(arch, n_layers)
    x = tokens()
    expected, _ = Reference(model)(x)
    got = model(x, stepwise=stepwise)
    assert got.shape == (5, 9, D_OUT)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_layers", [1, 2])
def test_cache_shapes_and_hidden_states(arch: str, n_layers: int) -> None:
    model = make(arch, n_layers)
    x = tokens()
    logits, cache = model.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == set(model.hook_dict)
    for name in model.hook_dict:
        assert cache[name].shape == (5, 9, D), name
    expected_logits, last_hidden = Reference(model)(x)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cache[f"layers.{n_layers - 1}.hook_h"], last_hidden, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("n_layers", [1, 2])
def test_second_order_is_one_matrix_per_symbol(n_layers: int) -> None:
    """Layer 0: h' = tanh(h @ weight_hh[x] + U[:, x] + b), indexing symbol x's matrix; layer 1: the
    bilinear form over the layer below's state, written as an explicit sum."""
    model = make("second_order", n_layers)
    x = tokens()
    _, cache = model.run_with_cache(x)
    assert cache["hook_embed"].shape == (5, 9, D_VOCAB)
    layers = [{k: v.detach() for k, v in layer.named_parameters()} for layer in model.layers]
    h = [torch.zeros(5, D) for _ in layers]
    for t in range(x.shape[1]):
        w0 = layers[0]
        h[0] = torch.stack([
            torch.tanh(h[0][b] @ w0["weight_hh"][x[b, t]] + w0["weight_ih"][:, x[b, t]] + w0["bias"])
            for b in range(5)
        ])
        if n_layers == 2:
            w1 = layers[1]
            bilinear = sum(h[0][:, j, None] * (h[1] @ w1["weight_hh"][j]) for j in range(D))
            h[1] = torch.tanh(bilinear + h[0] @ w1["weight_ih"].T + w1["bias"])
        for i in range(n_layers):
            torch.testing.assert_close(cache[f"layers.{i}.hook_h"][:, t], h[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x, stepwise=True), model(x, stepwise=False), atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x)[:, -1], model.unembed(h[-1]), atol=1e-5, rtol=0)
    assert "embed.weight" not in model.state_dict()  # the one-hot input is not a parameter


def test_gru_gates_recomputed() -> None:
    model = make("gru")
    x = tokens()
    _, cache = model.run_with_cache(x)
    cell = model.layers[0].cell
    w_ir, w_iz, w_in = cell.weight_ih_l0.detach().chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh_l0.detach().chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih_l0.detach().chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh_l0.detach().chunk(3)
    emb = model.embed.weight.detach()[x]
    h = torch.zeros(5, D)
    for t in range(x.shape[1]):
        e = emb[:, t]
        r = torch.sigmoid(e @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(e @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        n = torch.tanh(e @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
        h = (1 - z) * n + z * h
        for name, value in (("r", r), ("z", z), ("n", n), ("h", h)):
            torch.testing.assert_close(
                cache[f"layers.0.hook_{name}"][:, t], value, atol=1e-5, rtol=0
            )


def test_lstm_cache_matches_lstm_cell() -> None:
    model = make("lstm")
    x = tokens()
    _, cache = model.run_with_cache(x)
    lstm = model.layers[0].cell
    cell = nn.LSTMCell(D, D)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, f"{name}_l0"))
        w_ih, w_hh = lstm.weight_ih_l0.chunk(4), lstm.weight_hh_l0.chunk(4)
        b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).chunk(4)
        emb = model.embed(x)
        h = c = torch.zeros(5, D)
        for t in range(x.shape[1]):
            pre = [emb[:, t] @ w_ih[k].T + h @ w_hh[k].T + b[k] for k in range(4)]
            gates = {
                "i": torch.sigmoid(pre[0]),
                "f": torch.sigmoid(pre[1]),
                "g": torch.tanh(pre[2]),
                "o": torch.sigmoid(pre[3]),
            }
            h, c = cell(emb[:, t], (h, c))
            for name, value in {**gates, "h": h, "c": c}.items():
                torch.testing.assert_close(
                    cache[f"layers.0.hook_{name}"][:, t], value, atol=1e-5, rtol=0
                )


@pytest.mark.parametrize("arch", ALL)
def test_hook_edit_changes_only_later_positions(arch: str) -> None:
    model = make(arch, n_layers=2)
    x = tokens()
    clean = model(x, stepwise=True)
    step = 4
    seen = []

    def edit(h: torch.Tensor, hook) -> torch.Tensor | None:
        seen.append(hook.pos)
        return h + 1.0 if hook.pos == step else None

    patched = model.run_with_hooks(x, fwd_hooks=[("layers.0.hook_h", edit)])
    assert seen == list(range(9))
    torch.testing.assert_close(patched[:, :step], clean[:, :step], atol=0, rtol=0)
    assert (patched[:, step] - clean[:, step]).abs().max() > 1e-4
    assert (patched[:, -1] - clean[:, -1]).abs().max() > 1e-6
    assert not model.hooks_active()
    torch.testing.assert_close(model(x), clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ALL)
def test_zero_ablation_of_last_layer_changes_logits(arch: str) -> None:
    model = make(arch, n_layers=2)
    x = tokens()
    clean = model(x, stepwise=True)

    def ablate(h: torch.Tensor, hook) -> torch.Tensor | None:
        return torch.zeros_like(h) if hook.pos == 3 else None

    patched = model.run_with_hooks(x, fwd_hooks=[("layers.1.hook_h", ablate)])
    torch.testing.assert_close(patched[:, 3], model.unembed.bias.detach().expand(5, -1))
    torch.testing.assert_close(patched[:, :3], clean[:, :3], atol=0, rtol=0)
    assert (patched[:, 3] - clean[:, 3]).abs().max() > 1e-4


def test_hooks_active_detection() -> None:
    model = make("gru")
    assert not model.hooks_active()
    model.add_hook("hook_embed", lambda x, hook: None)
    assert not model.hooks_active()
    model.add_hook(lambda name: name.endswith("hook_z"), lambda x, hook: None)
    assert model.hooks_active()
    model.reset_hooks()
    assert not model.hooks_active()


@pytest.mark.parametrize("arch", ALL)
def test_initial_state_and_forward_from(arch: str) -> None:
    model = make(arch, n_layers=2)
    x = tokens()
    state = model.initial_state(5)
    assert set(state) == set(model.state_names)
    assert all(v.shape == (5, D) and not v.any() for v in state.values())
    full, _ = model(x, return_state=True)
    _, middle = model(x[:, :4], return_state=True)
    for stepwise in (False, True):
        rest, _ = model.forward_from(middle, x[:, 4:], stepwise=stepwise, return_state=True)
        torch.testing.assert_close(rest, full[:, 4:], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="hook_q"):
        model(x, state={"layers.0.hook_q": torch.zeros(5, D)})
    assert model.state_sites == tuple(model.state_names)
    rest, _ = model(x[:, 4:], state=middle, return_state=True)
    torch.testing.assert_close(rest, full[:, 4:], atol=1e-5, rtol=0)
    with pytest.warns(DeprecationWarning, match="initial_state"):
        old = model(x[:, 4:], initial_state=middle)
    assert torch.equal(old, rest)


def test_seeded_construction() -> None:
    a, b, c = make("lstm", seed=3), make("lstm", seed=3), make("lstm", seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    assert a.n_params == sum(p.numel() for p in a.parameters())
    assert "layers.0.cell.weight_ih_l0" in a.state_dict()


def test_token_validation() -> None:
    model = make("gru")
    with pytest.raises(InputError, match="3"):
        model(torch.tensor([[0, 1, 3]]))
    with pytest.raises(InputError, match="-1"):
        model(torch.tensor([[0, -1]]))
    with pytest.raises(InputError, match="float"):
        model(torch.zeros(2, 3))
    with pytest.raises(InputError, match="shape"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    assert model(np.array([0, 1, 2])).shape == (1, 3, D_OUT)
    for bad in (["a", "b"], [[0], [0, 1]], [None, 1]):
        with pytest.raises(InputError, match="integer array"):
            model(bad)
    assert model(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, D_OUT)
    _, cache = model.run_with_cache(torch.zeros(2, 0, dtype=torch.long))
    assert cache["layers.0.hook_h"].shape == (2, 0, D)

"""`HookedRNN`: a vanilla RNN, GRU, LSTM or second-order RNN with a hook point at every time step.

A vanilla, GRU or LSTM layer keeps its weights in a single-layer `torch.nn.RNN`/`GRU`/`LSTM`
(`layers.{i}.cell`), so parameter names are readable (`layers.0.cell.weight_ih_l0`) and training
can use torch's fused kernels. When a hook is attached to any per-step hook point, or when caching, the model
instead replays the same cell equations step by step in Python and fires the hook points, so a
hook that edits step `t` changes every later step.

Hook points (all `[batch, d_hidden]` per step, except `hook_embed` which is `[batch, pos, d_hidden]`,
the second-order RNN's `[batch, pos, d_vocab]`, and fires once before the recurrence):

- `layers.{i}.hook_h`: the hidden state after step `t`; `layers.{i}.hook_c`: the LSTM cell state;
- gates: GRU `hook_r`, `hook_z`, `hook_n`; LSTM `hook_i`, `hook_f`, `hook_g`, `hook_o`;
  vanilla and second-order RNN `hook_pre` (the pre-activation, before `tanh`).

The second-order RNN (`second_order`, Giles et al. 1992, the classic net of automaton extraction)
has no torch kernel: its symbol selects the recurrent matrix, `h' = tanh(W[x] h + b[x])`, so its
input is the one-hot symbol (`hook_embed` is `[batch, pos, d_vocab]`) and both paths are the same
Python loop.

Before calling a per-step hook point the model sets `hook.pos = t`, so a hook function reads
`hook.pos` to know the step (`hook_embed` has `hook.pos = None`). A hook's return value replaces
the activation; for `hook_h`/`hook_c` it is the recurrent state fed to the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import Slice

from ..errors import ConfigError, InputError
from .config import ModelConfig
from .protocol import State, check_no_legacy, pop_deprecated
from .tokens import check_tokens


def _fire(hook: HookPoint, x: Tensor, t: int) -> Tensor:
    hook.pos = t
    return hook(x)


class RecurrentLayer(nn.Module):
    """One recurrent layer: a torch RNN module holds the weights; `step` replays its equations."""

    state_names: tuple[str, ...] = ("h",)
    one_hot_input = False  # layer 0 reads a learned embedding of width d_hidden

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.cell = self.make_cell(d_in, d_hidden)

    def make_cell(self, d_in: int, d_hidden: int) -> nn.RNNBase:
        raise NotImplementedError

    def project(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Input and recurrent projections `W_ih x + b_ih`, `W_hh h + b_hh`."""
        cell = self.cell
        return (
            F.linear(x, cell.weight_ih_l0, cell.bias_ih_l0),
            F.linear(h, cell.weight_hh_l0, cell.bias_hh_l0),
        )

    def fused(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """All steps at once with torch's kernel: outputs `[batch, pos, d]` and the final state."""
        out, h_n = self.cell(x, state["h"].unsqueeze(0))
        return out, {"h": h_n[0]}

    def step(self, x: Tensor, state: State, t: int) -> State:
        raise NotImplementedError


class VanillaLayer(RecurrentLayer):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__(d_in, d_hidden)
        self.hook_pre = HookPoint()
        self.hook_h = HookPoint()

    def make_cell(self, d_in: int, d_hidden: int) -> nn.RNNBase:
        return nn.RNN(d_in, d_hidden, nonlinearity="tanh", batch_first=True)

    def step(self, x: Tensor, state: State, t: int) -> State:
        gi, gh = self.project(x, state["h"])
        pre = _fire(self.hook_pre, gi + gh, t)
        return {"h": _fire(self.hook_h, torch.tanh(pre), t)}


class GRULayer(RecurrentLayer):
    """PyTorch's GRU: r, z gates, candidate n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__(d_in, d_hidden)
        self.hook_r = HookPoint()
        self.hook_z = HookPoint()
        self.hook_n = HookPoint()
        self.hook_h = HookPoint()

    def make_cell(self, d_in: int, d_hidden: int) -> nn.RNNBase:
        return nn.GRU(d_in, d_hidden, batch_first=True)

    def step(self, x: Tensor, state: State, t: int) -> State:
        h = state["h"]
        gi, gh = self.project(x, h)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = _fire(self.hook_r, torch.sigmoid(i_r + h_r), t)
        z = _fire(self.hook_z, torch.sigmoid(i_z + h_z), t)
        n = _fire(self.hook_n, torch.tanh(i_n + r * h_n), t)
        return {"h": _fire(self.hook_h, (1 - z) * n + z * h, t)}


class LSTMLayer(RecurrentLayer):
    """PyTorch's LSTM: gates i, f, g, o; c' = f * c + i * g, h' = o * tanh(c')."""

    state_names = ("h", "c")

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__(d_in, d_hidden)
        self.hook_i = HookPoint()
        self.hook_f = HookPoint()
        self.hook_g = HookPoint()
        self.hook_o = HookPoint()
        self.hook_c = HookPoint()
        self.hook_h = HookPoint()

    def make_cell(self, d_in: int, d_hidden: int) -> nn.RNNBase:
        return nn.LSTM(d_in, d_hidden, batch_first=True)

    def fused(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        out, (h_n, c_n) = self.cell(x, (state["h"].unsqueeze(0), state["c"].unsqueeze(0)))
        return out, {"h": h_n[0], "c": c_n[0]}

    def step(self, x: Tensor, state: State, t: int) -> State:
        gi, gh = self.project(x, state["h"])
        pre_i, pre_f, pre_g, pre_o = (gi + gh).chunk(4, dim=-1)
        i = _fire(self.hook_i, torch.sigmoid(pre_i), t)
        f = _fire(self.hook_f, torch.sigmoid(pre_f), t)
        g = _fire(self.hook_g, torch.tanh(pre_g), t)
        o = _fire(self.hook_o, torch.sigmoid(pre_o), t)
        c = _fire(self.hook_c, f * state["c"] + i * g, t)
        return {"h": _fire(self.hook_h, o * torch.tanh(c), t), "c": c}


class SecondOrderLayer(nn.Module):
    """h' = tanh(sum_j x_j W_j h + U x + b): input coordinate j owns recurrent matrix W_j.

    On one-hot symbols (layer 0) that is one matrix and bias per symbol, a map from states to
    states that an arbitrary transition table needs (a first-order cell shares one matrix across
    symbols, and the input only shifts it). Weights: `weight_hh` `[d_in, d_hidden, d_hidden]`
    with `W_j h = h @ weight_hh[j]` (rows read the state, columns write the next one, so the stack
    over j is one `[d_in * d_hidden, d_hidden]` matrix without a copy), `weight_ih` `[d_hidden, d_in]`,
    `bias` `[d_hidden]`.
    """

    state_names: tuple[str, ...] = ("h",)
    one_hot_input = True  # layer 0 reads the symbol itself: W[x] is symbol x's matrix

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        # spectral radius about 1 for each W_j: the state neither dies out nor saturates at once;
        # a small additive drive (with a full-size one, which pulls every word towards its last
        # symbol's fixed point, the 50 x 10 random table was at 0.986 after 12000 steps against
        # the target in 8200: recipes_size.py)
        self.weight_hh = nn.Parameter(torch.randn(d_in, d_hidden, d_hidden) / d_hidden**0.5)
        self.weight_ih = nn.Parameter(torch.randn(d_hidden, d_in) * 0.01)
        self.bias = nn.Parameter(torch.zeros(d_hidden))
        self.hook_pre = HookPoint()
        self.hook_h = HookPoint()

    def _pre(self, x: Tensor, h: Tensor, drive: Tensor) -> Tensor:
        # (x outer h) @ stacked weights = sum_j x_j W_j h, without a [batch, d, d] matrix per step
        return (x.unsqueeze(-1) * h.unsqueeze(-2)).flatten(1) @ self.weight_hh.flatten(0, 1) + drive

    def fused(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        drive = F.linear(x, self.weight_ih, self.bias)
        h, out = state["h"], []
        for t in range(x.shape[1]):
            h = torch.tanh(self._pre(x[:, t], h, drive[:, t]))
            out.append(h)
        return torch.stack(out, dim=1), {"h": h}

    def step(self, x: Tensor, state: State, t: int) -> State:
        pre = _fire(self.hook_pre, self._pre(x, state["h"], F.linear(x, self.weight_ih, self.bias)), t)
        return {"h": _fire(self.hook_h, torch.tanh(pre), t)}


class OneHot(nn.Module):
    """The one-hot symbol as embedding (nothing learned): the second-order RNN's input."""

    def __init__(self, d_vocab: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.eye(d_vocab), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.weight)


LAYERS: dict[str, type[nn.Module]] = {
    "rnn": VanillaLayer, "gru": GRULayer, "lstm": LSTMLayer, "second_order": SecondOrderLayer,
}


def names_filter_fn(names_filter: Any) -> Callable[[str], bool]:
    """A hook-name predicate from `run_with_cache`'s `names_filter` (None, a name, names, callable)."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        wanted = set(names_filter)
        return lambda name: name in wanted
    return names_filter


class HookedRNN(HookedRootModule):
    """Embedding -> `n_layers` recurrent layers -> linear readout at every position.

    `forward` takes the fused torch path unless a hook is attached to a per-step hook point
    (forward, forward-pre or backward hooks, checked on each HookPoint's torch hook dicts) or
    `stepwise=True`; both paths compute the same function.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in LAYERS:
            raise ConfigError(f"HookedRNN needs arch {', '.join(LAYERS)}, got {cfg.arch!r}")
        self.cfg = cfg
        layer_cls = LAYERS[cfg.arch]
        one_hot = layer_cls.one_hot_input
        d_embed = cfg.d_vocab if one_hot else cfg.d_hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.embed = OneHot(cfg.d_vocab) if one_hot else nn.Embedding(cfg.d_vocab, cfg.d_hidden)
            self.hook_embed = HookPoint()
            self.layers = nn.ModuleList(
                layer_cls(d_embed if i == 0 else cfg.d_hidden, cfg.d_hidden) for i in range(cfg.n_layers)
            )
            self.unembed = nn.Linear(cfg.d_hidden, cfg.d_out)
        self.setup()
        self._step_hooks = [hp for name, hp in self.hook_dict.items() if name != "hook_embed"]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    state_segment_length = None  # the state advances with every token

    @property
    def state_sites(self) -> tuple[str, ...]:
        """Hook names of the recurrent state (the protocol's sites), the keys of `initial_state`."""
        return tuple(self.state_names)

    @property
    def state_names(self) -> list[str]:
        """Hook names of the recurrent state, the keys of `initial_state`."""
        return [
            f"layers.{i}.hook_{s}" for i, layer in enumerate(self.layers) for s in layer.state_names
        ]

    def hooks_active(self) -> bool:
        """Whether any per-step hook point has a torch forward, forward-pre or backward hook."""
        return any(
            hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks
            for hp in self._step_hooks
        )

    def initial_state(self, batch_size: int) -> State:
        """The state before any input (zeros), keyed by hook name, each `[batch, d_hidden]`."""
        zeros = torch.zeros(batch_size, self.cfg.d_hidden, device=self.device)
        return {name: zeros.clone() for name in self.state_names}

    def initial_logits(self) -> Tensor:
        """The readout of the initial state `[d_out]`: the model's label for the empty prefix."""
        last = f"layers.{self.cfg.n_layers - 1}.hook_h"
        return self.unembed(self.initial_state(1)[last])[0]

    def validate_tokens(self, tokens: Tensor | np.ndarray | Sequence) -> Tensor:
        """`tokens` as int64 `[batch, pos]` on the model's device, or `InputError`."""
        return check_tokens(tokens, self.cfg.d_vocab).to(self.device)

    def _split_state(self, state: State | None, batch_size: int) -> list[State]:
        full = self.initial_state(batch_size)
        if state:
            unknown = set(state) - set(full)
            if unknown:
                raise InputError(
                    f"unknown state name(s) {sorted(unknown)}; expected some of {list(full)}"
                )
            for name, value in state.items():
                value = torch.as_tensor(value, device=self.device, dtype=full[name].dtype)
                if value.shape not in {(self.cfg.d_hidden,), (batch_size, self.cfg.d_hidden)}:
                    raise InputError(
                        f"state {name} has shape {tuple(value.shape)}, expected "
                        f"[{batch_size}, {self.cfg.d_hidden}] or [{self.cfg.d_hidden}]"
                    )
                full[name] = value.expand(batch_size, -1)
        return [
            {s: full[f"layers.{i}.hook_{s}"] for s in layer.state_names}
            for i, layer in enumerate(self.layers)
        ]

    def forward(
        self,
        tokens: Tensor | np.ndarray | Sequence,
        *,
        state: State | None = None,
        return_state: bool = False,
        stepwise: bool | None = None,
        **deprecated: Any,
    ) -> Tensor | tuple[Tensor, State]:
        """Logits `[batch, pos, d_out]` (and the final state if `return_state`).

        `state` maps some of `state_sites` to `[batch, d]` or `[d]` tensors (missing names start
        at zero); see `fsm_probe.models.protocol`. `stepwise=None` picks the per-step path only
        when hooks are active. `initial_state=` is the deprecated spelling of `state=`.
        """
        passed, old = pop_deprecated("HookedRNN", deprecated, "initial_state", "state=")
        check_no_legacy("HookedRNN.forward", deprecated)
        if passed:
            if state is not None and old is not None:
                raise InputError("pass either state= or the deprecated initial_state=, not both")
            state = old if state is None else state
        tokens = self.validate_tokens(tokens)
        batch, n_pos = tokens.shape
        states = self._split_state(state, batch)
        x = self.hook_embed(self.embed(tokens))
        if n_pos == 0:
            x = x.new_zeros(batch, 0, self.cfg.d_hidden)
        elif stepwise or (stepwise is None and self.hooks_active()):
            x = self._run_stepwise(x, states)
        else:
            for i, layer in enumerate(self.layers):
                x, states[i] = layer.fused(x, states[i])
        logits = self.unembed(x)
        if not return_state:
            return logits
        final = {
            f"layers.{i}.hook_{s}": value
            for i, state in enumerate(states)
            for s, value in state.items()
        }
        return logits, final

    def _run_stepwise(self, x: Tensor, states: list[State]) -> Tensor:
        """Time-major loop over steps, updating `states` in place; last layer's `h` per step."""
        outputs = []
        for t in range(x.shape[1]):
            h = x[:, t]
            for i, layer in enumerate(self.layers):
                states[i] = layer.step(h, states[i], t)
                h = states[i]["h"]
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def forward_from(
        self, state: State, tokens: Tensor | np.ndarray | Sequence, **kwargs: Any
    ) -> Tensor | tuple[Tensor, State]:
        """Run `tokens` starting from `state` (e.g. a transplanted one); see `forward`."""
        return self.forward(tokens, state=state, **kwargs)

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: Any = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        **model_kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Run the model, returning its output and a TransformerLens `ActivationCache`.

        Per-step activations are stacked to `[batch, pos, d]`; `hook_embed` is already
        `[batch, pos, d]`. The cache holds positions `0..T-1`; see `initial_state` for the state
        before any input. Gradients (`incl_bwd`) are not supported.
        """
        if incl_bwd:
            raise NotImplementedError("HookedRNN.run_with_cache does not cache gradients")
        wanted = names_filter_fn(names_filter)
        steps: dict[str, list[Tensor]] = {name: [] for name in self.hook_dict if wanted(name)}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            steps[hook.name].append(tensor.detach().to(device) if device else tensor.detach())

        fwd = [(name, save) for name in steps]
        with self.hooks(fwd, [], reset_hooks_end, clear_contexts):
            out = self(*model_args, **model_kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        cache = {}
        for name, values in steps.items():
            if name == "hook_embed":
                value = values[0]
            elif values:
                value = torch.stack(values, dim=1)
            else:
                value = logits.new_zeros(logits.shape[0], 0, self.cfg.d_hidden, device=device)
            if pos_slice is not None:
                value = Slice.unwrap(pos_slice).apply(value, dim=1)
            if remove_batch_dim:
                if value.shape[0] != 1:
                    raise InputError(f"remove_batch_dim needs batch size 1, got {value.shape[0]}")
                value = value[0]
            cache[name] = value
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def add_caching_hooks(self, *args: Any, **kwargs: Any) -> dict:
        """Not supported: per-step hooks would overwrite each other; use `run_with_cache`."""
        raise NotImplementedError("HookedRNN caches per-step activations only via run_with_cache")

    def get_caching_hooks(self, *args: Any, **kwargs: Any) -> tuple[dict, list, list]:
        """Not supported: per-step hooks would overwrite each other; use `run_with_cache`."""
        raise NotImplementedError("HookedRNN caches per-step activations only via run_with_cache")

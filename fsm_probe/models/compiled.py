"""`compile_rnn`: a vanilla tanh `HookedRNN` whose weights implement a given automaton exactly.

Construction (one-hot over (state, last symbol) pairs, saturated tanh): hidden unit `(s, a)` is
+1 when the machine is in state `s` having just read `a`, and -1 otherwise. Its pre-activation is
`K * ([x = a] + [delta(p, a) = s] - 1.5)` where `p` is the state of the active unit, so exactly
one unit is on after every step. A last "started" unit is 0 in the initial (all-zero) state and
+1 afterwards; it carries the bias terms that differ between the first step (from the start
state, represented by the zero vector) and later ones. The readout gives label `outputs[s]` a
margin of `K` from any state, including the initial one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..automata.machine import Automaton
from ..errors import AutomatonError
from .config import ModelConfig
from .rnn import HookedRNN


def compile_rnn(automaton: Automaton, gain: float = 40.0, seed: int = 0) -> HookedRNN:
    """A `HookedRNN` (arch "rnn") whose argmax output after every prefix is `automaton`'s label.

    The hidden size is `n_states * n_symbols + 1`; `gain` is the saturation margin `K`.
    """
    if not isinstance(automaton, Automaton):
        raise AutomatonError(f"compile_rnn needs an Automaton, got {type(automaton).__name__}")
    if not gain >= 10:
        raise AutomatonError(f"gain must be >= 10 for the tanh units to saturate, got {gain}")
    a = automaton
    n, k, n_labels = a.n_states, a.n_symbols, a.n_labels
    d = n * k + 1
    flag = d - 1
    cfg = ModelConfig(arch="rnn", d_vocab=k, d_out=n_labels, d_hidden=d, seed=seed)
    model = HookedRNN(cfg)

    unit_state = np.repeat(np.arange(n), k)
    unit_symbol = np.tile(np.arange(k), n)
    # M[(s, a), (p, b)] = K [delta(p, a) = s]: the recurrent vote, in 0/1 coordinates.
    target = a.transitions[unit_state[None, :], unit_symbol[:, None]]
    m = gain * (target == unit_state[:, None]).astype(np.float64)
    from_start = gain * (a.transitions[a.start, unit_symbol] == unit_state)

    w_hh = np.zeros((d, d))
    w_hh[: n * k, : n * k] = m / 2
    w_hh[: n * k, flag] = m.sum(1) / 2 - from_start
    b = np.zeros(d)
    b[: n * k] = from_start - 1.5 * gain
    b[flag] = gain
    w_ih = np.zeros((d, d))
    w_ih[np.arange(n * k), unit_symbol] = gain

    label_of_unit = a.outputs[unit_state]
    onehot = (label_of_unit[None, :] == np.arange(n_labels)[:, None]).astype(np.float64)
    w_out = np.zeros((n_labels, d))
    w_out[:, : n * k] = gain * onehot / 2
    start_label = gain * (np.arange(n_labels) == a.outputs[a.start])
    w_out[:, flag] = gain * onehot.sum(1) / 2 - start_label
    embed = np.zeros((k, d))
    embed[np.arange(k), np.arange(k)] = 1.0

    cell = model.layers[0].cell

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    with torch.no_grad():
        model.embed.weight.copy_(t(embed))
        cell.weight_ih_l0.copy_(t(w_ih))
        cell.weight_hh_l0.copy_(t(w_hh))
        cell.bias_ih_l0.copy_(t(b))
        cell.bias_hh_l0.zero_()
        model.unembed.weight.copy_(t(w_out))
        model.unembed.bias.copy_(t(start_label))
    return model.eval()

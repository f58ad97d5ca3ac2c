"""`compile_rnn`: a `HookedRNN` whose weights implement a given automaton exactly.

Vanilla tanh RNN (`arch="rnn"`; one-hot over (state, last symbol) pairs, saturated tanh): hidden
unit `(s, a)` is +1 when the machine is in state `s` having just read `a`, and -1 otherwise. Its
pre-activation is `K * ([x = a] + [delta(p, a) = s] - 1.5)` where `p` is the state of the active
unit, so exactly one unit is on after every step.

Second-order RNN (`arch="second_order"`; Omlin & Giles 1996): one unit per state, +1 for the
current state and -1 elsewhere; symbol `a`'s matrix is the transition table itself,
`W_a[s, p] = K [delta(p, a) = s]`, so `W_a h` moves the +1 along `a`'s edges.

Both keep a last "started" unit that is 0 in the initial (all-zero) state and +1 afterwards; it
carries the bias terms that differ between the first step (from the start state, represented by
the zero vector) and later ones. The readout gives label `outputs[s]` a margin of `K` from any
state, including the initial one.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validate import check_bytes
from ..automata.machine import Automaton
from ..errors import AutomatonError
from .config import ModelConfig
from .rnn import HookedRNN


def compile_rnn(automaton: Automaton, gain: float = 40.0, seed: int = 0, arch: str = "rnn") -> HookedRNN:
    """A `HookedRNN` whose argmax output after every prefix is `automaton`'s label.

    `arch="rnn"`: hidden size `n_states * n_symbols + 1`; `arch="second_order"`: `n_states + 1`.
    `gain` is the saturation margin `K`.
    """
    if not isinstance(automaton, Automaton):
        raise AutomatonError(f"compile_rnn needs an Automaton, got {type(automaton).__name__}")
    if not gain >= 10:
        raise AutomatonError(f"gain must be >= 10 for the tanh units to saturate, got {gain}")
    if arch not in ("rnn", "second_order"):
        raise AutomatonError(f"compile_rnn builds arch 'rnn' or 'second_order', got {arch!r}")
    n, k = automaton.n_states, automaton.n_symbols
    # float64 construction arrays and the float32 weights: 3 + 2 d x d matrices (rnn), k of each (second_order)
    d = n + 1 if arch == "second_order" else n * k + 1
    check_bytes((13.0 * k if arch == "second_order" else 32.0) * d * d,
                f"compile_rnn(arch={arch!r}) on {n} states x {k} symbols ({d} units)",
                "the automaton's size (or use arch='second_order': one unit per state)" if arch == "rnn" else "the automaton's size")
    return (_second_order if arch == "second_order" else _vanilla)(automaton, gain, seed)


def _vanilla(a: Automaton, gain: float, seed: int) -> HookedRNN:
    n, k = a.n_states, a.n_symbols
    d = n * k + 1
    flag = d - 1
    cfg = ModelConfig(arch="rnn", d_vocab=k, d_out=a.n_labels, d_hidden=d, seed=seed)
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

    w_out, start_label = _readout(a, unit_state, gain)
    embed = np.zeros((k, d))
    embed[np.arange(k), np.arange(k)] = 1.0

    cell = model.layers[0].cell
    with torch.no_grad():
        model.embed.weight.copy_(_t(embed))
        cell.weight_ih_l0.copy_(_t(w_ih))
        cell.weight_hh_l0.copy_(_t(w_hh))
        cell.bias_ih_l0.copy_(_t(b))
        cell.bias_hh_l0.zero_()
        model.unembed.weight.copy_(_t(w_out))
        model.unembed.bias.copy_(_t(start_label))
    return model.eval()


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def _readout(a: Automaton, unit_state: np.ndarray, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """`unembed` weight and bias: state units are +-1, the last ("started") unit 0 or 1."""
    onehot = (a.outputs[unit_state][None, :] == np.arange(a.n_labels)[:, None]).astype(np.float64)
    start_label = gain * (np.arange(a.n_labels) == a.outputs[a.start])
    w_out = np.zeros((a.n_labels, len(unit_state) + 1))
    w_out[:, :-1] = gain * onehot / 2
    w_out[:, -1] = gain * onehot.sum(1) / 2 - start_label
    return w_out, start_label


def _second_order(a: Automaton, gain: float, seed: int) -> HookedRNN:
    n, k = a.n_states, a.n_symbols
    cfg = ModelConfig(arch="second_order", d_vocab=k, d_out=a.n_labels, d_hidden=n + 1, seed=seed)
    model = HookedRNN(cfg)
    states = np.arange(n)
    moves = a.transitions.T[:, None, :] == states[None, :, None]  # [a, s, p]: delta(p, a) = s
    first = a.transitions[a.start][:, None] == states[None, :]  # [a, s]: delta(start, a) = s
    w = np.zeros((k, n + 1, n + 1))
    w[:, :n, :n] = gain * moves
    # with h = 2 e_p - 1, W_a h = 2K [delta(p, a) = s] - K indegree; the started unit adds the
    # indegree back and cancels the first step's drive
    w[:, :n, n] = gain * moves.sum(2) - 2 * gain * first
    drive = np.zeros((n + 1, k))
    drive[:n] = (2 * gain * first - gain).T
    drive[n] = gain
    w_out, start_label = _readout(a, states, gain)
    layer = model.layers[0]
    with torch.no_grad():
        layer.weight_hh.copy_(_t(w.transpose(0, 2, 1)))  # stored as h @ weight_hh[a]
        layer.weight_ih.copy_(_t(drive))
        layer.bias.zero_()
        model.unembed.weight.copy_(_t(w_out))
        model.unembed.bias.copy_(_t(start_label))
    return model.eval()

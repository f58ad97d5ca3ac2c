"""Collect activations at a hook site over a sample of sequences, including the initial state.

A `Collection` stores one row per prefix: row `(i, p)` is the activation after reading the first
`p` tokens of sequence `i` (`p = 0` is the state before any input). Each row knows the row before
it and the symbol read in between, so transitions can be read off any partition of the rows.

An RMT's memory (`hook_memory`) advances once per segment of `L = segment_length` tokens, so
there a row is a segment boundary and the symbol read in between is the whole segment: the
extraction alphabet is Sigma^L (`fsm_probe.automata.segment_tokens` numbers the segments) and the
automaton to compare with is the task's `power(L)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validate as _v
from ..automata.machine import segment_tokens, segment_words
from ..errors import ConfigError, InputError
from ..models import as_tokens, model_config, predict_logits
from ..models.protocol import (
    feeds_back_outputs,
    has_initial_readout,
    initial_state,
    state_segment_length,
    state_sites,
    steps_per_token,
)
from ..models.rmt import MEMORY_HOOK

Site = str | Sequence[str] | None


@dataclass
class Collection:
    """Activations `[n_seq, T + 1, d]` (position 0 = initial state) with inputs and predictions.

    `predictions[i, p]` is the model's label after `p` tokens and `true_states[i, p]` the task
    automaton's state (None without a task). `virtual_initial` is true when the model has no
    initial activation at the site (Transformers): position 0 then holds zeros. For an RMT's
    memory, `segment_length` is L, positions are segment boundaries, `tokens` are segment ids
    over `n_token_symbols` token symbols, and `vectors` are the flattened memories `[M * d]`.
    """

    tokens: np.ndarray
    vectors: np.ndarray
    predictions: np.ndarray
    true_states: np.ndarray | None
    site: tuple[str, ...]
    virtual_initial: bool = False
    segment_length: int | None = None
    n_token_symbols: int | None = None

    @property
    def n_sequences(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    def flat(self) -> np.ndarray:
        """Rows `[n_seq * (T + 1), d]` in sequence-major order."""
        return self.vectors.reshape(-1, self.dim)

    def flat_predictions(self) -> np.ndarray:
        return self.predictions.reshape(-1)

    def flat_true_states(self) -> np.ndarray | None:
        return None if self.true_states is None else self.true_states.reshape(-1)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(source_row, symbol, target_row)` for every step of every sequence."""
        b, t = self.tokens.shape
        rows = np.arange(b * (t + 1)).reshape(b, t + 1)
        return rows[:, :-1].reshape(-1), self.tokens.reshape(-1), rows[:, 1:].reshape(-1)

    def initial_rows(self) -> np.ndarray:
        return np.arange(self.n_sequences) * (self.length + 1)


def memory_segment_length(model: nn.Module) -> int | None:
    """Tokens per state update when extraction reads a memory advanced once per segment (an
    RMT's), else None (`fsm_probe.models.protocol.state_segment_length`)."""
    return state_segment_length(model)


def resolve_site(model: nn.Module, site: Site) -> tuple[str, ...]:
    """Hook names to read; default: the full recurrent state (RNN), the memory (RMT) or the
    last residual stream (Transformer)."""
    cfg = model_config(model)
    if feeds_back_outputs(model):
        raise InputError(
            "state extraction needs a state carried from step to step; the scratchpad has none "
            "(it only feeds back its own label outputs): use a recurrent net, a transformer, or an "
            f"rmt (site {MEMORY_HOOK!r})"
        )
    sites = state_sites(model)
    if state_segment_length(model) is not None:
        if site is None or site == MEMORY_HOOK or (
            isinstance(site, list | tuple) and tuple(site) == sites
        ):
            return sites
        raise InputError(
            f"on a segment memory model, extraction reads the memory passed between segments: site must be "
            f"{MEMORY_HOOK!r}, got {site!r} (the inner hooks fire once per segment, not per state)"
        )
    if site is None:
        return sites or (f"blocks.{cfg.n_layers - 1}.hook_resid_post",)
    names = (site,) if isinstance(site, str) else tuple(site)
    if not names or not all(isinstance(s, str) for s in names):
        raise ConfigError(f"site must be a hook name or a list of hook names, got {site!r}")
    known = model.hook_dict
    for name in names:
        if name not in known:
            hint = ", ".join(n for n in known if "hook_h" in n or "resid_post" in n or "hook_c" in n)
            raise ConfigError(f"unknown hook site {name!r}; for example: {hint}")
        if name == "hook_embed" or name.startswith("embed") or name.startswith("pos_embed"):
            raise ConfigError(f"site {name!r} is an input embedding, not a state")
    return names


def initial_vector(model: nn.Module, site: tuple[str, ...]) -> np.ndarray | None:
    """The site's activation before any input (RNN state hooks: the initial state; gates: 0)."""
    if not steps_per_token(model):
        return None
    init = initial_state(model, 1)
    parts = [
        init[name][0] if name in init else torch.zeros(model.cfg.d_hidden, device=model.device)
        for name in site
    ]
    return torch.cat(parts).detach().cpu().numpy()


@torch.no_grad()
def initial_logits(model: nn.Module) -> torch.Tensor | None:
    """The readout of the initial state, i.e. the model's label for the empty prefix."""
    return model.initial_logits() if has_initial_readout(model) else None


@torch.no_grad()
def model_labels(model: nn.Module, tokens: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's label `[B, T + 1]` after every prefix, the empty one included (-1 if unknown)."""
    body = predict_logits(model, tokens, batch_size=batch_size).argmax(-1).cpu().numpy()
    init = initial_logits(model)
    first = -1 if init is None else int(init.argmax())
    return np.concatenate([np.full((body.shape[0], 1), first, dtype=np.int64), body], axis=1)


def _cached_chunks(
    model: nn.Module, t: torch.Tensor, names: list[str], batch_size: int
) -> Iterator[tuple[torch.Tensor, Any]]:
    """`(logits, cache)` of `run_with_cache` on `t` in chunks of `batch_size`, in eval mode (the
    model's mode is restored afterwards)."""
    was = model.training
    model.eval()
    try:
        for s in range(0, t.shape[0], batch_size):
            logits, cache = model.run_with_cache(t[s : s + batch_size], names_filter=names)
            yield (logits[0] if isinstance(logits, tuple) else logits), cache
    finally:
        model.train(was)


@torch.no_grad()
def collect(
    model: nn.Module,
    tokens: np.ndarray,
    site: Site = None,
    automaton=None,
    batch_size: int = 256,
) -> Collection:
    """Run `model` over `tokens` `[B, T]` in chunks of `batch_size`, caching `site` at every step.

    `automaton` (the task's, optional) supplies the true states. On an RMT the rows are segment
    boundaries (see the module docstring): the length must be a multiple of the segment length.
    """
    names = resolve_site(model, site)
    t = as_tokens(model, tokens)
    if t.shape[1] < 1:
        raise InputError("collect needs sequences of at least one token")
    _v.positive_int(batch_size, "batch_size")
    if memory_segment_length(model) is not None:
        return _collect_memory(model, t, names, automaton, batch_size)
    vecs, preds = [], []
    for logits, cache in _cached_chunks(model, t, list(names), batch_size):
        vecs.append(torch.cat([cache[n] for n in names], dim=-1).float().cpu().numpy())
        preds.append(logits.argmax(-1).cpu().numpy())
    body = np.concatenate(vecs)
    init = initial_vector(model, names)
    virtual = init is None
    if virtual:
        init = np.zeros(body.shape[-1], dtype=body.dtype)
    vectors = np.concatenate([np.broadcast_to(init, (body.shape[0], 1, body.shape[-1])), body], axis=1)
    logits0 = initial_logits(model)
    if logits0 is not None:
        first = int(logits0.argmax())
    elif automaton is not None:
        first = int(automaton.outputs[automaton.start])
    else:
        first = int(np.bincount(np.concatenate(preds)[:, 0]).argmax())
    predictions = np.concatenate(
        [np.full((body.shape[0], 1), first, dtype=np.int64), np.concatenate(preds).astype(np.int64)],
        axis=1,
    )
    tok = t.cpu().numpy()
    true_states = None
    if automaton is not None:
        run = automaton.run(tok)
        true_states = np.concatenate(
            [np.full((tok.shape[0], 1), automaton.start, dtype=np.int64), run], axis=1
        )
    return Collection(tok, vectors.astype(np.float32), predictions, true_states, names, virtual)


@torch.no_grad()
def _collect_memory(
    model: nn.Module, t: torch.Tensor, names: tuple[str, ...], automaton, batch_size: int
) -> Collection:
    """`collect` on a state advanced once per segment (an RMT's memory): one row per segment
    boundary, the initial state first."""
    L = memory_segment_length(model)
    base = model_config(model).d_vocab
    tok = t.cpu().numpy()
    if automaton is not None:
        automaton.check_tokens(tok)
    if tok.shape[1] % L:
        raise InputError(
            f"the rmt's memory advances once per segment of {L} tokens: sequence length "
            f"{tok.shape[1]} is not a multiple of segment_length={L}"
        )
    vecs, preds = [], []
    for logits, cache in _cached_chunks(model, t, list(names), batch_size):
        mem = torch.cat([cache[n].reshape(*cache[n].shape[:2], -1) for n in names], dim=-1)
        vecs.append(mem.float().cpu().numpy())
        preds.append(logits[:, L - 1 :: L].argmax(-1).cpu().numpy())
    body = np.concatenate(vecs)
    body_preds = np.concatenate(preds).astype(np.int64)
    start = initial_state(model, 1)
    init = torch.cat([start[n].reshape(1, 1, -1) for n in names], -1).detach().float().cpu().numpy()
    vectors = np.concatenate([np.broadcast_to(init, (body.shape[0], 1, body.shape[-1])), body], axis=1)
    if automaton is not None:
        first = int(automaton.outputs[automaton.start])
    else:
        first = int(np.bincount(body_preds[:, 0]).argmax())
    predictions = np.concatenate(
        [np.full((body.shape[0], 1), first, dtype=np.int64), body_preds], axis=1
    )
    true_states = None
    if automaton is not None:
        run = automaton.run(tok)[:, L - 1 :: L]
        true_states = np.concatenate(
            [np.full((tok.shape[0], 1), automaton.start, dtype=np.int64), run], axis=1
        )
    return Collection(
        segment_tokens(tok, base, L), vectors.astype(np.float32), predictions, true_states,
        names, False, L, base,
    )


def word_tokens(model: nn.Module, words: np.ndarray, n_symbols: int) -> np.ndarray:
    """The model's input for `words` over an extraction alphabet of `n_symbols` symbols: the
    words themselves, or on an RMT the tokens of their segments (`n_symbols` must be k^L for the
    model's k tokens: an automaton over segments, such as `task.automaton.power(L)`)."""
    L = memory_segment_length(model)
    if L is None:
        return np.asarray(words)
    k = model_config(model).d_vocab
    if n_symbols != k**L:
        raise InputError(
            f"on a segment memory model with segment_length={L} and {k} tokens the automaton must read the {k ** L} "
            f"segments (e.g. task.automaton.power({L})), not {n_symbols} symbols"
        )
    return segment_words(words, k, L)


def word_labels(
    model: nn.Module, words: np.ndarray, n_symbols: int, batch_size: int = 512
) -> np.ndarray:
    """`model_labels` after every prefix of `words` over the extraction alphabet: on an RMT,
    the label at each segment end `[B, S + 1]` (the first column -1)."""
    labels = model_labels(model, word_tokens(model, words, n_symbols), batch_size)
    L = memory_segment_length(model)
    return labels if L is None else labels[:, ::L]


def sample_words(
    n_symbols: int, n: int, length: int, seed: int = 0, exhaustive: int = 512
) -> np.ndarray:
    """`[m, length]` words: every prefix of length <= depth (padded randomly) plus `n` random ones.

    The depth is the largest one with `n_symbols ** depth <= exhaustive`, so short prefixes are
    covered completely and transitions out of every reachable short state are observed.
    """
    if n_symbols < 1 or length < 1 or n < 0:
        raise ConfigError(f"bad sampling sizes: n_symbols={n_symbols}, n={n}, length={length}")
    rng = np.random.default_rng(seed)
    depth = 0
    while n_symbols ** (depth + 1) <= exhaustive and depth + 1 <= length:
        depth += 1
    head = np.array(list(product(range(n_symbols), repeat=depth)), dtype=np.int64).reshape(n_symbols**depth, depth)
    tail = rng.integers(0, n_symbols, (head.shape[0], length - depth))
    words = np.concatenate([head, tail], axis=1)
    return np.concatenate([words, rng.integers(0, n_symbols, (n, length))]).astype(np.int64)

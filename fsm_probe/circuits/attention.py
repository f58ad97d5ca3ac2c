"""Attention patterns, per-head statistics and attention dilution (Transformers only).

The parity shortcut's signature is a head that averages uniformly over the causal prefix: its
output at position t is the share of 1s so far, from which a later layer reads off parity. Such a
head has maximal entropy and zero distance from uniform causal averaging. Its weakness shows in
`attention_dilution`: the weight on any one token falls like 1/T, so on inputs longer than those
seen in training the difference one symbol makes shrinks below what the next layer resolves.

An RMT attends within one segment, `[read memory (M) | tokens (S) | write memory (M)]`:
`segment_patterns` gives those patterns and `head_stats` adds how much weight the token queries
(`memory_read`) and the write slots (`memory_write`) put on the read memory. Its attention cannot
dilute with length (every segment has S + 2M keys), so `attention_dilution` refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..models import as_tokens, model_config
from ..tasks import Task
from ..tasks.datasets import eval_set
from ..training.run import Run, as_run, unwrap
from .sites import RMT, TRANSFORMER, family, layer_hooks


def _require_attention(model: nn.Module, rmt: bool = False) -> str:
    """The model's family: a Transformer, or with `rmt` an RMT (which attends within segments)."""
    cfg = model_config(model)
    fam = family(cfg)
    if fam == RMT and not rmt:
        raise InputError("an RMT attends within segments: use segment_patterns and head_stats")
    if fam not in (TRANSFORMER, RMT):
        raise InputError(f"attention analysis needs a Transformer; a {cfg.arch} has no attention")
    return fam


def _cached_patterns(model: nn.Module, tokens: Any, batch_size: int, layer_dim: int) -> np.ndarray:
    """Every layer's `attn.hook_pattern` on `tokens`, stacked along `layer_dim`."""
    t = as_tokens(model, tokens)
    names = layer_hooks(model_config(model), "pattern")
    wanted = set(names)
    out = []
    with torch.no_grad():
        for start in range(0, t.shape[0], batch_size):
            _, cache = model.run_with_cache(
                t[start : start + batch_size], names_filter=lambda name: name in wanted
            )
            out.append(torch.stack([cache[name] for name in names], dim=layer_dim))
    return torch.cat(out).numpy()


def segment_patterns(model: nn.Module, tokens: Any, batch_size: int = 256) -> np.ndarray:
    """An RMT's attention weights `[batch, segment, layer, head, S+2M, S+2M]` on `tokens`.

    Queries and keys index `[read memory | segment tokens | write memory]`; a last, shorter
    segment is padded (see `fsm_probe.models.rmt`).
    """
    cfg = model_config(model)
    if family(cfg) != RMT:
        raise InputError(f"segment_patterns needs an rmt, got {cfg.arch!r}")
    return _cached_patterns(model, tokens, batch_size, layer_dim=2)


def attention_patterns(model: nn.Module, tokens: Any, batch_size: int = 256) -> np.ndarray:
    """Attention weights `[batch, layer, head, query, key]` on `tokens`."""
    _require_attention(model)
    return _cached_patterns(model, tokens, batch_size, layer_dim=1)


def token_labels(task: Any, tokens: Iterable[int]) -> list[str]:
    """Unique axis labels `symbol·position` for one sequence (plotly merges repeated labels)."""
    alphabet = task.automaton.alphabet
    return [f"{alphabet[int(tok)]}·{i}" for i, tok in enumerate(tokens)]


def _query_stats(p: np.ndarray, causal: bool, queries: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of patterns `[..., query, key]` whose rows are at positions `queries`."""
    keys = np.arange(p.shape[-1])
    visible = keys[None, :] <= queries[:, None] if causal else np.ones((len(queries), len(keys)), bool)
    n_keys = visible.sum(-1)
    uniform = visible / n_keys[:, None]
    plogp = np.where(p > 0, p * np.log(np.clip(p, 1e-30, None)), 0.0)
    rows = np.arange(len(queries))
    return {
        "entropy": -plogp.sum(-1) / np.log(np.maximum(n_keys, 2)),
        "uniform_distance": 0.5 * np.abs(p - uniform).sum(-1),
        "prev_token": p[..., rows, np.maximum(queries - 1, 0)],
        "first_token": p[..., 0],
        "self_token": p[..., rows, queries],
        "max_weight": p.max(-1),
    }


STAT_NAMES = ("entropy", "uniform_distance", "prev_token", "first_token", "self_token", "max_weight")


@dataclass
class HeadStats:
    """Per layer x head, averaged over sequences and query positions 1..T-1.

    `entropy` is normalised by log(number of visible keys): 1 means uniform. `uniform_distance`
    is the total-variation distance from uniform averaging over the visible keys (0 = uniform).
    `prev_token`, `first_token`, `self_token`: mean weight on key t-1, key 0 and key t.
    RMT (see the module doc): the queries are a segment's tokens, keys index the segment's
    `[read memory | tokens | write memory]`; `memory_read` is the weight the token queries put on
    the read memory, `memory_write` the weight the write slots put on it (None otherwise). There
    key t-1 of a segment's first token is the last read-memory slot and key 0 is memory slot 0,
    so `prev_token` and `first_token` mix memory and token reads.
    """

    entropy: np.ndarray
    uniform_distance: np.ndarray
    prev_token: np.ndarray
    first_token: np.ndarray
    self_token: np.ndarray
    max_weight: np.ndarray
    length: int
    n_sequences: int
    memory_read: np.ndarray | None = None
    memory_write: np.ndarray | None = None

    @property
    def stat_names(self) -> tuple[str, ...]:
        """The statistics this result holds (`STAT_NAMES`, plus the RMT's memory weights)."""
        extra = tuple(n for n in ("memory_read", "memory_write") if getattr(self, n) is not None)
        return STAT_NAMES + extra

    @property
    def n_layers(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.entropy.shape[1])

    def most_uniform(self) -> tuple[int, int]:
        """(layer, head) of the head closest to uniform causal averaging."""
        layer, head = np.unravel_index(int(np.argmin(self.uniform_distance)), self.entropy.shape)
        return int(layer), int(head)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: `head` ("L0H1"), `layer`, `index` and every statistic."""
        return [
            {
                "head": f"L{layer}H{head}",
                "layer": layer,
                "index": head,
                **{name: float(getattr(self, name)[layer, head]) for name in self.stat_names},
            }
            for layer in range(self.n_layers)
            for head in range(self.n_heads)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "n_sequences": self.n_sequences,
            "most_uniform": list(self.most_uniform()),
            **{name: getattr(self, name).tolist() for name in self.stat_names},
        }


def head_stats_from_patterns(patterns: np.ndarray, causal: bool = True) -> HeadStats:
    """`HeadStats` of patterns `[batch, layer, head, query, key]` (at least 2 positions)."""
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise InputError(f"patterns must be [batch, layer, head, query, key], got {patterns.shape}")
    if patterns.shape[-1] < 2:
        raise InputError("head statistics need sequences of at least 2 tokens")
    stats = _query_stats(patterns[..., 1:, :].astype(np.float64), causal, np.arange(1, patterns.shape[-1]))
    means = {name: v.mean(axis=(0, -1)) for name, v in stats.items()}
    return HeadStats(**means, length=int(patterns.shape[-1]), n_sequences=int(patterns.shape[0]))


def head_stats(
    model: nn.Module | Run,
    task: Task | None = None,
    tokens: Any = None,
    *,
    length: int = 20,
    n: int = 128,
    seed: int = 0,
) -> HeadStats:
    """Per-head statistics on `tokens` (default: `n` sequences of `length` from the task of the
    `Run` or the `task` given; with `tokens`, no task is needed).

    RMT: over the token queries of every complete segment, with the memory weights added.
    """
    if tokens is None:
        run = as_run(model, task)
        model = run.model
        tokens = _task_tokens(run.task, length, n, seed)
    model = unwrap(model)
    fam = _require_attention(model, rmt=True)
    cfg = model_config(model)
    causal = cfg.attention_dir == "causal"
    if fam != RMT:
        return head_stats_from_patterns(attention_patterns(model, tokens), causal)
    S, M = cfg.segment_length, cfg.n_memory
    p = segment_patterns(model, tokens)
    n_seg = p.shape[1] if p.shape[1] * S == as_tokens(model, tokens).shape[1] else p.shape[1] - 1
    if n_seg == 0:
        raise InputError(f"head statistics need at least one complete segment of {S} tokens")
    p = p[:, :n_seg].reshape(-1, *p.shape[2:]).astype(np.float64)
    stats = _query_stats(p[..., M : M + S, :], causal, np.arange(M, M + S))
    means = {name: v.mean(axis=(0, -1)) for name, v in stats.items()}
    return HeadStats(
        **means, length=S + 2 * M, n_sequences=int(len(tokens)),
        memory_read=p[..., M : M + S, :M].sum(-1).mean(axis=(0, -1)),
        memory_write=p[..., M + S :, :M].sum(-1).mean(axis=(0, -1)),
    )


def _task_tokens(task: Task, length: int, n: int, seed: int) -> np.ndarray:
    return eval_set(task, length, n=n, seed=seed, final_only=False).tokens


@dataclass
class DilutionResult:
    """How attention at the last position changes with sequence length, per layer x head.

    `max_weight[i]`: mean over sequences of the largest weight any one key gets at length
    `lengths[i]`; `reference` is 1/T, what uniform averaging gives every key. `exponent` is the
    slope of log(max_weight) against log(T): about -1 for a head that dilutes like uniform
    averaging, about 0 for a head that keeps attending to one token.
    """

    lengths: list[int]
    max_weight: np.ndarray
    uniform_distance: np.ndarray
    entropy: np.ndarray
    reference: np.ndarray
    exponent: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "lengths": list(self.lengths),
            "max_weight": self.max_weight.tolist(),
            "uniform_distance": self.uniform_distance.tolist(),
            "entropy": self.entropy.tolist(),
            "reference": self.reference.tolist(),
            "exponent": self.exponent.tolist(),
        }


def attention_dilution(
    model: nn.Module | Run,
    task: Task | None = None,
    lengths: Iterable[int] = (8, 16, 32, 64),
    *,
    n: int = 64,
    seed: int = 0,
) -> DilutionResult:
    """Attention statistics at the last position for each length (each at most the context), on
    sequences of the task of the `Run` or of `task`."""
    run = as_run(model, task)
    model = run.model
    cfg = model_config(model)
    if family(cfg) == RMT:
        raise InputError(
            "an RMT's attention cannot dilute with length: every segment has the same "
            "segment_length + 2 * n_memory keys"
        )
    _require_attention(model)
    lengths = sorted({int(x) for x in lengths})
    if len(lengths) < 2 or lengths[0] < 2:
        raise ConfigError(f"dilution needs at least two lengths >= 2, got {lengths}")
    if lengths[-1] > cfg.n_ctx:
        raise ConfigError(f"length {lengths[-1]} exceeds the Transformer's context n_ctx={cfg.n_ctx}")
    causal = cfg.attention_dir == "causal"
    maxw, tv, ent, actual = [], [], [], []
    for length in lengths:
        p = attention_patterns(model, _task_tokens(run.task, length, n, seed))
        t = p.shape[-1]  # the task's length rule may shorten the requested length
        if t in actual:
            continue
        actual.append(t)
        stats = _query_stats(p[..., -1:, :].astype(np.float64), causal, np.array([t - 1]))
        maxw.append(stats["max_weight"].mean(axis=(0, -1)))
        tv.append(stats["uniform_distance"].mean(axis=(0, -1)))
        ent.append(stats["entropy"].mean(axis=(0, -1)))
    if len(actual) < 2:
        raise ConfigError(f"dilution needs at least two distinct evaluated lengths, got {actual}")
    lengths = actual
    max_weight = np.stack(maxw)
    log_t = np.log(np.asarray(lengths, dtype=np.float64))
    centred = log_t - log_t.mean()
    log_w = np.log(np.clip(max_weight, 1e-12, None))
    exponent = np.tensordot(centred, log_w - log_w.mean(0), axes=(0, 0)) / (centred**2).sum()
    return DilutionResult(
        lengths=lengths,
        max_weight=max_weight,
        uniform_distance=np.stack(tv),
        entropy=np.stack(ent),
        reference=1.0 / np.asarray(lengths, dtype=np.float64),
        exponent=exponent,
    )

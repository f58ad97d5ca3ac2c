"""`FSMExtractor`: collect -> PCA -> abstract (sweeping the number of states) -> refine -> vote ->
minimize, or L*; `check_extraction` scores the result; `save_extraction` writes the files.

The number of abstract states is chosen automatically: sizes are tried from small to large, and
the first whose (refined, minimized) automaton agrees with the network on held-out sequences at
`fidelity_target` wins. There is no fixed ceiling: past 64 the size grows by a quarter at a time
for as long as held-out fidelity keeps improving (it stops when k has grown 4-fold since the
held-out errors last fell by a tenth, or when there are no more distinct states to split). Only `max_states` (None by
default) or `time_limit` can stop the growth early; then `capped_` says which limit was hit
(`{"limit": "max_states"|"time_limit", "value": ...}`, else None) and `extraction.json` has
`"capped": true`. When none reaches the target (an imperfect network,
whose behaviour usually drifts with length), the extractor collects again with longer words
(`retry_length`), validates on words twice as long as well, and tries more sizes and k-means
seeds, plus "capped" versions of automata above `max_states` (the best-supported states kept, the
others' rows moved to the nearest kept state); the best fidelity within `max_states` is kept (a
smaller automaton only within `tolerance` of it).

On an RMT the extractor reads the memory (`hook_memory`), which advances once per segment of L
tokens: the alphabet is Sigma^L (segment ids as in `fsm_probe.automata.segment_tokens`), word
lengths (`length`, `val_length`, `retry_length`, the checks' `lengths`) are in tokens rounded
down to whole segments, fidelity compares labels at segment ends, and `check_extraction`
compares with the task's `power(L)`.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits
from torch import nn

from ..automata.machine import Automaton, segment_alphabet, segment_words
from ..errors import ConfigError, InputError
from ..io import atomic_write_json, atomic_write_text, replace_directory
from ..models import model_config
from ..models.rmt import MEMORY_HOOK
from .abstraction import Reducer, _nearest, _unique_rows, make_abstraction
from .build import (
    build_automaton,
    refine_partition,
    state_map,
    to_graph,
    with_free_start,
    write_dot,
    write_graphml,
)
from .checks import (
    agreement,
    compare_to_task,
    interchange_accuracy,
    name_like_task,
    purity,
    task_accuracy,
)
from .collect import (
    Collection,
    collect,
    is_rnn,
    memory_segment_length,
    resolve_site,
    sample_words,
    word_labels,
    word_tokens,
)
from .counters import fit_counter_machine
from .lstar import lstar

METHODS = ("kmeans", "grid", "gmm", "agglomerative", "lstar")
DEFAULT_METHOD = "kmeans"
CLUSTER_SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)
GROWTH = 1.25
UNIQUE_MAX = 2000
PATIENCE = 4
IMPROVEMENT = 0.9
GRID_SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16)
RETRY_SIZES = (28, 36, 44, 56)
RETRY_FIT_ROWS = 8000
COUNTER_TARGET = 0.99


def _task_automaton(model: nn.Module, task: Any) -> Automaton | None:
    if task is None:
        task = getattr(model, "fsm_task", None)
    if task is None:
        return None
    if isinstance(task, Automaton):
        return task
    a = getattr(task, "automaton", None)
    if not isinstance(a, Automaton):
        raise ConfigError(f"task must be a fsm_probe Task or Automaton, got {type(task).__name__}")
    return a


class FSMExtractor(BaseEstimator):
    """Recover the finite-state machine a hooked model implements.

    `fit(model, task=None)` sets `automaton_` (minimized), `graph_` (networkx, with evidence),
    `raw_automaton_`, `n_states_`, `n_states_raw_`, `n_conflicts_`, `fidelity_` (held-out
    agreement with the network), `curve_` (one entry per size tried) and `seconds_`.
    `predict(tokens)` gives the automaton's label after every prefix. On an RMT (see the module
    docstring) `segment_length_` is L and the automaton reads segments; else it is None.
    """

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        site: str | list[str] | None = None,
        n_components: int | float | str | None = "auto",
        sizes: tuple[int, ...] | None = None,
        refine: bool = True,
        squash: bool = True,
        max_states: int | None = None,
        fidelity_target: float = 0.999,
        tolerance: float = 0.002,
        n_words: int = 256,
        length: int = 20,
        n_val: int = 256,
        val_length: int = 40,
        retry_length: int | None = 50,
        lstar_rounds: int = 25,
        time_limit: float = 20.0,
        empty_output: str = "free",
        counters: str = "auto",
        seed: int = 0,
    ) -> None:
        self.method = method
        self.site = site
        self.n_components = n_components
        self.sizes = sizes
        self.refine = refine
        self.squash = squash
        self.max_states = max_states
        self.fidelity_target = fidelity_target
        self.tolerance = tolerance
        self.n_words = n_words
        self.length = length
        self.n_val = n_val
        self.val_length = val_length
        self.retry_length = retry_length
        self.lstar_rounds = lstar_rounds
        self.time_limit = time_limit
        self.empty_output = empty_output
        self.counters = counters
        self.seed = seed

    def _validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown extraction method {self.method!r}; expected one of {', '.join(METHODS)}")
        for name in ("max_states", "n_words", "length", "n_val", "val_length", "lstar_rounds"):
            v = getattr(self, name)
            if name == "max_states" and v is None:
                continue
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.retry_length is not None and (
            not isinstance(self.retry_length, int | np.integer) or isinstance(self.retry_length, bool)
            or self.retry_length < 1
        ):
            raise ConfigError(f"retry_length must be a positive integer or None, got {self.retry_length!r}")
        if self.counters not in ("auto", "off"):
            raise ConfigError(f"counters must be 'auto' or 'off', got {self.counters!r}")
        if self.empty_output not in ("free", "network"):
            raise ConfigError(f"empty_output must be 'free' or 'network', got {self.empty_output!r}")
        if not 0 < self.fidelity_target <= 1:
            raise ConfigError(f"fidelity_target must be in (0, 1], got {self.fidelity_target}")
        if not isinstance(self.time_limit, int | float) or not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a positive number of seconds, got {self.time_limit!r}")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.sizes is not None:
            if not len(self.sizes) or any(not isinstance(s, int | np.integer) or s < 1 for s in self.sizes):
                raise ConfigError(f"sizes must be positive integers, got {self.sizes!r}")

    def fit(self, model: nn.Module, task: Any = None) -> FSMExtractor:
        """Extract from `model`; `task` (a Task or Automaton, default `model.fsm_task`) names the
        symbols and labels and gives the true states."""
        self._validate()
        with threadpool_limits(1):
            return self._fit(model, task)

    def _fit(self, model: nn.Module, task: Any) -> FSMExtractor:
        t0 = time.perf_counter()
        cfg = model_config(model)
        truth = _task_automaton(model, task)
        if truth is not None:
            alphabet, labels = truth.alphabet, truth.labels
            if len(labels) != cfg.d_out or len(alphabet) > cfg.d_vocab:
                raise ConfigError(
                    f"task ({len(alphabet)} symbols, {len(labels)} labels) does not fit the model "
                    f"({cfg.d_vocab} inputs, {cfg.d_out} outputs)"
                )
        else:
            alphabet = tuple(str(i) for i in range(cfg.d_vocab))
            labels = tuple(str(i) for i in range(cfg.d_out))
        self.alphabet_, self.labels_ = tuple(alphabet), tuple(labels)
        self.task_automaton_ = truth
        self.site_ = resolve_site(model, self.site)
        self.segment_length_ = memory_segment_length(model)
        if self.segment_length_ is not None:
            self.alphabet_ = segment_alphabet(self.alphabet_, self.segment_length_)
        k = len(self.alphabet_)
        rng_seed = self.seed
        words = sample_words(k, self.n_words, self._steps(self.length), seed=rng_seed)
        self.collection_ = self._collect(model, words)
        self.val_tokens_ = np.random.default_rng(rng_seed + 1).integers(
            0, k, (self.n_val, self._steps(self.val_length))
        )
        self.val_labels_ = word_labels(model, self.val_tokens_, k)[:, 1:]
        self.start_output_ = int(self.collection_.predictions[0, 0])
        self.votes_ = self.collection_.flat_predictions().copy()
        if self.empty_output == "free":
            self.votes_[self.collection_.initial_rows()] = -1
        name = "extracted" if truth is None else f"extracted:{truth.name}"
        if self.method == "lstar":
            self._fit_lstar(model, name)
        else:
            self._fit_clusters(model, name)
        if truth is not None:  # states named as in the user's automaton when it matches
            seen = truth if self.segment_length_ is None else truth.power(self.segment_length_)
            self.automaton_ = self.built_.minimal = name_like_task(self.automaton_, seen)
        self.n_states_ = self.automaton_.n_states
        self.graph_ = to_graph(
            self.built_, self.row_blocks_, self.collection_.flat(), self.collection_.flat_predictions(),
            method=self.method, site=",".join(self.site_),
        )
        self.row_states_ = self.built_.state_map[self.row_blocks_]
        self.finite_state_, self.counter_fit_, self.counter_machine_ = True, None, None
        self.finite_state_evidence_ = None
        if self.counters == "auto" and self.segment_length_ is None:
            self._check_counters(model, task)
        self.seconds_ = time.perf_counter() - t0
        return self

    def _check_counters(self, model: nn.Module, task: Any) -> None:
        """Is the network finite-state on the sampled lengths? The automaton is validated on
        words twice `val_length` long (half of them from the task's sampler when it has one);
        if it falls short of `fidelity_target` there, a counter machine is fitted
        (`fsm_probe.extraction.counters`) and, when it agrees with the network at
        `COUNTER_TARGET` on held-out words and has at most half the automaton's errors on the
        long ones, the network is reported as not finite-state (`finite_state_ = False`,
        `counter_machine_`)."""
        cfg = model_config(model)
        k = len(self.alphabet_)
        n_ctx = None if cfg.is_rnn else cfg.n_ctx
        long_len = min(2 * self.val_length, n_ctx or 2 * self.val_length)
        rng = np.random.default_rng(self.seed + 7)
        sampler = getattr(task if task is not None else getattr(model, "fsm_task", None), "sampler", None)
        half = max(1, self.n_val // 2)
        parts = [rng.integers(0, k, (half, long_len))]
        fit_parts = [sample_words(k, self.n_words, min(2 * self.length, long_len), seed=self.seed + 8)]
        if sampler is not None and getattr(sampler, "n_symbols", None) == k:
            parts.append(sampler.sample(rng, half, long_len))
            fit_parts.append(sampler.sample(rng, self.n_words, fit_parts[0].shape[1]))
        long_tok = np.concatenate(parts)
        long_lab = word_labels(model, long_tok, k)[:, 1:]
        fsm_long = agreement(self.automaton_, long_tok, long_lab)["per_position"]
        evidence = {"fsm_fidelity": self.fidelity_, "fsm_fidelity_long": fsm_long, "long_length": long_len}
        self.finite_state_evidence_ = evidence
        if min(self.fidelity_, fsm_long) >= self.fidelity_target:
            return
        words = np.concatenate(fit_parts)
        col = self._collect(model, words)
        votes = col.flat_predictions().copy()
        votes[col.initial_rows()] = -1
        vals = [(self.val_tokens_, self.val_labels_), (long_tok, long_lab)]
        name = "counters" if self.task_automaton_ is None else f"counters:{self.task_automaton_.name}"
        fit = fit_counter_machine(col.tokens, col.flat(), votes, vals[:1], self.alphabet_, self.labels_, name=name)
        if fit is None or fit.machine.n_counters < 1:
            return
        cm_long = agreement_cm(fit.machine, long_tok, long_lab)
        evidence.update(counter_fidelity=fit.fidelity, counter_fidelity_long=cm_long)
        if (
            fit.fidelity >= COUNTER_TARGET and (1 - cm_long) <= 0.5 * (1 - fsm_long)
            and fit.machine.n_states < self.automaton_.n_states
        ):
            self.finite_state_, self.counter_fit_, self.counter_machine_ = False, fit, fit.machine
            self.capped_ = None  # the automaton search could not end: the network counts

    def _steps(self, length: int) -> int:
        """Word length in extraction symbols for `length` tokens (whole segments on an RMT)."""
        return length if self.segment_length_ is None else max(1, length // self.segment_length_)

    def _collect(self, model: nn.Module, words: np.ndarray) -> Collection:
        tokens = word_tokens(model, words, len(self.alphabet_))
        return collect(model, tokens, self.site_, self.task_automaton_)

    def _fit_clusters(self, model: nn.Module, name: str) -> None:
        deadline = time.perf_counter() + self.time_limit
        grow = self.sizes is None and self.method != "grid"
        sizes = list(self.sizes or (GRID_SIZES if self.method == "grid" else CLUSTER_SIZES))
        sweep = _Sweep(self, model, name, self.collection_, self.votes_)
        vals = [(self.val_tokens_, self.val_labels_)]
        cands = sweep.run(sizes, [self.seed], vals, deadline, stop=True, grow=grow)
        self.capped_ = sweep.capped
        limit = _limit(self.max_states)
        if not any(c.fid >= self.fidelity_target and c.n <= limit for c in cands) and (
            self.retry_length is not None and time.perf_counter() < deadline
        ):
            # An imperfect network: its behaviour drifts with length, so collect longer words,
            # validate on longer ones too, and try more sizes and seeds (and caps of oversized
            # automata) within half of the remaining time.
            budget = time.perf_counter() + 0.5 * (deadline - time.perf_counter())
            cfg = model_config(model)
            n_ctx = None if cfg.is_rnn else cfg.n_ctx
            k, rl = len(self.alphabet_), min(self.retry_length, n_ctx or self.retry_length)
            rng = np.random.default_rng(self.seed + 2)
            long_val = rng.integers(
                0, k, (max(1, self.n_val // 2), self._steps(min(2 * rl, n_ctx or 2 * rl)))
            )
            vals.append((long_val, word_labels(model, long_val, k)[:, 1:]))
            for c in cands:
                c.fid = min(c.fid, _fidelity(c.built.minimal, vals[1:]))
            long_col = self._collect(
                model, sample_words(k, self.n_words, self._steps(rl), seed=self.seed + 3)
            )
            votes = long_col.flat_predictions().copy()
            if self.empty_output == "free":
                votes[long_col.initial_rows()] = -1
            tried = max(c.curve["size"] for c in cands)
            more = sorted({*sizes, *RETRY_SIZES, *itertools.takewhile(lambda s: s <= tried, _sizes())}) if grow else sizes
            seeds = [self.seed] if self.method in ("grid", "agglomerative") else [
                self.seed + i for i in range(3)
            ]
            cands += _Sweep(self, model, name, long_col, votes).run(
                more, seeds, vals, budget, stop=False, refine=False, max_fit=RETRY_FIT_ROWS
            )
        self.curve_ = [c.curve for c in cands]
        chosen = _select(cands, self.fidelity_target, self.tolerance, limit)
        if self.capped_ is None and self.max_states is not None and chosen.fid < self.fidelity_target and (
            chosen.curve.get("capped") or any(c.n > limit for c in cands)
        ):
            # a larger automaton was found but not allowed
            self.capped_ = {"limit": "max_states", "value": int(self.max_states)}
        if chosen.fid >= self.fidelity_target and not chosen.curve.get("capped"):
            self.capped_ = None
        self.collection_, self.votes_ = chosen.col, chosen.votes
        self.reducer_ = chosen.reducer
        self.fidelity_, self.built_, self.row_blocks_ = chosen.fid, chosen.built, chosen.part
        self.abstraction_ = chosen.abstraction
        self.automaton_ = chosen.built.minimal
        self.raw_automaton_ = chosen.built.raw
        self.n_states_raw_ = chosen.built.raw.n_states
        self.n_conflicts_ = chosen.built.n_conflicts

    def _fit_lstar(self, model: nn.Module, name: str) -> None:
        if not is_rnn(model):
            raise ConfigError(
                "lstar needs an rnn, gru or lstm (the empty word's label is its initial readout); "
                "a Transformer or an rmt gives no label before the first token: use a clustering method"
            )
        res = lstar(
            model, self.alphabet_, self.labels_, max_rounds=self.lstar_rounds,
            max_states=_limit(self.max_states, 1000), time_limit=self.time_limit, seed=self.seed,
            name=name,
        )
        self.lstar_ = res
        self.capped_ = None if res.complete else (
            {"limit": "time_limit", "value": float(self.time_limit)} if res.seconds >= self.time_limit
            else {"limit": "max_states", "value": _limit(self.max_states, 1000)}
        )
        hyp = res.automaton
        col = self.collection_
        blocks = np.concatenate(
            [np.full((col.n_sequences, 1), hyp.start), hyp.run(col.tokens)], axis=1
        ).reshape(-1)
        built = build_automaton(
            blocks, self.votes_, col.edges(), col.initial_rows(), self.alphabet_,
            self.labels_, complete=lambda b, a: hyp.transitions[b, a],
            start_output=self.start_output_, name=name, n_blocks=hyp.n_states,
        )
        full = Automaton(
            hyp.alphabet, hyp.states, hyp.start, hyp.transitions, hyp.outputs, hyp.labels, name
        )
        full, minimal = with_free_start(full) if self.empty_output == "free" else (full, full.minimize())
        built.raw, built.minimal, built.state_map = full, minimal, state_map(full, minimal)
        self.built_, self.row_blocks_ = built, blocks
        self.automaton_ = minimal
        self.raw_automaton_ = full
        self.n_states_raw_ = full.n_states
        self.n_conflicts_ = built.n_conflicts
        self.fidelity_ = agreement(minimal, self.val_tokens_, self.val_labels_)["per_position"]
        self.curve_ = [{"size": res.rounds, "n_states": minimal.n_states, "n_states_raw": full.n_states,
                        "fidelity": self.fidelity_, "refined": False, "abstract_states": full.n_states}]

    def _check_fitted(self) -> None:
        if not hasattr(self, "automaton_"):
            raise InputError("FSMExtractor is not fitted yet; call fit(model, task) first")

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """The extracted automaton's label after each prefix of `tokens` `[B, T]`."""
        self._check_fitted()
        return self.automaton_.run_outputs(tokens)

    def score(self, model: nn.Module, tokens: np.ndarray) -> float:
        """Per-position fidelity to `model` on `tokens`."""
        self._check_fitted()
        labels = word_labels(model, tokens, self.automaton_.n_symbols)[:, 1:]
        return agreement(self.automaton_, tokens, labels)["per_position"]


def agreement_cm(machine: Any, tokens: np.ndarray, labels: np.ndarray) -> float:
    """Per-position agreement of anything with `run_outputs` (a counter machine) with `labels`."""
    pred = machine.run_outputs(tokens)
    mask = labels >= 0
    return float((pred == labels)[mask].mean()) if mask.any() else float("nan")


def _limit(max_states: int | None, default: int = 10**9) -> int:
    return default if max_states is None else int(max_states)


def _sizes(start: int = 1):
    """Cluster counts: `CLUSTER_SIZES`, then growing by `GROWTH`, from the first above `start`."""
    for s in CLUSTER_SIZES:
        if s > start:
            yield s
    s = CLUSTER_SIZES[-1]
    while True:
        s = max(s + 1, int(round(s * GROWTH)))
        if s > start:
            yield s


def _fidelity(a: Automaton, vals: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return min(agreement(a, tok, lab)["per_position"] for tok, lab in vals)


def _select(cands: list[_Candidate], target: float, tolerance: float, max_states: int) -> _Candidate:
    """The smallest candidate that reaches `target` within `max_states`; else the best fidelity
    within `max_states`, or a smaller one at most `tolerance` below it; with nothing within
    `max_states`, the smallest."""
    def smallest(pool: list[_Candidate]) -> _Candidate:
        return min(pool, key=lambda c: (c.n, -c.fid))

    pool = [c for c in cands if c.n <= max_states]
    if not pool:
        return smallest(cands)
    hit = [c for c in pool if c.fid >= target]
    if hit:
        return smallest(hit)
    best = max(c.fid for c in pool)
    return smallest([c for c in pool if c.fid >= best - tolerance])


class _Candidate:
    """One abstraction's automaton: its fidelity, size and what it was built from."""

    def __init__(self, fid, built, part, abstraction, col, votes, reducer, curve) -> None:
        self.fid, self.built, self.part, self.abstraction = fid, built, part, abstraction
        self.col, self.votes, self.reducer, self.curve = col, votes, reducer, curve

    @property
    def n(self) -> int:
        return self.built.minimal.n_states


class _Sweep:
    """Candidates from one collection: PCA, then for each size (and seed) an abstraction, its
    refinement, and for an automaton above `max_states` a capped version (the states with the
    most rows kept, the others' rows moved to the nearest kept state)."""

    def __init__(self, est: FSMExtractor, model: nn.Module, name: str, col: Collection, votes: np.ndarray):
        self.est, self.model, self.name, self.col, self.votes = est, model, name, col, votes
        x = np.tanh(col.flat()) if est.squash else col.flat()
        self.reducer = Reducer(est.n_components, seed=est.seed).fit(x)
        self.z = self.reducer.transform(x)
        self.complete = _Completer(model, col, self.reducer, self.z, est.squash)
        self.edges = col.edges()
        self.init_rows = col.initial_rows()
        self.fit_rows = (
            np.setdiff1d(np.arange(len(self.z)), self.init_rows) if col.virtual_initial else slice(None)
        )

    def _candidate(self, part, abstraction, vals, info) -> _Candidate:
        est = self.est
        built = build_automaton(
            part, self.votes, self.edges, self.init_rows, est.alphabet_, est.labels_,
            complete=self.complete.bind(part), start_output=est.start_output_, name=self.name,
        )
        fid = _fidelity(built.minimal, vals)
        curve = {**info, "n_states_raw": built.raw.n_states, "n_states": built.minimal.n_states,
                 "fidelity": fid, "length": self.col.length}
        return _Candidate(fid, built, part, abstraction, self.col, self.votes, self.reducer, curve)

    def _cap(self, cand: _Candidate) -> np.ndarray:
        rows = cand.built.state_map[cand.part]
        support = np.bincount(rows[rows >= 0], minlength=cand.n)
        keep = np.argsort(-support, kind="stable")[: self.est.max_states]
        start = cand.built.minimal.start
        if start not in keep:
            keep[-1] = start
        keep = keep[support[keep] > 0] if (support[keep] > 0).any() else keep
        kept = np.isin(rows, keep)
        centres = np.stack([self.z[rows == s].mean(0) for s in keep])
        part = rows.copy()
        part[~kept] = keep[_nearest(self.z[~kept], centres)]
        return part

    def run(
        self, sizes, seeds, vals, deadline: float, stop: bool, refine: bool = True,
        max_fit: int | None = None, grow: bool = False,
    ) -> list[_Candidate]:
        """Candidates for each seed and size; with `grow`, sizes continue past `sizes` (see
        `_sizes`) while fidelity improves. Sets `capped` when `max_states` or the deadline
        stopped a growth that was still improving."""
        est = self.est
        limit = _limit(est.max_states)
        base = make_abstraction(est.method, **({"seed": est.seed} if est.method != "grid" else {}))
        out: list[_Candidate] = []
        self.capped = None
        if grow and est.method == "kmeans":
            # states that repeat exactly (compiled or saturated networks): each distinct state
            # its own block, merged by minimization; one candidate, tried first
            zf = self.z[self.fit_rows]
            uniq, inverse, _ = _unique_rows(zf, 4)
            if len(uniq) <= min(UNIQUE_MAX, len(zf) // 4) and len(uniq) <= limit * max(1, len(est.alphabet_)):
                blocks = np.full(len(self.z), -1, dtype=np.int64)
                blocks[self.fit_rows] = inverse
                if self.col.virtual_initial:
                    blocks[self.init_rows] = len(uniq)
                info = {"size": len(uniq), "seed": int(est.seed), "abstract_states": len(uniq),
                        "refined": False, "capped": False, "unique": True}
                c = self._candidate(blocks, None, vals, info)
                if c.n <= limit:
                    out.append(c)
                    if stop and c.fid >= est.fidelity_target:
                        return out
        for seed in seeds:
            best, best_size = -1.0, 1
            schedule = iter(sizes) if not grow else _chain_sizes(sizes)
            for size in schedule:
                if grow and size > max(sizes):
                    if size >= PATIENCE * best_size:
                        break  # no improvement while k grew PATIENCE-fold: fidelity has stopped improving
                    if size > limit:
                        self.capped = {"limit": "max_states", "value": int(limit)}
                        break
                params = {} if est.method == "grid" else {"seed": seed}
                zf = self.z[self.fit_rows]
                blocks = np.full(len(self.z), -1, dtype=np.int64)
                if max_fit is not None and len(zf) > max_fit:
                    pick = np.random.default_rng(seed).choice(len(zf), max_fit, replace=False)
                    abstraction = base.with_size(size).set_params(**params).fit(zf[pick])
                    blocks[self.fit_rows] = abstraction.predict(zf)
                else:
                    abstraction = base.with_size(size).set_params(**params).fit(zf)
                    blocks[self.fit_rows] = abstraction.labels_
                if self.col.virtual_initial:
                    blocks[self.init_rows] = abstraction.n_states_
                elif est.empty_output == "free":
                    # the initial state's label is free: its own block, so that `with_free_start`
                    # can merge it with the state it behaves like (else it may keep a neighbour's label)
                    blocks[self.init_rows] = blocks.max() + 1
                info = {"size": int(size), "seed": int(seed), "abstract_states": int(abstraction.n_states_),
                        "refined": False, "capped": False}
                new = [self._candidate(blocks, abstraction, vals, info)]
                if est.refine and refine:
                    cap = max(256, 4 * size) if est.max_states is None else max(128, 4 * est.max_states)
                    refined, converged = refine_partition(
                        blocks, self.votes, self.edges, self.z, max_states=cap, return_converged=True,
                    )
                    if converged and refined.max() != blocks.max():
                        new.append(self._candidate(refined, abstraction, vals, {**info, "refined": True}))
                for c in list(new):
                    if c.n > limit:
                        capped = self._cap(c)
                        new.append(self._candidate(capped, abstraction, vals, {**c.curve, "capped": True}))
                out += new
                top = max(c.fid for c in new if c.n <= limit) if any(c.n <= limit for c in new) else -1.0
                if 1 - top < IMPROVEMENT * (1 - best):  # errors fell by a tenth: still improving
                    best, best_size = top, size
                if stop and any(c.fid >= est.fidelity_target and c.n <= limit for c in new):
                    return out
                if grow and getattr(abstraction, "n_unique_", size + 1) <= size:
                    break  # every distinct state has its own cluster: nothing left to split
                if time.perf_counter() > deadline:
                    if grow and best < est.fidelity_target:
                        self.capped = {"limit": "time_limit", "value": float(est.time_limit)}
                    return out
        return out


def _chain_sizes(sizes):
    """`sizes`, then `_sizes` continued above their maximum."""
    yield from sizes
    yield from _sizes(max(sizes))


class _Completer:
    """Fill an unobserved (abstract state, symbol) pair by asking the network: step a member's
    state (or rerun its prefix) with the symbol and take the abstract state of the nearest
    collected row."""

    def __init__(
        self, model: nn.Module, col: Collection, reducer: Reducer, z: np.ndarray, squash: bool
    ) -> None:
        self.model, self.col, self.reducer, self.z, self.squash = model, col, reducer, z, squash
        self.full_state = is_rnn(model) and col.site == tuple(model.state_names)
        self.memory = col.segment_length is not None

    @torch.no_grad()
    def _step(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        flat = self.col.flat()
        d = self.model.cfg.d_hidden
        state = {
            name: torch.as_tensor(flat[rows, i * d : (i + 1) * d], device=self.model.device)
            for i, name in enumerate(self.col.site)
        }
        _, final = self.model(symbols[:, None], initial_state=state, return_state=True)
        return torch.cat([final[n] for n in self.col.site], -1).cpu().numpy()

    @torch.no_grad()
    def _step_memory(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(self.col.flat()[rows], device=self.model.device)
        memory = flat.reshape(len(rows), self.model.cfg.n_memory, -1)
        segments = segment_words(symbols[:, None], self.col.n_token_symbols, self.col.segment_length)
        _, final = self.model(segments, memory=memory, return_memory=True)
        return final.reshape(len(rows), -1).float().cpu().numpy()

    def _rerun(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        t1 = self.col.length + 1
        seq, pos = rows // t1, rows % t1
        out = np.empty((len(rows), self.col.dim), dtype=np.float32)
        for p in np.unique(pos):
            sel = np.flatnonzero(pos == p)
            words = np.concatenate([self.col.tokens[seq[sel], :p], symbols[sel, None]], axis=1)
            out[sel] = collect(self.model, words.astype(np.int64), self.col.site).vectors[:, -1]
        return out

    def bind(self, blocks: np.ndarray):
        def complete(block_ids: np.ndarray, symbols: np.ndarray) -> np.ndarray:
            member = np.zeros(int(blocks.max()) + 1, dtype=np.int64)
            member[blocks[::-1]] = np.arange(len(blocks))[::-1]
            rows = member[block_ids]
            step = self._step_memory if self.memory else self._step if self.full_state else self._rerun
            vec = step(rows, symbols.astype(np.int64))
            vec = np.tanh(vec) if self.squash else vec
            return blocks[_nearest(self.reducer.transform(vec), self.z)]

        return complete


def extract(model: nn.Module, task: Any = None, method: str = DEFAULT_METHOD, **params: Any) -> FSMExtractor:
    """`FSMExtractor(method=method, **params).fit(model, task)`."""
    try:
        est = FSMExtractor(method=method, **params)
    except TypeError as e:
        raise ConfigError(f"bad extraction parameter: {e}") from None
    return est.fit(model, task)


def check_extraction(
    model: nn.Module,
    extractor: FSMExtractor,
    task: Any = None,
    lengths: tuple[int, ...] = (50, 100),
    n: int = 500,
    seed: int = 12345,
    n_pairs: int = 256,
) -> dict[str, Any]:
    """The evidence for an extraction: fidelity and accuracy per held-out length, equivalence
    with the task (counterexample, state mapping), purity/NMI, interchange accuracy, sizes.

    On an RMT the task is compared as its `power(segment_length)` and `lengths` are in tokens,
    rounded down to whole segments."""
    extractor._check_fitted()
    a = extractor.automaton_
    truth = _task_automaton(model, task)
    segment = memory_segment_length(model)
    if truth is not None and segment is not None:
        truth = truth.power(segment)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "method": extractor.method,
        "site": list(extractor.site_),
        "n_states": a.n_states,
        "n_states_raw": extractor.n_states_raw_,
        "conflicts_resolved": int(extractor.n_conflicts_),
        "validation_fidelity": extractor.fidelity_,
        "segment_length": segment,
        "capped": extractor.capped_ is not None,
        "cap": extractor.capped_,
    }
    fid, acc, tests = {}, {}, {}
    for length in lengths:
        steps = extractor._steps(int(length))
        tok = rng.integers(0, a.n_symbols, (n, steps))
        tests[int(length)] = tok
        fid[str(length)] = agreement(a, tok, word_labels(model, tok, a.n_symbols)[:, 1:])
        if truth is not None:
            acc[str(length)] = task_accuracy(a, truth, tok)
    report["fidelity"] = min(v["per_position"] for v in fid.values())
    report["fidelity_by_length"] = fid
    report["accuracy"] = min(v["per_position"] for v in acc.values()) if acc else None
    report["accuracy_by_length"] = acc or None
    if truth is not None:
        report.update(compare_to_task(a, truth))
        ts = extractor.collection_.flat_true_states()
        report.update(purity(extractor.row_states_, ts) if ts is not None else {})
    else:
        report.update(equivalent_to_task=None, counterexample=None, state_mapping=None)
    report["interchange_accuracy"] = None
    state_site = extractor.site_ == (MEMORY_HOOK,) if segment is not None else (
        is_rnn(model) and set(extractor.site_) <= set(model.state_names)
    )
    if state_site:
        tok = tests[min(tests)][: max(2, min(n, 200))]
        ic = interchange_accuracy(model, a, tok, list(extractor.site_), n_pairs=n_pairs, seed=seed)
        report["interchange_accuracy"] = ic["accuracy"]
        report["interchange"] = ic
    report["finite_state"] = bool(getattr(extractor, "finite_state_", True))
    report["finite_state_evidence"] = getattr(extractor, "finite_state_evidence_", None)
    fit = getattr(extractor, "counter_fit_", None)
    if fit is not None:
        cm = fit.to_dict()
        cm["validation_fidelity"] = cm.pop("fidelity")
        by_len, acc_len = {}, {}
        for length, tok in tests.items():
            by_len[str(length)] = agreement_cm(fit.machine, tok, word_labels(model, tok, a.n_symbols)[:, 1:])
            if truth is not None:
                acc_len[str(length)] = agreement_cm(fit.machine, tok, truth.run_outputs(tok))
        cm["fidelity_by_length"] = by_len
        cm["fidelity"] = min(by_len.values())
        cm["accuracy_by_length"] = acc_len or None
        report["counter_machine"] = cm
    report["curve"] = extractor.curve_
    if hasattr(extractor, "lstar_"):
        r = extractor.lstar_
        report["lstar"] = {"rounds": r.rounds, "complete": r.complete,
                           "membership_queries": r.membership_queries, "test_words": r.test_words}
    report["seconds"] = extractor.seconds_
    return report


def save_extraction(
    out: str | os.PathLike,
    extractor: FSMExtractor,
    report: dict[str, Any],
    figures_html: str | None = None,
) -> dict[str, Path]:
    """Write `fsm.json` (task-file format), `fsm.graphml`, `fsm.dot`, `extraction.json` and,
    if given, `figures.html` into `out`, as one unit: a crash leaves the previous set or the new
    one (`fsm_probe.io.replace_directory`); other files in `out` are kept."""
    extractor._check_fitted()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    with replace_directory(out, owned=EXTRACTION_FILES, what="extraction") as stage:
        extractor.automaton_.save_json(stage / "fsm.json")
        write_graphml(extractor.graph_, stage / "fsm.graphml")
        write_dot(extractor.graph_, stage / "fsm.dot")
        if getattr(extractor, "counter_machine_", None) is not None:
            extractor.counter_machine_.save_json(stage / "counter_machine.json")
        if figures_html is not None:
            atomic_write_text(stage / "figures.html", figures_html)
        atomic_write_json(stage / "extraction.json", _jsonable(report))
        names = sorted(p.name for p in stage.iterdir())
    return {name: out / name for name in names if name in EXTRACTION_FILES}


EXTRACTION_FILES = ("fsm.json", "fsm.graphml", "fsm.dot", "counter_machine.json", "figures.html",
                    "extraction.json")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, nx.Graph):
        return nx.node_link_data(obj)
    return obj

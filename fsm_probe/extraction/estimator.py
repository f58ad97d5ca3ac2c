"""`FSMExtractor`: collect -> PCA -> abstract (sweeping the number of states) -> refine -> vote ->
minimize, or L*. The sweep over sizes is `fsm_probe.extraction.search`; `check_extraction`
(`checks.py`) scores the result; `save_extraction` (`files.py`) writes the files.

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
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits
from torch import nn

from .. import _validate as _v
from ..automata.machine import Automaton, segment_alphabet
from ..errors import ConfigError, InputError
from ..models import model_config
from ..models.protocol import context_limit, has_initial_readout
from ..training.run import Run, model_and_task
from .build import build_automaton, state_map, to_graph, with_free_start
from .checks import agreement, agreement_cm, name_like_task, task_automaton
from .collect import (
    Collection,
    collect,
    memory_segment_length,
    resolve_site,
    sample_words,
    word_labels,
    word_tokens,
)
from .counters import balanced_agreement, fit_counter_machine
from .lstar import lstar
from .search import (
    CLUSTER_SIZES,
    GRID_SIZES,
    RETRY_FIT_ROWS,
    RETRY_SIZES,
    SizeSweep,
    growing_sizes,
    has_sensitivity,
    min_fidelity,
    select,
    state_limit,
)

METHODS = ("kmeans", "grid", "gmm", "agglomerative", "lstar")
DEFAULT_METHOD = "kmeans"
GEOMETRIES = ("auto", "euclidean", "sensitivity")
COUNTER_TARGET = 0.99
COUNTER_GATE = 0.995


class FSMExtractor(BaseEstimator):
    """Recover the finite-state machine a hooked model implements.

    `fit(model, task=None)` sets `automaton_` (minimized), `graph_` (networkx, with evidence),
    `raw_automaton_`, `n_states_`, `n_states_raw_`, `n_conflicts_`, `fidelity_` (held-out
    agreement with the network), `curve_` (one entry per size tried) and `seconds_`.
    `predict(tokens)` gives the automaton's label after every prefix. On an RMT (see the module
    docstring) `segment_length_` is L and the automaton reads segments; else it is None.
    `geometry="sensitivity"` clusters the states under `search.sensitivity_metric` (directions
    weighted by how much they move the next outputs) instead of as they are ("euclidean");
    "auto" (the default) clusters them as they are and, when that search runs out of time below
    `fidelity_target` (S5's 120 states in a GRU(128)), once more in the sensitivity metric, kept
    if it reaches the target (a better automaton that still misses it, as on majority, would
    hide the counter the Euclidean one reveals); `geometry_` says which was kept.
    `time_limit` bounds each clustering search, not the whole fit: `auto` may run two and the
    counter check runs after the first, so a fit that hits the limit can take two to three times
    it (the D50 GRU: 58 s at the default 20).
    """

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        site: str | list[str] | None = None,
        n_components: int | float | str | None = "auto",
        sizes: tuple[int, ...] | None = None,
        refine: bool = True,
        squash: bool = True,
        geometry: str = "auto",
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
        self.geometry = geometry
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
            _v.positive_int(v, name, numpy=True)
        if self.retry_length is not None and (
            not isinstance(self.retry_length, int | np.integer) or isinstance(self.retry_length, bool)
            or self.retry_length < 1
        ):
            raise ConfigError(f"retry_length must be a positive integer or None, got {self.retry_length!r}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")
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

    def fit(self, model: nn.Module | Run, task: Any = None) -> FSMExtractor:
        """Extract from `model` (a `Run`, or a network); `task` (a Task or Automaton, default the
        run's task) names the symbols and labels and gives the true states."""
        self._validate()
        model, task = model_and_task(model, task)
        with threadpool_limits(1):
            return self._fit(model, task)

    def _fit(self, model: nn.Module, task: Any) -> FSMExtractor:
        t0 = time.perf_counter()
        cfg = model_config(model)
        truth = task_automaton(model, task)
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
        col, votes = self.collection_, self.votes_
        if self.method == "lstar":
            self._fit_lstar(model, name)
            self.geometry_ = None
        else:
            self.geometry_ = "euclidean" if self.geometry == "auto" else self.geometry
            self._fit_clusters(model, name)
        self._describe(model, task, truth)
        timed_out = self.capped_ is not None and self.capped_["limit"] == "time_limit"
        if (self.geometry == "auto" and self.method != "lstar" and self.finite_state_ and timed_out
                and self.fidelity_ < self.fidelity_target and has_sensitivity(model, col)):
            # once more in the sensitivity metric, kept if it reaches the target; after the
            # counter check, so that a counter network keeps its counter machine
            first = {k: v for k, v in vars(self).items() if k.endswith("_")}  # every fitted attribute
            self.collection_, self.votes_, self.geometry_ = col, votes, "sensitivity"
            self._fit_clusters(model, name)
            if self.fidelity_ >= self.fidelity_target:
                self._describe(model, task, truth)
            else:  # the first search's fit, as it was
                for k in [k for k in vars(self) if k.endswith("_") and k not in first]:
                    delattr(self, k)
                vars(self).update(first)
        self.seconds_ = time.perf_counter() - t0
        return self

    def _describe(self, model: nn.Module, task: Any, truth: Automaton | None) -> None:
        """The fitted automaton's names, graph and row states, and the counter check."""
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

    def _check_counters(self, model: nn.Module, task: Any) -> None:
        """Is the network finite-state on the sampled lengths? The automaton is validated on
        words twice `val_length` long (half of them from the task's sampler when it has one);
        if it falls short of `fidelity_target` there, a counter machine is fitted
        (`fsm_probe.extraction.counters`) and, when it agrees with the network at
        `COUNTER_TARGET` on held-out words and has at most half the automaton's errors on the
        long ones, the network is reported as not finite-state (`finite_state_ = False`,
        `counter_machine_`). Errors are counted per position and label-balanced (the mean of the
        per-label agreements): a^n b^n's rare `yes` positions are where an automaton fails. An
        automaton at `fidelity_target` on `val_length` and at `COUNTER_GATE` on the long words
        (both measures) is kept without a counter fit."""
        k = len(self.alphabet_)
        n_ctx = context_limit(model)
        long_len = min(2 * self.val_length, n_ctx or 2 * self.val_length)
        rng = np.random.default_rng(self.seed + 7)
        sampler = getattr(task, "sampler", None)
        half = max(1, self.n_val // 2)
        parts = [rng.integers(0, k, (half, long_len))]
        fit_parts = [sample_words(k, self.n_words, min(2 * self.length, long_len), seed=self.seed + 8)]
        if sampler is not None and getattr(sampler, "n_symbols", None) == k:
            parts.append(sampler.sample(rng, half, long_len))
            fit_parts.append(sampler.sample(rng, self.n_words, fit_parts[0].shape[1]))
        long_tok = np.concatenate(parts)
        long_lab = word_labels(model, long_tok, k)[:, 1:]
        fsm_long = agreement(self.automaton_, long_tok, long_lab)["per_position"]
        fsm_bal = balanced_agreement(self.automaton_.run_outputs(long_tok), long_lab)
        evidence = {"fsm_fidelity": self.fidelity_, "fsm_fidelity_long": fsm_long,
                    "fsm_fidelity_long_balanced": fsm_bal, "long_length": long_len}
        self.finite_state_evidence_ = evidence
        if min(self.fidelity_, fsm_long, fsm_bal) >= self.fidelity_target:
            return
        if self.fidelity_ >= self.fidelity_target and min(fsm_long, fsm_bal) >= COUNTER_GATE:
            # exact where validated and within half a percent on the long words: that is the
            # network's own drift with length (a counter machine would have to halve it), and
            # the counter fit costs a minute on a large alphabet
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
        cm_bal = balanced_agreement(fit.machine.run_outputs(long_tok), long_lab)
        evidence.update(counter_fidelity=fit.fidelity, counter_fidelity_long=cm_long,
                        counter_fidelity_long_balanced=cm_bal)
        fewer_errors = (1 - cm_long) <= 0.5 * (1 - fsm_long) or (
            cm_long >= fsm_long and (1 - cm_bal) <= 0.5 * (1 - fsm_bal)
        )
        if fit.fidelity >= COUNTER_TARGET and fewer_errors and fit.machine.n_states < self.automaton_.n_states:
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
        sweep = SizeSweep(self, model, name, self.collection_, self.votes_)
        vals = [(self.val_tokens_, self.val_labels_)]
        cands = sweep.run(sizes, [self.seed], vals, deadline, stop=True, grow=grow)
        self.capped_ = sweep.capped
        limit = state_limit(self.max_states)
        if not any(c.fid >= self.fidelity_target and c.n <= limit for c in cands) and (
            self.retry_length is not None and time.perf_counter() < deadline
        ):
            # An imperfect network: its behaviour drifts with length, so collect longer words,
            # validate on longer ones too, and try more sizes and seeds (and caps of oversized
            # automata) within half of the remaining time.
            budget = time.perf_counter() + 0.5 * (deadline - time.perf_counter())
            n_ctx = context_limit(model)
            k, rl = len(self.alphabet_), min(self.retry_length, n_ctx or self.retry_length)
            rng = np.random.default_rng(self.seed + 2)
            long_val = rng.integers(
                0, k, (max(1, self.n_val // 2), self._steps(min(2 * rl, n_ctx or 2 * rl)))
            )
            vals.append((long_val, word_labels(model, long_val, k)[:, 1:]))
            for c in cands:
                c.fid = min(c.fid, min_fidelity(c.built.minimal, vals[1:]))
            long_col = self._collect(
                model, sample_words(k, self.n_words, self._steps(rl), seed=self.seed + 3)
            )
            votes = long_col.flat_predictions().copy()
            if self.empty_output == "free":
                votes[long_col.initial_rows()] = -1
            tried = max(c.curve["size"] for c in cands)
            more = sorted({*sizes, *RETRY_SIZES, *itertools.takewhile(lambda s: s <= tried, growing_sizes())}) if grow else sizes
            seeds = [self.seed] if self.method in ("grid", "agglomerative") else [
                self.seed + i for i in range(3)
            ]
            cands += SizeSweep(self, model, name, long_col, votes).run(
                more, seeds, vals, budget, stop=False, refine=False, max_fit=RETRY_FIT_ROWS
            )
        self.curve_ = [c.curve for c in cands]
        chosen = select(cands, self.fidelity_target, self.tolerance, limit)
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
        if not has_initial_readout(model):
            raise ConfigError(
                "lstar needs an rnn, gru or lstm (the empty word's label is its initial readout); "
                "a Transformer or an rmt gives no label before the first token: use a clustering method"
            )
        res = lstar(
            model, self.alphabet_, self.labels_, max_rounds=self.lstar_rounds,
            max_states=state_limit(self.max_states, 1000), time_limit=self.time_limit, seed=self.seed,
            name=name,
        )
        self.lstar_ = res
        self.capped_ = None if res.complete else (
            {"limit": "time_limit", "value": float(self.time_limit)} if res.seconds >= self.time_limit
            else {"limit": "max_states", "value": state_limit(self.max_states, 1000)}
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


def extract(model: nn.Module, task: Any = None, method: str = DEFAULT_METHOD, **params: Any) -> FSMExtractor:
    """`FSMExtractor(method=method, **params).fit(model, task)`."""
    try:
        est = FSMExtractor(method=method, **params)
    except TypeError as e:
        raise ConfigError(f"bad extraction parameter: {e}") from None
    return est.fit(model, task)



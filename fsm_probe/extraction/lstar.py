"""Active extraction: Angluin's L* for Moore machines with the network as membership oracle.

Counterexamples are processed as in Maler & Pnueli (every suffix joins the experiments), so the
table only needs closing. Equivalence queries are random tests: uniform words plus, for every
hypothesis state, its access word followed by random suffixes (a state-prefix oracle); every
prefix of a test word is compared. A budget on rounds, states and time bounds the run: on an
imperfect network L* keeps growing, and the last hypothesis is returned with `complete=False`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .. import _validate as _v
from ..automata.machine import Automaton
from ..errors import ConfigError
from .collect import model_labels

Word = tuple[int, ...]


class NetworkOracle:
    """The network's label after a word, with every answered prefix cached."""

    def __init__(self, model: nn.Module, batch_size: int = 512) -> None:
        self.model = model
        self.batch_size = batch_size
        self.cache: dict[Word, int] = {}
        self.n_queries = 0

    def labels(self, words: list[Word]) -> list[int]:
        todo = sorted({w for w in words if w not in self.cache}, key=len)
        by_length: dict[int, list[Word]] = {}
        for w in todo:
            by_length.setdefault(len(w), []).append(w)
        for length, group in by_length.items():
            if length == 0:
                tok = np.zeros((1, 1), dtype=np.int64)
                self.cache[()] = int(model_labels(self.model, tok)[0, 0])
                continue
            tok = np.array(group, dtype=np.int64)
            self.record(tok, model_labels(self.model, tok, self.batch_size))
        self.n_queries += len(todo)
        return [self.cache[w] for w in words]

    def record(self, tokens: np.ndarray, labels: np.ndarray) -> None:
        """Cache `labels` `[B, T + 1]` for every prefix of `tokens` `[B, T]`."""
        for row, lab in zip(tokens.tolist(), labels.tolist(), strict=True):
            for p in range(len(row) + 1):
                self.cache.setdefault(tuple(row[:p]), lab[p])


@dataclass
class LStarResult:
    automaton: Automaton
    rounds: int
    complete: bool
    membership_queries: int
    test_words: int
    counterexamples: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0


def lstar(
    model: nn.Module,
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    max_rounds: int = 25,
    max_states: int = 64,
    time_limit: float = 10.0,
    n_tests: int = 1000,
    walks_per_state: int = 50,
    test_length: int = 30,
    seed: int = 0,
    name: str = "lstar",
) -> LStarResult:
    """Learn a Moore machine from `model` (labels after every prefix); see the module docstring."""
    for what, v in (("max_rounds", max_rounds), ("max_states", max_states), ("n_tests", n_tests),
                    ("test_length", test_length)):
        _v.positive_int(v, what)
    if time_limit <= 0:
        raise ConfigError(f"time_limit must be positive, got {time_limit}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    k = len(alphabet)
    oracle = NetworkOracle(model)
    prefixes: list[Word] = [()]
    suffixes: list[Word] = [()]
    counterexamples: list[list[int]] = []
    hyp, access = None, None
    n_tests_done = 0
    complete = False
    rounds = 0
    deadline = t0 + time_limit
    while rounds < max_rounds and time.perf_counter() < deadline:
        rounds += 1
        rows, prefixes = _close(oracle, prefixes, suffixes, k, max_states, deadline)
        hyp, access = _hypothesis(rows, prefixes, suffixes, k, alphabet, labels, oracle, name)
        if hyp.n_states >= max_states or time.perf_counter() >= deadline:
            break
        cex, n = _find_counterexample(oracle, hyp, access, k, n_tests, walks_per_state, test_length, rng)
        n_tests_done += n
        if cex is None:
            complete = True
            break
        counterexamples.append(list(cex))
        new = [cex[i:] for i in range(len(cex)) if cex[i:] not in suffixes]
        if not new:
            break
        suffixes.extend(new)
    if hyp is None:
        rows, prefixes = _close(oracle, prefixes, suffixes, k, max_states, deadline)
        hyp, _ = _hypothesis(rows, prefixes, suffixes, k, alphabet, labels, oracle, name)
    return LStarResult(
        hyp, rounds, complete, oracle.n_queries, n_tests_done, counterexamples,
        time.perf_counter() - t0,
    )


def _row_table(oracle: NetworkOracle, words: list[Word], suffixes: list[Word]) -> dict[Word, tuple]:
    queries = [w + e for w in words for e in suffixes]
    answers = oracle.labels(queries)
    n = len(suffixes)
    return {w: tuple(answers[i * n : (i + 1) * n]) for i, w in enumerate(words)}


def _close(
    oracle: NetworkOracle, prefixes: list[Word], suffixes: list[Word], k: int, max_states: int,
    deadline: float = float("inf"),
) -> tuple[dict[Word, tuple], list[Word]]:
    """The table closed (every one-symbol extension's row is a prefix's row), or as far as it
    got by `deadline` (the hypothesis then sends unmatched rows back to their own state)."""
    prefixes = list(prefixes)
    while True:
        words = prefixes + [p + (a,) for p in prefixes for a in range(k)]
        rows = _row_table(oracle, list(dict.fromkeys(words)), suffixes)
        known = {rows[p] for p in prefixes}
        new = None
        for p in prefixes:
            for a in range(k):
                r = rows[p + (a,)]
                if r not in known:
                    new = p + (a,)
                    break
            if new is not None:
                break
        if new is None or len(known) >= max_states or time.perf_counter() >= deadline:
            return rows, prefixes
        prefixes.append(new)


def _hypothesis(rows, prefixes, suffixes, k, alphabet, labels, oracle, name):
    reps: dict[tuple, int] = {}
    access: list[Word] = []
    for p in prefixes:
        if rows[p] not in reps:
            reps[rows[p]] = len(access)
            access.append(p)
    n = len(access)
    table = np.zeros((n, k), dtype=np.int64)
    for i, p in enumerate(access):
        for a in range(k):
            table[i, a] = reps.get(rows[p + (a,)], i)
    outputs = [rows[p][0] for p in access]
    hyp = Automaton(alphabet, [f"q{i}" for i in range(n)], 0, table, outputs, labels, name)
    return hyp, access


def _find_counterexample(oracle, hyp, access, k, n_tests, walks_per_state, length, rng):
    random_words = rng.integers(0, k, (n_tests, length))
    walks = []
    for w in access:
        if len(w) < length:
            tail = rng.integers(0, k, (walks_per_state, length - len(w)))
            walks.append(np.concatenate([np.tile(np.array(w, dtype=np.int64), (walks_per_state, 1)), tail], 1))
    tests = np.concatenate([random_words, *walks]) if walks else random_words
    got = model_labels(oracle.model, tests)
    oracle.record(tests, got)
    want = np.concatenate(
        [np.full((len(tests), 1), hyp.outputs[hyp.start]), hyp.run_outputs(tests)], axis=1
    )
    bad = got != want
    if not bad.any():
        return None, len(tests)
    first = np.where(bad.any(1), bad.argmax(1), length + 1)
    i = int(first.argmin())
    return tuple(int(x) for x in tests[i, : first[i]]), len(tests)

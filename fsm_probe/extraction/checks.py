"""How faithful is an extracted automaton: fidelity, accuracy, equivalence, purity, causality.

`interchange_accuracy` is the causal check: transplant the recurrent state reached by one
sequence into another (through the hook points) at positions where the extracted automaton
says the two are in different states, and test whether the network's later outputs follow the
automaton from the transplanted state. On an RMT the state is the memory (`hook_memory`) and the
words are over segments (see `fsm_probe.extraction.collect`).
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from .._results import DictResult
from ..automata.machine import Automaton
from ..errors import ConfigError, InputError
from ..models import as_tokens
from ..models.protocol import initial_state, is_stateful, state_sites
from ..training.run import Run, model_and_task
from .collect import memory_segment_length, resolve_site, word_labels, word_tokens

if TYPE_CHECKING:
    from .estimator import FSMExtractor


def _check_alphabet(automaton: Automaton, tokens: np.ndarray) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise InputError(f"tokens must be [batch, pos], got shape {arr.shape}")
    return automaton.check_tokens(arr)


def agreement(automaton: Automaton, tokens: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-position and whole-sequence agreement of `automaton` with `labels` `[B, T]` (or
    `[B, T + 1]`, the empty prefix first)."""
    tokens = _check_alphabet(automaton, tokens)
    pred = automaton.run_outputs(tokens)
    if labels.shape[1] == tokens.shape[1] + 1:
        pred = np.concatenate([np.full((len(pred), 1), automaton.outputs[automaton.start]), pred], 1)
    mask = labels >= 0
    same = (pred == labels) | ~mask
    return {
        "per_position": float((pred == labels)[mask].mean()) if mask.any() else float("nan"),
        "sequence": float(same.all(1).mean()),
    }


def fidelity(
    model: nn.Module, automaton: Automaton, tokens: np.ndarray, *, include_empty: bool = False
) -> dict[str, float]:
    """Agreement of `automaton` with the network's predicted labels after every non-empty prefix
    (and the empty one, the initial readout of an RNN, with `include_empty`); on an RMT `tokens`
    are segment ids and the labels those at segment ends. (The old order `fidelity(automaton,
    model, ...)` works until 0.3, with a DeprecationWarning.)"""
    if isinstance(model, Automaton) and isinstance(automaton, nn.Module):
        warnings.warn("fidelity(automaton, model, ...) is now fidelity(model, automaton, ...)",
                      DeprecationWarning, stacklevel=2)
        model, automaton = automaton, model
    labels = word_labels(model, tokens, automaton.n_symbols)
    return agreement(automaton, tokens, labels if include_empty else labels[:, 1:])


def task_accuracy(automaton: Automaton, task_automaton: Automaton, tokens: np.ndarray) -> dict[str, float]:
    """Agreement with the true task labels (label names are matched)."""
    tokens = _check_alphabet(task_automaton, tokens)
    names = {n: i for i, n in enumerate(automaton.labels)}
    truth = np.array([names.get(n, -2) for n in task_automaton.labels])[task_automaton.run_outputs(tokens)]
    return agreement(automaton, tokens, truth)


def _with_empty_output(a: Automaton, label: str) -> Automaton:
    """`a` with a fresh start state that behaves like the old one but outputs `label`."""
    if label not in a.labels:
        return a
    n = a.n_states
    names = [*a.states, "__start__"]
    while names[-1] in a.states:
        names[-1] += "_"
    table = np.vstack([a.transitions, a.transitions[a.start]])
    outputs = [*a.outputs.tolist(), a.labels.index(label)]
    return Automaton(a.alphabet, names, n, table, outputs, a.labels, a.name)


def task_states_met(automaton: Automaton, task_automaton: Automaton) -> tuple[dict[str, list[str]], bool]:
    """For each state of `automaton`, the `task_automaton` states (by the task's own names, in its
    order) that the same words reach, and whether every non-empty word gets one label in both.

    Walks the product of the two machines from their start states; with that label agreement
    the automata are equivalent on non-empty words and each state of a minimal `automaton` meets
    one task state, or several the task does not tell apart."""
    sym = automaton._symbol_map(task_automaton)
    la, lb = automaton._label_names(), task_automaton._label_names()
    start = (automaton.start, task_automaton.start)
    met: dict[int, set[int]] = {automaton.start: {task_automaton.start}}
    agree = True
    seen: set[tuple[int, int]] = set()
    queue = deque((int(automaton.transitions[start[0], j]), int(task_automaton.transitions[start[1], sym[j]]))
                  for j in range(automaton.n_symbols))
    while queue:
        pair = queue.popleft()
        if pair in seen:
            continue
        seen.add(pair)
        s, t = pair
        met.setdefault(s, set()).add(t)
        agree = agree and la[s] == lb[t]
        queue.extend((int(automaton.transitions[s, j]), int(task_automaton.transitions[t, sym[j]]))
                     for j in range(automaton.n_symbols))
    names = {automaton.states[s]: [task_automaton.states[t] for t in sorted(ts)] for s, ts in sorted(met.items())}
    return names, agree


def name_like_task(automaton: Automaton, task_automaton: Automaton) -> Automaton:
    """`automaton` with each state named after the task state(s) it stands for (joined by `|`
    where the task has several equivalent ones), when it is equivalent to the task on non-empty
    words and its states stand for disjoint sets of task states; otherwise unchanged."""
    met, agree = task_states_met(automaton, task_automaton)
    if not agree or len(met) != automaton.n_states:
        return automaton
    groups = [met[s] for s in automaton.states]
    if len({t for g in groups for t in g}) != sum(len(g) for g in groups):
        return automaton  # two states stand for the same task state: no names to give
    return automaton.relabel_states(["|".join(g) for g in groups])


def compare_to_task(
    automaton: Automaton, task_automaton: Automaton, include_empty: bool = False
) -> dict[str, Any]:
    """Equivalence with the task, a shortest counterexample, and, when equivalent, the state
    mapping: each extracted state -> the task state it stands for, by the task's own state names
    (`|`-joined where the task has several equivalent ones). The empty word is not a position of
    the data, so unless `include_empty` its label is taken from the task (`empty_word_agrees`
    tells if it differed)."""
    target = task_automaton.minimize()
    want = target.labels[target.outputs[target.start]]
    agrees = automaton.labels[automaton.outputs[automaton.start]] == want
    candidate = automaton if include_empty else _with_empty_output(automaton, want).minimize()
    counterexample = candidate.equivalent(target)
    mapping = None
    if counterexample is None:
        met, _ = task_states_met(automaton, task_automaton)
        mapping = {s: "|".join(ts) for s, ts in met.items()}
    return {
        "equivalent_to_task": counterexample is None,
        "counterexample": counterexample,
        "state_mapping": mapping,
        "n_states_task": target.n_states,
        "empty_word_agrees": bool(agrees),
    }


def purity(assigned: np.ndarray, true_states: np.ndarray) -> dict[str, float]:
    """Cluster purity and NMI of extracted states against true states (rows with assigned < 0
    are skipped)."""
    keep = assigned >= 0
    a, t = assigned[keep], true_states[keep]
    if len(a) == 0:
        return {"purity": float("nan"), "nmi": float("nan")}
    pairs, counts = np.unique(np.stack([a, t], 1), axis=0, return_counts=True)
    best = np.zeros(int(a.max()) + 1, dtype=np.int64)
    np.maximum.at(best, pairs[:, 0], counts)
    return {
        "purity": float(best.sum() / len(a)),
        "nmi": float(normalized_mutual_info_score(t, a)),
    }


@torch.no_grad()
def interchange_accuracy(
    model: nn.Module,
    automaton: Automaton,
    tokens: np.ndarray,
    site: str | list[str] | None = None,
    n_pairs: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Transplant the state at `site` of sequence x after t tokens into sequence y after u tokens
    (where the automaton's states differ) and score y's later outputs against the automaton run
    from x's state.

    Returns `accuracy` (per later position), `pair_accuracy` (pairs with every later output
    right), `changed` (share of later positions where the expected output differs from y's own
    run, i.e. how informative the test is) and `n_pairs`. The site must be recurrent state
    (default: the full state). On an RMT `tokens` are segment ids and the memory written by
    segment u - 1 is replaced.
    """
    segment = memory_segment_length(model)
    if not is_stateful(model):
        raise ConfigError(
            "interchange interventions need a recurrent model or an rmt (a state to transplant)"
        )
    names = resolve_site(model, site)
    if not set(names) <= set(state_sites(model)):
        raise ConfigError(
            f"interchange needs recurrent-state sites {sorted(state_sites(model))}, got {list(names)}"
        )
    tokens = _check_alphabet(automaton, tokens)
    b, length = tokens.shape
    if length < 2 or b < 2:
        raise InputError("interchange needs at least 2 sequences of length >= 2")
    rng = np.random.default_rng(seed)
    states = np.concatenate(
        [np.full((b, 1), automaton.start), automaton.run(tokens)], axis=1
    )
    xs, ts, ys, us = [], [], [], []
    for _ in range(20):
        m = 4 * n_pairs
        x, y = rng.integers(0, b, m), rng.integers(0, b, m)
        t, u = rng.integers(0, length + 1, m), rng.integers(1, length, m)
        ok = states[x, t] != states[y, u]
        xs.append(x[ok]), ts.append(t[ok]), ys.append(y[ok]), us.append(u[ok])
        if sum(len(v) for v in xs) >= n_pairs:
            break
    x, t, y, u = (np.concatenate(v)[:n_pairs] for v in (xs, ts, ys, us))
    if len(x) == 0:
        return {"accuracy": float("nan"), "pair_accuracy": float("nan"), "changed": 0.0, "n_pairs": 0}
    was = model.training
    model.eval()
    try:
        tok = as_tokens(model, word_tokens(model, tokens, automaton.n_symbols))
        _, cache = model.run_with_cache(tok, names_filter=list(names))
        init = initial_state(model, 1)
        donors = {}
        for name in names:
            first = init[name].expand(b, *init[name].shape[1:])[:, None]
            full = torch.cat([first, cache[name]], dim=1)
            donors[name] = full[torch.as_tensor(x), torch.as_tensor(t)]
        step = torch.as_tensor(u - 1)

        def transplant(value: torch.Tensor, hook: Any) -> torch.Tensor:
            hit = (step == hook.pos).to(value.device)
            if not hit.any():
                return value
            hit = hit.view(-1, *[1] * (value.dim() - 1))
            return torch.where(hit, donors[hook.name].to(value.dtype), value)

        logits = model.run_with_hooks(tok[torch.as_tensor(y)], fwd_hooks=[(n, transplant) for n in names])
    finally:
        model.train(was)
    pred = logits.argmax(-1).cpu().numpy()
    if segment is not None:
        pred = pred[:, segment - 1 :: segment]
    later = np.arange(length)[None, :] >= u[:, None]
    expected = np.zeros_like(pred)
    own = automaton.outputs[states[y, 1:]]
    for i in range(len(x)):
        expected[i, u[i]:] = automaton.run_outputs(tokens[y[i], u[i]:], start=int(states[x[i], t[i]]))
    right = (pred == expected) | ~later
    return {
        "accuracy": float((pred == expected)[later].mean()),
        "pair_accuracy": float(right.all(1).mean()),
        "changed": float((expected != own)[later].mean()),
        "n_pairs": len(x),
    }


def task_automaton(model: nn.Module, task: Any) -> Automaton | None:
    """The automaton of `task` (a Task or Automaton), or None."""
    if task is None:
        return None
    if isinstance(task, Automaton):
        return task
    a = getattr(task, "automaton", None)
    if not isinstance(a, Automaton):
        raise ConfigError(f"task must be a fsm_probe Task or Automaton, got {type(task).__name__}")
    return a


def agreement_cm(machine: Any, tokens: np.ndarray, labels: np.ndarray) -> float:
    """Per-position agreement of anything with `run_outputs` (a counter machine) with `labels`."""
    pred = machine.run_outputs(tokens)
    mask = labels >= 0
    return float((pred == labels)[mask].mean()) if mask.any() else float("nan")


_ABSENT = {"omit_if_none": True}  # a key the old dict had only in some cases


def _absent() -> Any:
    return field(default=None, metadata=_ABSENT)


@dataclass(frozen=True, eq=False, kw_only=True)
class ExtractionReport(DictResult):
    """`check_extraction`'s result (`report.fidelity`); `to_dict()` is the old dict, in the same
    key order, `extraction.json`'s content. Fields that are None without a task (or a state
    site, a counter fit, L*) are missing from the dict then, as they were."""

    method: str
    site: list[str]
    n_states: int
    n_states_raw: int
    conflicts_resolved: int
    validation_fidelity: float | None
    segment_length: int | None
    capped: bool
    cap: dict[str, Any] | None
    geometry: str | None = _absent()
    fidelity: float
    fidelity_by_length: dict[str, dict[str, float]]
    accuracy: float | None
    accuracy_by_length: dict[str, dict[str, float]] | None
    equivalent_to_task: bool | None
    counterexample: list[str] | None
    state_mapping: dict[str, str] | None
    n_states_task: int | None = _absent()
    empty_word_agrees: bool | None = _absent()
    purity: float | None = _absent()
    nmi: float | None = _absent()
    interchange_accuracy: float | None
    interchange: dict[str, float] | None = _absent()
    finite_state: bool
    finite_state_evidence: dict[str, Any] | None
    counter_machine: dict[str, Any] | None = _absent()
    curve: list[dict[str, Any]] | None
    lstar: dict[str, Any] | None = _absent()
    seconds: float | None

    def _items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("omit_if_none") and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExtractionReport:
        """From `to_dict()`'s dict (e.g. `extraction.json` read back); missing keys are None."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


def check_extraction(
    model: nn.Module | Run,
    extractor: FSMExtractor,
    task: Any = None,
    lengths: tuple[int, ...] = (50, 100),
    n: int = 500,
    seed: int = 12345,
    n_pairs: int = 256,
) -> ExtractionReport:
    """The evidence for an extraction: fidelity and accuracy per held-out length, equivalence
    with the task (counterexample, state mapping), purity/NMI, interchange accuracy, sizes.

    On an RMT the task is compared as its `power(segment_length)` and `lengths` are in tokens,
    rounded down to whole segments."""
    extractor._check_fitted()
    a = extractor.automaton_
    model, task = model_and_task(model, task)
    task = task if task is not None else extractor.task_automaton_
    truth = task_automaton(model, task)
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
        "geometry": getattr(extractor, "geometry_", None),
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
    if is_stateful(model) and set(extractor.site_) <= set(state_sites(model)):
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
    return ExtractionReport(**report)

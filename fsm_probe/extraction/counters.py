"""Fit a counter machine (`fsm_probe.automata.counter.CounterMachine`) to a network that is not
finite-state on the sampled lengths.

Candidate counters are integer combinations of the symbol counts of a prefix, `c = counts . w`
with `w` in {-1, 0, 1}^k (the integer lattice of Michaud et al. 2024, arXiv 2402.05110). The
network's evidence for a counter is how well a linear read-out of the hidden state recovers it
(R^2 of a least-squares fit over the collected rows). The most linearly encoded candidates are
tried alone, then in pairs; for each, the finite control is learned as a Moore machine over
(symbol, signs of the counters after it), three ways: state merging on the prefix tree of the
words (`merge_states`, exact on the network's labels), partition refinement, and k-means clusters
of the hidden states (split by the network's label) voting on transitions; minimization then
merges states that differ only in their counter values. The machine with the fewest counters, then control states,
whose held-out fidelity (agreement with the network's labels) is best wins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..automata.counter import CounterMachine, sign_code
from .abstraction import KMeansAbstraction, _unique_rows
from .build import build_automaton, refine_partition

MAX_CONTROL = 8  # a counter machine explains a network by few control states; more is a finite automaton


@dataclass
class CounterFit:
    """A fitted machine with its held-out `fidelity`, the read-out `r2` of each counter and the
    candidates tried (`tried`: weights, r2, fidelity, control states)."""

    machine: CounterMachine
    fidelity: float
    r2: list[float]
    weights: list[list[int]]
    tried: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_counters": self.machine.n_counters,
            "n_control_states": self.machine.n_states,
            "fidelity": self.fidelity,
            "counter_weights": self.weights,
            "readout_r2": self.r2,
            "machine": self.machine.to_dict(),
            "tried": self.tried,
        }


def candidate_weights(n_symbols: int, max_nonzero: int = 3) -> np.ndarray:
    """Weight vectors in {-1, 0, 1}^k, not all zero, first non-zero entry +1 (a counter and its
    negation are one), with at most `max_nonzero` non-zero entries, in the lexicographic order of
    {-1, 0, 1}^k. Built from the supports (sum over m of C(k, m) 2^(m-1) vectors), not by
    filtering all 3^k: a 19-symbol alphabet has 4,237 candidates, not 10^9 to look through."""
    out = []
    for m in range(1, max_nonzero + 1):
        for support in itertools.combinations(range(n_symbols), m):
            for signs in itertools.product((1, -1), repeat=m - 1):
                w = [0] * n_symbols
                w[support[0]] = 1
                for i, sign in zip(support[1:], signs, strict=True):
                    w[i] = sign
                out.append(tuple(w))
    out.sort(key=lambda w: tuple(x + 1 for x in w))
    return np.array(out, dtype=np.int64).reshape(-1, n_symbols)


def prefix_counts(tokens: np.ndarray, n_symbols: int) -> np.ndarray:
    """Symbol counts `[B, T + 1, k]` after every prefix, the empty one first."""
    onehot = np.eye(n_symbols, dtype=np.int64)[tokens]
    c = np.cumsum(onehot, axis=1)
    return np.concatenate([np.zeros((len(tokens), 1, n_symbols), np.int64), c], axis=1)


def readout_r2(hidden: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R^2 of an affine least-squares read-out of each target column from `hidden` rows."""
    x = np.concatenate([hidden, np.ones((len(hidden), 1))], 1)
    coef, *_ = np.linalg.lstsq(x, targets.astype(np.float64), rcond=None)
    resid = ((targets - x @ coef) ** 2).sum(0)
    total = ((targets - targets.mean(0)) ** 2).sum(0)
    return np.where(total > 0, 1 - resid / np.maximum(total, 1e-12), 0.0)


def fit_control(
    tokens: np.ndarray,
    blocks: np.ndarray,
    votes: np.ndarray,
    weights: np.ndarray,
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    name: str = "counter_machine",
) -> CounterMachine | None:
    """The control for counters `weights [m, k]` from words `tokens [B, T]`, a clustering of the
    network's hidden states `blocks [B * (T + 1)]` and its labels `votes` (row-major over
    prefixes, -1 = unknown): the clusters (split by label) read (symbol, signs after it); a pair
    never observed goes where that extended symbol mostly leads; minimization then merges the
    clusters that differ only in their counter values. None above `MAX_CONTROL` states."""
    _, rows, edges = _extended_prefixes(tokens, weights, len(alphabet))
    split = np.unique(np.stack([blocks, np.maximum(votes, -1)], 1), axis=0, return_inverse=True)[1]
    return _control(split.reshape(-1), votes, edges, rows, weights, alphabet, labels, name)


def fit_control_refined(
    tokens: np.ndarray,
    votes: np.ndarray,
    weights: np.ndarray,
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    name: str = "counter_machine",
) -> CounterMachine | None:
    """The control grown from one block by `refine_partition` (split where members disagree on
    the network's label or on a successor; rows that did not read the splitting symbol join the
    part with the same counter signs); None if it does not converge within `MAX_CONTROL`."""
    codes, rows, edges = _extended_prefixes(tokens, weights, len(alphabet))
    blocks, converged = refine_partition(
        np.zeros(rows.size, dtype=np.int64), votes, edges, np.eye(3 ** len(weights))[codes.reshape(-1)],
        max_states=MAX_CONTROL, return_converged=True,
    )
    if not converged:
        return None
    return _control(blocks, votes, edges, rows, weights, alphabet, labels, name)


def fit_control_merged(
    tokens: np.ndarray,
    votes: np.ndarray,
    weights: np.ndarray,
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    name: str = "counter_machine",
) -> CounterMachine | None:
    """The control identified by state merging on the prefix tree of the words over extended
    symbols (`merge_states`): unlike refinement, a prefix's state is decided by everything
    observed after it, so words that share few prefixes still agree. Merging needs labels without
    errors, so when the words' labels admit no small control (a network wrong on a few long
    words), their first halves are tried; None above `MAX_CONTROL`."""
    b, t = tokens.shape
    votes = np.asarray(votes).reshape(b, t + 1)
    for cut in (t, t // 2):
        if cut < 1:
            break
        tok, v = tokens[:, :cut], votes[:, : cut + 1].reshape(-1)
        _, rows, edges = _extended_prefixes(tok, weights, len(alphabet))
        children, label, node_of = _prefix_tree(edges[1].reshape(b, cut), v.reshape(b, cut + 1))
        states = merge_states(children, label, max_red=4 * MAX_CONTROL)
        machine = None if states is None else _control(
            states[node_of.reshape(-1)], v, edges, rows, weights, alphabet, labels, name
        )
        if machine is not None:
            return machine
    return None


def _prefix_tree(ext, votes_2d):
    """Trie of the words over extended symbols: children dicts, node labels (-1 unknown) and the
    node of every row `[B, T + 1]`."""
    children, label = [{}], [int(votes_2d[0, 0])]
    node_of = np.zeros(votes_2d.shape, dtype=np.int64)
    for b in range(len(ext)):
        v = 0
        if label[0] < 0:
            label[0] = int(votes_2d[b, 0])
        for t, e in enumerate(ext[b].tolist()):
            nxt = children[v].get(e)
            if nxt is None:
                nxt = children[v][e] = len(label)
                children.append({})
                label.append(-1)
            v = nxt
            if label[v] < 0:
                label[v] = int(votes_2d[b, t + 1])
            node_of[b, t + 1] = v
    return children, label, node_of


def merge_states(children, label, max_red=64):
    """Blue-fringe state merging (RPNI for Moore machines, with an evidence score as in EDSM):
    each blue node, in breadth-first order, merges into the compatible red state whose fold
    compares the most labels, else becomes red. Returns the red state of every trie node, or
    None past `max_red` red states."""
    trans = [dict(c) for c in children]
    lab = list(label)
    rep = list(range(len(lab)))
    red = [0]

    def fold(r, b, log):
        score = 0
        stack = [(r, b)]
        while stack:
            r, b = stack.pop()
            log.append(("rep", b, rep[b]))
            rep[b] = r
            if lab[b] >= 0:
                if lab[r] >= 0:
                    if lab[r] != lab[b]:
                        return -1
                    score += 1
                else:
                    log.append(("lab", r, lab[r]))
                    lab[r] = lab[b]
            for s, bc in trans[b].items():
                rc = trans[r].get(s)
                if rc is None:
                    log.append(("add", r, s))
                    trans[r][s] = bc
                else:
                    stack.append((rc, bc))
        return score

    def undo(log):
        for kind, x, y in reversed(log):
            if kind == "rep":
                rep[x] = y
            elif kind == "lab":
                lab[x] = y
            else:
                del trans[x][y]

    def blues():
        return sorted({c for r in red for c in trans[r].values() if c not in red_set})

    red_set = {0}
    while True:
        fringe = blues()
        if not fringe:
            break
        b = fringe[0]
        parent = next((r, s) for r in red for s, c in trans[r].items() if c == b)
        best = None
        for r in red:
            log = []
            trans[parent[0]][parent[1]] = r
            score = fold(r, b, log)
            undo(log)
            trans[parent[0]][parent[1]] = b
            if score >= 0 and (best is None or score > best[0]):
                best = (score, r)
        if best is None:
            red.append(b)
            red_set.add(b)
            if len(red) > max_red:
                return None
        else:
            trans[parent[0]][parent[1]] = best[1]
            fold(best[1], b, [])
    # every trie node's state: follow the representative chain to a red state
    out = np.empty(len(lab), dtype=np.int64)
    index = {r: i for i, r in enumerate(red)}
    for v in range(len(lab)):
        u = v
        while u not in index:
            u = rep[u]
        out[v] = index[u]
    return out


def _extended_prefixes(tokens: np.ndarray, weights: np.ndarray, k: int):
    """Counter sign codes `[B, T + 1]` of every prefix, the prefix row ids `[B, T + 1]`, and the
    edges (row, extended symbol = symbol * 3^m + signs after it, next row)."""
    b, t = tokens.shape
    m = len(weights)
    codes = sign_code(prefix_counts(tokens, k) @ weights.T)
    ext = tokens * 3**m + codes[:, 1:]
    rows = np.arange(b * (t + 1)).reshape(b, t + 1)
    return codes, rows, (rows[:, :-1].reshape(-1), ext.reshape(-1), rows[:, 1:].reshape(-1))


def _control(blocks, votes, edges, rows, weights, alphabet, labels, name) -> CounterMachine | None:
    """The counter machine whose control is the minimized automaton of `blocks` over extended
    symbols; None above `MAX_CONTROL` states."""
    k, m = len(alphabet), len(weights)
    ext_alphabet = tuple(f"{a}|{g}" for a in alphabet for g in range(3**m))
    built = build_automaton(
        blocks, votes, edges, rows[:, 0], ext_alphabet, labels,
        complete=lambda blk, sym: _common_target(blocks, edges, sym, blk), name=name,
    )
    a = built.minimal
    if a.n_states > MAX_CONTROL:
        return None
    table = a.transitions.reshape(a.n_states, k, 3**m)
    return CounterMachine(alphabet, labels, [f"q{i}" for i in range(a.n_states)], a.start,
                          table, a.outputs, weights.T.copy(), name)


def _common_target(blocks, edges, sym: np.ndarray, blk: np.ndarray) -> np.ndarray:
    """For an unobserved (state, extended symbol): the block the symbol most often leads to
    (in counting machines the sign after a step mostly decides the control), else a self-loop."""
    _, s, dst = edges
    out = blk.copy()
    for i, e in enumerate(sym):
        hit = blocks[dst[s == e]]
        if len(hit):
            out[i] = np.bincount(hit).argmax()
    return out


def fit_counter_machine(
    tokens: np.ndarray,
    hidden: np.ndarray,
    votes: np.ndarray,
    val: list[tuple[np.ndarray, np.ndarray]],
    alphabet: tuple[str, ...],
    labels: tuple[str, ...],
    max_counters: int = 2,
    n_candidates: int = 6,
    min_r2: float = 0.0,
    n_clusters: int = 256,
    seed: int = 0,
    name: str = "counter_machine",
) -> CounterFit | None:
    """Fit counters and a control to words `tokens [B, T]` with hidden states `hidden [B * (T +
    1), d]` and network labels `votes`; `val` holds held-out `(tokens, network labels)` pairs
    (fidelity is the lowest over them). None when no candidate is linearly encoded (R^2 >=
    `min_r2`) or no control converges."""
    k = len(alphabet)
    cands = candidate_weights(k)
    counts = prefix_counts(tokens, k).reshape(-1, k)
    r2 = readout_r2(hidden, counts @ cands.T)
    order = [i for i in np.argsort(-r2) if r2[i] >= min_r2][:n_candidates]
    tried, best = [], None
    uniq, blocks, _ = _unique_rows(hidden, 4)
    if len(uniq) > n_clusters:  # else the states repeat exactly (compiled, saturated): keep them
        blocks = KMeansAbstraction(n_states=n_clusters, seed=seed).fit(hidden).labels_
    for m in range(1, max_counters + 1):
        for combo in itertools.combinations(order, m):
            w = cands[list(combo)]
            for how, machine in (
                ("merged", fit_control_merged(tokens, votes, w, alphabet, labels, name)),
                ("refined", fit_control_refined(tokens, votes, w, alphabet, labels, name)),
                ("clusters", fit_control(tokens, blocks, votes, w, alphabet, labels, name)),
            ):
                fid = None
                if machine is not None:
                    fid = min(_agreement(machine, tok, lab) for tok, lab in val)
                    key = (round(fid, 4), -machine.n_states)
                    if best is None or key > best[0]:
                        best = (key, CounterFit(machine, fid, [float(r2[i]) for i in combo], w.tolist()))
                tried.append({"weights": w.tolist(), "r2": [float(r2[i]) for i in combo], "control": how,
                              "fidelity": fid, "n_control_states": None if machine is None else machine.n_states})
        if best is not None and best[0][0] >= 0.999:
            break
    if best is None:
        return None
    best[1].tried = tried
    return best[1]


def balanced_agreement(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the labels present in `labels` (-1 = unknown) of the share `pred` gets right:
    a rare label (a^n b^n's `yes`) counts as much as a common one."""
    mask = labels >= 0
    if not mask.any():
        return float("nan")
    p, y = pred[mask], labels[mask]
    return float(np.mean([(p[y == c] == c).mean() for c in np.unique(y)]))


def _agreement(machine: CounterMachine, tokens: np.ndarray, labels: np.ndarray) -> float:
    pred = machine.run_outputs(tokens)
    mask = labels >= 0
    return float((pred == labels)[mask].mean()) if mask.any() else float("nan")

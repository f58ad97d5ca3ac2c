"""The task zoo: named automata from the shortcut, Tomita, Chomsky-hierarchy and counter benchmarks.

Each constructor returns an `Automaton`; `registry` pairs it with its parameters, sampler and
labelling protocol into a `Task` (`get_task("cyclic:n=7")`).

Sources (see `shared/references/automata_tasks.md`):
- Liu et al. 2023, "Transformers Learn Shortcuts to Automata", arXiv 2210.10749, generator
  `synthseq/automata` (Hugging Face) and its port `ClaraBing/shortcut`.
- Tomita 1982, "Dynamic construction of finite automata from examples using hill-climbing".
- Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy", arXiv 2207.02098,
  repository `google-deepmind/neural_networks_chomsky_hierarchy`, `tasks/regular/`.
- Counter languages (`dyck1`, `majority`, `anbn`, built from `fsm_probe.automata.counter`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ..automata.machine import Automaton

LIU = "Liu et al. 2023, Transformers Learn Shortcuts to Automata, arXiv 2210.10749 (synthseq/automata)"
TOMITA = "Tomita 1982, Dynamic construction of finite automata from examples using hill-climbing"
DELETANG = "Deletang et al. 2023, Neural Networks and the Chomsky Hierarchy, arXiv 2207.02098"
ABBADINGO = ("Lang, Pearlmutter and Price 1998, Results of the Abbadingo One DFA learning competition "
             "(random DFAs as the benchmark of automaton learning)")
COUNTERS = (
    "Counter languages: Suzgun et al. 2019, LSTM networks can perform dynamic counting, arXiv "
    "1906.03648; Weiss et al. 2018, On the practical computational power of finite precision RNNs, "
    "arXiv 1805.04908; Merrill 2020, arXiv 2004.06866"
)


def _table(n_states: int, n_symbols: int, step: Callable[[int, int], int]) -> np.ndarray:
    return np.array(
        [[step(s, a) for a in range(n_symbols)] for s in range(n_states)], dtype=np.int64
    )


def _digits(k: int) -> list[str]:
    return [str(i) for i in range(k)]


def parity() -> Automaton:
    """Prefix parity of a bit string (Liu et al. 2023, `parity`)."""
    return Automaton(["0", "1"], ["0", "1"], 0, [[0, 1], [1, 0]], name="parity")


def cyclic(n: int = 5, n_actions: int = 2) -> Automaton:
    """Cyclic group C_n: action i adds i mod n (Liu et al. 2023, `cyclic`)."""
    return Automaton(
        _digits(n_actions),
        _digits(n),
        0,
        _table(n, n_actions, lambda s, a: (s + a) % n),
        name="cyclic",
    )


def dihedral(n: int = 4) -> Automaton:
    """Dihedral group of order 2n: 0 toggles direction, 1 moves one step (Liu et al. 2023).

    State (and label) index = n * toggle + position; toggle 1 means moving backwards.
    """

    def step(s: int, a: int) -> int:
        toggle, pos = divmod(s, n)
        if a == 0:
            return n * (1 - toggle) + pos
        return n * toggle + (pos + (1 if toggle == 0 else -1)) % n

    states = [f"t{t}p{p}" for t in range(2) for p in range(n)]
    return Automaton(["0", "1"], states, 0, _table(2 * n, 2, step), name="dihedral")


_QUAT = {  # unit product table: (sign, unit) for unit_a * unit_b, units 0=1, 1=i, 2=j, 3=k
    (0, 0): (1, 0), (0, 1): (1, 1), (0, 2): (1, 2), (0, 3): (1, 3),
    (1, 0): (1, 1), (1, 1): (-1, 0), (1, 2): (1, 3), (1, 3): (-1, 2),
    (2, 0): (1, 2), (2, 1): (-1, 3), (2, 2): (-1, 0), (2, 3): (1, 1),
    (3, 0): (1, 3), (3, 1): (1, 2), (3, 2): (-1, 1), (3, 3): (-1, 0),
}  # fmt: skip


def quaternion() -> Automaton:
    """Quaternion group Q_8 by right multiplication with 1, i, j, k (Liu et al. 2023).

    States 0-3 are +1, +i, +j, +k and 4-7 their negatives; start +1.
    """

    def step(s: int, a: int) -> int:
        neg, unit = divmod(s, 4)
        sign, prod = _QUAT[(unit, a)]
        return prod + 4 * ((neg == 1) != (sign == -1))

    units = ["1", "i", "j", "k"]
    states = [f"{sg}{u}" for sg in "+-" for u in units]
    return Automaton(units, states, 0, _table(8, 4, step), name="quaternion")


def _perm_automaton(
    name: str, perms: list[tuple[int, ...]], actions: list[tuple[int, ...]]
) -> Automaton:
    index = {p: i for i, p in enumerate(perms)}

    def step(s: int, a: int) -> int:
        p, act = perms[s], actions[a]
        return index[tuple(p[act[i]] for i in range(len(p)))]

    states = ["".join(map(str, p)) for p in perms]
    return Automaton(
        _digits(len(actions)), states, 0, _table(len(perms), len(actions), step), name=name
    )


def symmetric(n: int = 3, n_actions: int = 3) -> Automaton:
    """Symmetric group S_n (Liu et al. 2023, `symmetric`).

    Actions: identity, cyclic shift by one, swap of the first two, then further permutations in
    `itertools.permutations` order. Applying action a to arrangement p gives p[a[i]] at position i.
    State and label = index of the arrangement in `itertools.permutations` order.
    """
    perms = list(itertools.permutations(range(n)))
    ident = tuple(range(n))
    base = [ident, tuple((i + 1) % n for i in range(n)), (1, 0, *range(2, n))]
    actions = base + [p for p in perms if p not in base]
    return _perm_automaton("symmetric", perms, actions[:n_actions])


def _is_even(p: tuple[int, ...]) -> bool:
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2 == 0


def alternating(n: int = 4) -> Automaton:
    """Alternating group A_n: identity plus the 3-cycles (1 2 x), x = 3..n (Liu et al. 2023).

    State and label = index among the even permutations in `itertools.permutations` order.
    """
    perms = [p for p in itertools.permutations(range(n)) if _is_even(p)]
    actions = [tuple(range(n))]
    for x in range(2, n):
        a = list(range(n))
        a[0], a[1], a[x] = 1, x, 0
        actions.append(tuple(a))
    return _perm_automaton("alternating", perms, actions)


def flipflop(n: int = 2) -> Automaton:
    """Flip-flop with n values: 0 reads (no-op), i writes i; state 0 = nothing written yet (Liu et al. 2023)."""
    return Automaton(
        _digits(n + 1),
        _digits(n + 1),
        0,
        _table(n + 1, n + 1, lambda s, a: s if a == 0 else a),
        name="flipflop",
    )


def gridworld(n: int = 9) -> Automaton:
    """Walk on 0..n-1 with L/R moves clamped at the ends, start 0 (Liu et al. 2023, Grid_n)."""
    return Automaton(
        ["L", "R"],
        _digits(n),
        0,
        _table(n, 2, lambda s, a: max(0, s - 1) if a == 0 else min(n - 1, s + 1)),
        name="gridworld",
    )


def random_dfa(n: int = 20, n_symbols: int = 4, n_labels: int = 2, seed: int = 0) -> Automaton:
    """A uniformly random transition table with random labels, start 0: no structure to exploit.

    Every `delta(s, a)` and every state's label is drawn uniformly (numpy's generator from
    `seed`); unreachable and equivalent states are possible, so the minimal automaton can be smaller.
    """
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n, size=(n, n_symbols))
    labels = rng.integers(0, n_labels, size=n)
    return Automaton([f"a{j}" for j in range(n_symbols)], [f"q{i}" for i in range(n)], 0, table,
                     [str(x) for x in labels], [str(x) for x in range(n_labels)], name="random")


def abab() -> Automaton:
    """Recognizer of (01)* tracking the position in the period (Liu et al. 2023, `abab`).

    States 0-3: position after the last symbol of the pattern 0101 (state 3 = on a boundary, the
    start); state 4 = absorbing failure. Label = state.
    """

    def step(s: int, a: int) -> int:
        if s == 4:
            return 4
        return (s + 1) % 4 if a == (s + 1) % 2 else 4

    return Automaton(["0", "1"], _digits(5), 3, _table(5, 2, step), name="abab")


def adder(n_addends: int = 2) -> Automaton:
    """Binary addition of n_addends numbers, LSB first, one token per bit column (Liu et al. 2023).

    Symbol c has bit j of addend j at (c >> j) & 1 (its name lists the bits, addend 0 first).
    State and label = digit + 2 * carry, where digit is the output bit of the column just read.
    """
    n_carry = n_addends

    def step(s: int, a: int) -> int:
        carry = s // 2
        total = carry + bin(a).count("1")
        return total % 2 + 2 * (total // 2)

    symbols = ["".join(str((c >> j) & 1) for j in range(n_addends)) for c in range(2**n_addends)]
    states = [f"d{d}c{c}" for c in range(n_carry) for d in range(2)]
    return Automaton(symbols, states, 0, _table(2 * n_carry, 2**n_addends, step), name="adder")


def _dfa(name: str, n: int, table: list[list[int]], accept: set[int]) -> Automaton:
    return Automaton(
        ["0", "1"],
        [f"q{i}" for i in range(n)],
        0,
        table,
        [1 if s in accept else 0 for s in range(n)],
        ["reject", "accept"],
        name=name,
    )


def tomita1() -> Automaton:
    """Tomita 1 (Tomita 1982): 1*."""
    return _dfa("tomita1", 2, [[1, 0], [1, 1]], {0})


def tomita2() -> Automaton:
    """Tomita 2 (Tomita 1982): (10)*."""
    return _dfa("tomita2", 3, [[2, 1], [0, 2], [2, 2]], {0})


def tomita3() -> Automaton:
    """Tomita 3 (Tomita 1982): no odd run of 1s immediately followed by an odd run of 0s.

    q0 safe, q1 inside an odd 1-run, q2 odd 1-run then odd 0-run, q3 ... then even 0-run, q4 dead.
    """
    return _dfa("tomita3", 5, [[0, 1], [2, 0], [3, 4], [2, 1], [4, 4]], {0, 1, 3})


def tomita4() -> Automaton:
    """Tomita 4 (Tomita 1982): no substring 000."""
    return _dfa("tomita4", 4, [[1, 0], [2, 0], [3, 0], [3, 3]], {0, 1, 2})


def tomita5() -> Automaton:
    """Tomita 5 (Tomita 1982): even number of 0s and even number of 1s."""
    return _dfa("tomita5", 4, [[s ^ 1, s ^ 2] for s in range(4)], {0})


def tomita6() -> Automaton:
    """Tomita 6 (Tomita 1982): (#0 - #1) divisible by 3."""
    return _dfa("tomita6", 3, [[(s + 1) % 3, (s - 1) % 3] for s in range(3)], {0})


def tomita7() -> Automaton:
    """Tomita 7 (Tomita 1982): 0*1*0*1*."""
    return _dfa("tomita7", 5, [[0, 1], [2, 1], [2, 3], [4, 3], [4, 4]], {0, 1, 2, 3})


def even_pairs() -> Automaton:
    """Even Pairs (Deletang et al. 2023): label = number of unequal adjacent pairs mod 2 (= first != last)."""
    states = ["start", "00", "01", "10", "11"]
    table = {"start": {"0": "00", "1": "11"}}
    for f in "01":
        for last in "01":
            table[f + last] = {b: f + b for b in "01"}
    outputs = {s: "0" if s == "start" or s[0] == s[1] else "1" for s in states}
    return Automaton(["0", "1"], states, "start", table, outputs, ["0", "1"], name="even_pairs")


def parity_check() -> Automaton:
    """Parity Check (Deletang et al. 2023): label = number of 1s mod 2."""
    return Automaton(
        ["0", "1"], ["even", "odd"], 0, [[0, 1], [1, 0]], [0, 1], ["0", "1"], name="parity_check"
    )


def cycle_navigation() -> Automaton:
    """Cycle Navigation (Deletang et al. 2023), encoding of their code: token 0 = -1, 1 = stay, 2 = +1.

    (The paper's appendix uses 0 = stay, 1 = +1, 2 = -1; the tasks are isomorphic.)
    """
    return Automaton(
        _digits(3),
        _digits(5),
        0,
        _table(5, 3, lambda s, a: (s + a - 1) % 5),
        name="cycle_navigation",
    )


def modular_arithmetic(modulus: int = 5) -> Automaton:
    """Modular Arithmetic (Simple) (Deletang et al. 2023) with standard precedence, as in their code.

    Symbols: digits "0".."m-1" (ids 0..m-1), then "+", "-", "*". `1+2*3` = 2, `1-1-1` = 4,
    `0*1+4*3-2` = 0 (mod 5). The value is acc + term where term is the current signed product.
    States after a digit are (acc, term), labelled with (acc + term) mod m. States after an operator
    (and the start) are (base, mult): the next digit d gives the value base + mult * d; they carry
    the label "op", because "value so far" is not a function of the Myhill-Nerode class there.
    Digit after digit, a leading operator and operator after operator lead to the absorbing state
    "invalid" (label "invalid"). Minimal size: 2 * m**2 valid states + the sink (50 + 1 for m=5).
    """
    m = modulus
    plus, minus, times = m, m + 1, m + 2
    digit_states = [(a, t) for a in range(m) for t in range(m)]
    states = (
        [f"v{a},{t}" for a, t in digit_states]
        + [f"o{b},{k}" for b, k in digit_states]
        + ["invalid"]
    )
    invalid = 2 * m * m

    def digit_state(a: int, t: int) -> int:
        return a * m + t

    def op_state(b: int, k: int) -> int:
        return m * m + b * m + k

    table = np.full((len(states), m + 3), invalid, dtype=np.int64)
    outputs = np.zeros(len(states), dtype=np.int64)
    for a, t in digit_states:
        s = digit_state(a, t)
        outputs[s] = (a + t) % m
        table[s, plus] = op_state((a + t) % m, 1)
        table[s, minus] = op_state((a + t) % m, m - 1)
        table[s, times] = op_state(a, t)
        o = op_state(a, t)
        outputs[o] = m
        for d in range(m):
            table[o, d] = digit_state(a, (t * d) % m)
    outputs[invalid] = m + 1
    return Automaton(
        [*_digits(m), "+", "-", "*"],
        states,
        op_state(0, 1),
        table,
        outputs,
        [*_digits(m), "op", "invalid"],
        name="modular_arithmetic",
    )

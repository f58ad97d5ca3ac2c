"""Stage 1, ground truth: finite automata and the counter machines of the counter tasks.

`machine` holds `Automaton`; `algorithms` (minimize, trim, power, equivalent, isomorphism) and
`convert` (dict/JSON files, networkx) are functions of an automaton, also its methods.
"""

from .counter import COUNTER_MACHINES, CounterMachine, anbn, counter_machine_of, dyck1, majority
from .machine import MAX_SEGMENT_SYMBOLS, Automaton, segment_alphabet, segment_tokens, segment_words

__all__ = [
    "COUNTER_MACHINES",
    "MAX_SEGMENT_SYMBOLS",
    "Automaton",
    "CounterMachine",
    "anbn",
    "counter_machine_of",
    "dyck1",
    "majority",
    "segment_alphabet",
    "segment_tokens",
    "segment_words",
]

"""The zoo's registry: task names, their parameters and defaults, and the NAME[:k=v] spec parser.

`list_tasks()` shows every entry (`TaskInfo`, with `Param` bounds); `get_task(spec)` validates
the parameters, builds the automaton and its sampler, and returns the `Task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..automata.machine import Automaton
from ..errors import TaskError
from .samplers import (
    AbabSampler,
    AdderSampler,
    AnbnSampler,
    DyckSampler,
    FlipFlopSampler,
    ModularArithmeticSampler,
    Sampler,
    UniformSampler,
)
from .task import Task, task_from_file
from .zoo import (
    ABBADINGO,
    COUNTERS,
    DELETANG,
    LIU,
    TOMITA,
    abab,
    adder,
    alternating,
    cycle_navigation,
    cyclic,
    dihedral,
    even_pairs,
    flipflop,
    gridworld,
    modular_arithmetic,
    parity,
    parity_check,
    quaternion,
    random_dfa,
    symmetric,
    tomita1,
    tomita2,
    tomita3,
    tomita4,
    tomita5,
    tomita6,
    tomita7,
)


@dataclass(frozen=True)
class Param:
    """One task parameter: default and inclusive bounds (None = unbounded)."""

    default: int | float
    lo: int | float | None = None
    hi: int | float | None = None


@dataclass(frozen=True)
class TaskInfo:
    """Registry entry shown by `list_tasks`."""

    name: str
    params: dict[str, Param]
    description: str
    source: str
    final_only: bool = False
    length_rule: str = "any"

    @property
    def defaults(self) -> dict[str, int | float]:
        return {k: p.default for k, p in self.params.items()}


@dataclass(frozen=True)
class _Entry:
    info: TaskInfo
    build: Callable[..., Automaton]
    sampler: Callable[..., Sampler]
    automaton_params: tuple[str, ...]
    check: Callable[[dict], None] | None = None


def _uniform(a: Automaton, **_: Any) -> Sampler:
    return UniformSampler(a.n_symbols)


_REGISTRY: dict[str, _Entry] = {}


def _register(
    name: str,
    build: Callable[..., Automaton],
    source: str,
    params: dict[str, Param] | None = None,
    sampler: Callable[..., Sampler] = _uniform,
    automaton_params: tuple[str, ...] | None = None,
    check: Callable[[dict], None] | None = None,
    final_only: bool = False,
    length_rule: str = "any",
) -> None:
    params = params or {}
    doc = (build.__doc__ or "").strip().splitlines()[0]
    info = TaskInfo(name, params, doc, source, final_only, length_rule)
    keys = tuple(params) if automaton_params is None else automaton_params
    _REGISTRY[name] = _Entry(info, build, sampler, keys, check)


def _check_cyclic(p: dict) -> None:
    if p["n_actions"] > p["n"]:
        raise TaskError(f"cyclic: n_actions={p['n_actions']} must be <= n={p['n']}")


def _check_symmetric(p: dict) -> None:
    if p["n_actions"] > math.factorial(p["n"]):
        raise TaskError(
            f"symmetric: n_actions={p['n_actions']} must be <= n! = {math.factorial(p['n'])}"
        )


_register("parity", parity, LIU)
_register(
    "cyclic",
    cyclic,
    LIU,
    {"n": Param(5, 2, 1000), "n_actions": Param(2, 1, 1000)},
    check=_check_cyclic,
)
_register("dihedral", dihedral, LIU, {"n": Param(4, 3, 1000)})
_register("quaternion", quaternion, LIU)
_register(
    "symmetric",
    symmetric,
    LIU,
    {"n": Param(3, 3, 6), "n_actions": Param(3, 1, 720)},
    check=_check_symmetric,
)
_register("alternating", alternating, LIU, {"n": Param(4, 3, 7)})
_register(
    "flipflop",
    flipflop,
    LIU,
    {"n": Param(2, 1, 100), "p_write": Param(0.5, 0.0, 1.0)},
    sampler=lambda a, n, p_write: FlipFlopSampler(n, p_write),
    automaton_params=("n",),
)
_register("gridworld", gridworld, LIU, {"n": Param(9, 2, 1000)})
_register(
    "abab",
    abab,
    LIU,
    {"p_exact": Param(0.25, 0.0, 1.0)},
    sampler=lambda a, p_exact: AbabSampler(p_exact),
    automaton_params=(),
)
_register(
    "adder",
    adder,
    LIU,
    {"n_addends": Param(2, 2, 8)},
    sampler=lambda a, n_addends: AdderSampler(n_addends),
)
_register(
    "random",
    random_dfa,
    ABBADINGO,
    {"n": Param(20, 1, 1000), "n_symbols": Param(4, 1, 100), "n_labels": Param(2, 1, 100), "seed": Param(0, 0, 2**31 - 1)},
)
for _i, _fn in enumerate([tomita1, tomita2, tomita3, tomita4, tomita5, tomita6, tomita7], start=1):
    _register(f"tomita{_i}", _fn, TOMITA)
_register("even_pairs", even_pairs, DELETANG, final_only=True)
_register("parity_check", parity_check, DELETANG, final_only=True)
_register("cycle_navigation", cycle_navigation, DELETANG, final_only=True)
_register(
    "modular_arithmetic",
    modular_arithmetic,
    DELETANG,
    {"modulus": Param(5, 2, 10)},
    sampler=lambda a, modulus: ModularArithmeticSampler(modulus),
    final_only=True,
    length_rule="odd",
)


def _counter_task(name: str) -> Callable[..., Automaton]:
    from ..automata.counter import COUNTER_MACHINES

    machine = COUNTER_MACHINES[name]

    def build(max_count: int = 100) -> Automaton:
        return machine().truncate(max_count).minimize()

    build.__doc__ = (
        f"{(machine.__doc__ or '').strip().splitlines()[0]} Not finite-state: the automaton is the "
        "counter machine truncated at |count| <= max_count, exact on words up to that length "
        "(fsm_probe.automata.counter)."
    )
    return build



_register(
    "dyck1",
    _counter_task("dyck1"),
    COUNTERS,
    {"max_count": Param(100, 2, 1000), "p_invalid": Param(0.1, 0.0, 1.0)},
    sampler=lambda a, max_count, p_invalid: DyckSampler(p_invalid),
    automaton_params=("max_count",),
)
_register("majority", _counter_task("majority"), COUNTERS, {"max_count": Param(100, 2, 1000)})
_register(
    "anbn",
    _counter_task("anbn"),
    COUNTERS,
    {"max_count": Param(100, 2, 1000), "p_corrupt": Param(0.3, 0.0, 1.0)},
    sampler=lambda a, max_count, p_corrupt: AnbnSampler(p_corrupt),
    automaton_params=("max_count",),
)



def list_tasks() -> list[TaskInfo]:
    """Every zoo task with its parameters, defaults, description and source."""
    return [e.info for e in _REGISTRY.values()]


def _parse_value(task: str, key: str, raw: str, param: Param) -> int | float:
    try:
        value: int | float = int(raw) if isinstance(param.default, int) else float(raw)
    except ValueError:
        kind = "an integer" if isinstance(param.default, int) else "a number"
        raise TaskError(f"{task}: parameter {key}={raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise TaskError(f"{task}: parameter {key}={raw!r} is not a finite number")
    if (param.lo is not None and value < param.lo) or (param.hi is not None and value > param.hi):
        raise TaskError(f"{task}: parameter {key}={value} outside [{param.lo}, {param.hi}]")
    return value


def get_task(spec: str) -> Task:
    """Build a task from "NAME" or "NAME:k=v,k2=v2" (or "file:PATH" for a user automaton)."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("file:"):
        return task_from_file(spec[len("file:") :])
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    accepted = entry.info.params
    params = dict(entry.info.defaults)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise TaskError(f"{name}: expected key=value, got {item!r}")
        if key not in accepted:
            ok = ", ".join(accepted) if accepted else "none"
            raise TaskError(f"{name}: unknown parameter {key!r}; accepted parameters: {ok}")
        params[key] = _parse_value(name, key, raw.strip(), accepted[key])
    if entry.check is not None:
        entry.check(params)
    automaton = entry.build(**{k: params[k] for k in entry.automaton_params})
    return Task(
        name=name,
        params=params,
        automaton=automaton,
        sampler=entry.sampler(automaton, **params),
        final_only=entry.info.final_only,
        length_rule=entry.info.length_rule,
    )

"""`Task`: an automaton, how its inputs are drawn, and how it is labelled; user automata as tasks.

`task_from_automaton` wraps an `Automaton` (uniform inputs unless an input distribution is
given); `task_from_file` reads a user automaton JSON. Zoo tasks come from `registry.get_task`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..automata.machine import Automaton
from ..errors import AutomatonError, TaskError
from .samplers import CategoricalSampler, Sampler, UniformSampler


@dataclass(frozen=True)
class Task:
    """An automaton, how its inputs are drawn, and how it is labelled."""

    name: str
    params: dict
    automaton: Automaton
    sampler: Sampler
    final_only: bool = False
    length_rule: str = "any"
    input_distribution: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.length_rule not in ("any", "odd"):
            raise TaskError(f"length_rule must be 'any' or 'odd', got {self.length_rule!r}")
        if self.sampler.n_symbols != self.automaton.n_symbols:
            raise TaskError(
                f"sampler draws {self.sampler.n_symbols} symbols, automaton has {self.automaton.n_symbols}"
            )

    @property
    def spec(self) -> str:
        """Spec string accepted by `get_task`, e.g. "cyclic:n=5,n_actions=2".

        A file task's spec is "file:<automaton name>", a label rather than a path: `get_task`
        cannot rebuild it (checkpoints store the whole automaton instead).
        """
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())

    @property
    def is_file_task(self) -> bool:
        return self.name.startswith("file:")

    def effective_length(self, length: int) -> int:
        """Apply `length_rule`: odd lengths are kept, even ones shortened by one (min 1)."""
        if self.length_rule == "odd" and length % 2 == 0:
            return max(1, length - 1)
        return length

    def to_dict(self) -> dict[str, Any]:
        """`{"spec": ...}` for zoo tasks; user automata carry the automaton itself."""
        if not self.is_file_task:
            return {"spec": self.spec}
        d: dict[str, Any] = {"spec": self.name, "automaton": self.automaton.to_dict()}
        if self.input_distribution is not None:
            d["input_distribution"] = dict(self.input_distribution)
        if self.final_only:
            d["final_only"] = True
        if self.length_rule != "any":
            d["length_rule"] = self.length_rule
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Task:
        """Inverse of `to_dict`."""
        if not isinstance(d, Mapping) or not isinstance(d.get("spec"), str):
            raise TaskError(f"task description must be an object with a 'spec' string, got {d!r}")
        spec = d["spec"]
        if not spec.startswith("file:"):
            extra = set(d) - {"spec"}
            if extra:
                raise TaskError(f"unknown key(s) {sorted(extra)} in zoo task description")
            from .registry import get_task  # the registry builds Tasks, so it imports this module

            return get_task(spec)
        extra = set(d) - {"spec", "automaton", "input_distribution", "final_only", "length_rule"}
        if extra:
            raise TaskError(f"unknown key(s) {sorted(extra)} in task description")
        if "automaton" not in d:
            raise TaskError(f"task {spec!r} lacks its 'automaton'")
        return task_from_automaton(
            Automaton.from_dict(d["automaton"]),
            input_distribution=d.get("input_distribution"),
            final_only=bool(d.get("final_only", False)),
            length_rule=d.get("length_rule", "any"),
        )


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def task_from_automaton(
    automaton: Automaton,
    input_distribution: Mapping[str, float] | None = None,
    final_only: bool = False,
    length_rule: str = "any",
) -> Task:
    """Wrap a user automaton: uniform inputs unless `input_distribution` (symbol -> prob) is given."""
    if input_distribution is None:
        sampler: Sampler = UniformSampler(automaton.n_symbols)
        dist = None
    else:
        if not isinstance(input_distribution, Mapping):
            raise TaskError(
                f"input_distribution must map symbols to probabilities, got {input_distribution!r}"
            )
        unknown = [a for a in input_distribution if a not in automaton.alphabet]
        if unknown:
            raise TaskError(f"input_distribution names unknown symbol(s) {unknown}")
        for a, p in input_distribution.items():
            if not isinstance(p, int | float) or isinstance(p, bool):
                raise TaskError(f"probability of {a!r} must be a number, got {p!r}")
        dist = {a: float(input_distribution.get(a, 0.0)) for a in automaton.alphabet}
        sampler = CategoricalSampler(tuple(dist.values()))
    return Task(
        name=f"file:{automaton.name}",
        params={},
        automaton=automaton,
        sampler=sampler,
        final_only=final_only,
        length_rule=length_rule,
        input_distribution=dist,
    )


def task_from_file(path: str | os.PathLike) -> Task:
    """Task for a user automaton JSON file (optionally with an "input_distribution")."""
    automaton, data = Automaton.read_json(path)
    dist = data.get("input_distribution")
    try:
        return task_from_automaton(automaton, dist)
    except TaskError as e:
        raise AutomatonError(f"{str(path)!r}: {e}") from None

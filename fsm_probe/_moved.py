"""Old module paths (before the stage folders) kept importable for one release.

`import fsm_probe.lens` returns the module `fsm_probe.circuits.lens` itself (not a copy), with a
DeprecationWarning naming the new path; remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "fsm_probe.counters": "fsm_probe.automata.counter",
    "fsm_probe.datasets": "fsm_probe.tasks.datasets",
    "fsm_probe.evaluation": "fsm_probe.training.evaluation",
    "fsm_probe.checkpoint": "fsm_probe.training.checkpoint",
    "fsm_probe.recipes": "fsm_probe.training.recipes",
    "fsm_probe.recipes_size": "fsm_probe.training.recipes_size",
    "fsm_probe.verdict": "fsm_probe.training.verdict",
    "fsm_probe.lens": "fsm_probe.circuits.lens",
    "fsm_probe.probes": "fsm_probe.circuits.probes",
    "fsm_probe.attention": "fsm_probe.circuits.attention",
    "fsm_probe.patching": "fsm_probe.circuits.patching",
    "fsm_probe.patched_runs": "fsm_probe.circuits.engine",
    "fsm_probe.tracing": "fsm_probe.circuits.tracing",
    "fsm_probe.circuit": "fsm_probe.circuits.graph",
    "fsm_probe.circuit_discovery": "fsm_probe.circuits.discovery",
    "fsm_probe.causal_abstraction": "fsm_probe.circuits.causal_abstraction",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path: object, target: object = None):  # noqa: ARG002
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in 0.3", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set the alias's spec on the real module: give it back, so that
        # importlib.reload (notebook autoreload) reloads the real module
        module.__spec__ = self._specs.get(module.__name__, module.__spec__)
        module.__loader__ = module.__spec__.loader


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())

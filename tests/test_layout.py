"""The package's shape: a folder per stage, imports only from the same or an earlier stage, no
module over 500 lines, nothing attached to a model."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fsm_probe"
# The order data flows in; a module may import from its own stage and earlier ones.
STAGES = [
    {"errors", "io", "_validate", "_interrupt", "_moved", "_lazy", "_results", "__init__"},
    {"automata"},
    {"tasks"},
    {"models"},
    {"training"},
    {"extraction", "circuits"},
    {"explain"},
    {"figures"},
    {"report"},
    {"demo", "cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(STAGES) for name in names}
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _top(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first package component) of every import of fsm_probe itself in `path`."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = parts[:-1]  # a module's package; for an __init__.py, the package it starts
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [a.name for a in node.names]
            elif (node.module or "").startswith("fsm_probe."):
                names = [node.module.split(".")[1]]
            else:
                continue
            found += [(node.lineno, n) for n in names]
    return found


def test_every_module_belongs_to_a_stage():
    assert {_top(p) for p in MODULES} <= set(RANK), {_top(p) for p in MODULES} - set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_to_earlier_stages(path):
    if path.name == "_moved.py" or path == PACKAGE / "__init__.py":
        return  # the lazy re-exports of the whole public API and the old paths
    here = RANK[_top(path)]
    later = [(line, name) for line, name in _imports(path) if RANK.get(name, -1) > here]
    assert not later, f"{path.relative_to(PACKAGE)} imports a later stage: {later}"


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert not long


def test_nothing_is_attached_to_a_model():
    attached = re.compile(r"\b(model|m|self\.transformer)\.fsm_\w+\s*=")
    hits = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES
            for i, line in enumerate(p.read_text().splitlines(), 1) if attached.search(line)]
    assert not hits


def test_help_and_tasks_do_not_import_torch():
    """`fsm-probe --help`, `train --help` and `tasks` stay fast: torch is imported only by commands
    that need a model."""
    code = (
        "import sys\n"
        "from fsm_probe.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['tasks']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_old_module_paths_alias_the_new_modules():
    import importlib

    from fsm_probe._moved import MOVED

    for old, new in MOVED.items():
        with pytest.warns(DeprecationWarning, match=new):
            module = importlib.import_module(old) if old not in sys.modules else _reimport(old)
        assert module is importlib.import_module(new)
        assert module.__spec__.name == new  # importlib.reload still reloads the real module
    # names of the old modules that became packages
    from fsm_probe.report import CIRCUIT_THRESHOLD, SECTIONS, analysis_length  # noqa: F401
    from fsm_probe.training import (  # noqa: F401
        CURRICULUM_PASS,
        RECIPE_FIELDS,
        curriculum_lengths,
        lr_schedule,
        stop_reason,
    )
    from fsm_probe.training.verdict import trained_length

    assert trained_length(None) is None


def _reimport(name: str):
    del sys.modules[name]
    import importlib

    return importlib.import_module(name)

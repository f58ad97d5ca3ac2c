"""The README's code runs as written, in order, on a fresh checkout.

Python blocks run top to bottom in one namespace; every `fsm-probe ...` line of the bash blocks
runs through the CLI's entry point. Both run in a scratch directory that holds a link to the
repository's `examples/`, so paths such as `runs/...` and `examples/tasks/mod3.json` resolve as
they do for a user in the repository root. With FSM_PROBE_QUICK=1 (the test suite's setting),
`train` commands without `--max-steps` get a small budget and `report` gets `--quick`; nothing
else is changed. `fsm-probe demo` is `make demo`'s job and is not repeated here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from fsm_probe.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)


def blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [textwrap.dedent(body) for lang, body in FENCE.findall(text) if lang == language]


def cli_lines() -> list[str]:
    """`fsm-probe` commands of the bash blocks, comments stripped, continuation lines joined."""
    lines = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("fsm-probe "):
                lines.append(line)
    return lines


def quick(argv: list[str]) -> list[str]:
    if os.environ.get("FSM_PROBE_QUICK") != "1":
        return argv
    if argv[0] == "train" and "--max-steps" not in argv:
        argv = [*argv, "--max-steps", "60"]
    if argv[0] == "report" and "--quick" not in argv:
        argv = [*argv, "--quick"]
    return argv


@pytest.fixture()
def in_scratch(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSM_PROBE_QUICK", "1")
    return tmp_path


def test_readme_has_the_two_commands_first() -> None:
    first = blocks("bash")[0].splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")


def test_json_blocks_parse_and_the_task_file_ships() -> None:
    for body in blocks("json"):
        data = json.loads(body)
        if data.get("name") == "mod3":
            assert data == json.loads((ROOT / "examples/tasks/mod3.json").read_text())


@pytest.mark.slow
def test_readme_code_runs_in_order(in_scratch, capsys) -> None:
    lines = cli_lines()
    assert any(line.startswith("fsm-probe train") for line in lines)
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "demo":
            continue
        with pytest.raises(SystemExit) as exit_info:
            main(quick(argv))
        assert exit_info.value.code == 0, f"{line!r} exited {exit_info.value.code}: {capsys.readouterr().err}"
    namespace: dict = {"__name__": "__readme__"}
    for i, body in enumerate(blocks("python")):
        try:
            exec(compile(body, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"README python block {i + 1} failed: {e!r}\n{body}") from e

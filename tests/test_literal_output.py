"""User strings (task names, symbols, labels, paths) reach the terminal exactly as written."""

import json

import pytest

from fsm_probe.cli import main

pytestmark = pytest.mark.slow

NAME = "lights:traffic_light:[bold]x[/bold]"


def _cli(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    return captured.out


def test_names_symbols_and_labels_print_literally(tmp_path, capsys):
    task = {
        "name": NAME, "alphabet": [":cat:", "[b]"], "states": ["red", "green"], "start": "red",
        "transitions": {"red": {":cat:": "green", "[b]": "red"}, "green": {":cat:": "red", "[b]": "green"}},
        "outputs": {"red": "[red]", "green": ":smile:"},
    }
    path = tmp_path / "[dir]:cat:"
    path.mkdir()
    (path / "t.json").write_text(json.dumps(task))
    run = path / "run"
    out = _cli(capsys, "train", "--task-file", str(path / "t.json"), "--arch", "gru", "--hidden", "4",
               "--max-steps", "3", "--quiet", "--out", str(run))
    assert NAME in out and str(run) in " ".join(out.split())
    assert "did not learn in distribution" in out and "[bold red]" not in out  # styled, not markup text
    out = _cli(capsys, "predict", str(run), ":cat: [b] :cat:")
    lines = out.splitlines()
    assert lines[0] == ":cat: [b] :cat:"
    assert lines[2] == "  true:      :smile: :smile: [red]"
    assert set(lines[1].split()[1:]) <= {"[red]", ":smile:"}
    out = _cli(capsys, "eval", str(run), "--lengths", "5", "--n", "8")
    assert ":traffic_light:[bold]x[/bold]" in out  # the table title, not an emoji or bold text

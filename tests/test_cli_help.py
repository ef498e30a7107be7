"""``--help`` of every command: an explanation for each option, each default shown once and only when real."""
from __future__ import annotations

import argparse
import pytest

from vspbfr_core.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = sorted(_commands())


def test_every_command_is_covered():
    assert {"restore", "faces", "info", "convert", "download"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_explains_every_option_and_shows_defaults_once(name):
    command = _commands()[name]
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 8, f"{name} {action.option_strings or action.dest}: no help text"
    text = command.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    formatter = command._get_formatter()
    for action in command._actions:
        shown = formatter._expand_help(action)              # the text --help prints for this option
        assert shown.lower().count("default") <= 1, f"{name}: default stated twice in {shown!r}"


def test_one_spelling_for_the_models_folder_in_every_command(tmp_path, capsys):
    """--models DIR works in every command that reads or fills the models folder (older spellings still parse)."""
    from vspbfr_core.cli import main

    parser = build_parser()
    for command in ("restore", "faces", "info", "download"):
        flags = {f for a in _commands()[command]._actions for f in a.option_strings}
        assert "--models" in flags, command
    args = parser.parse_args(["info", "--models", str(tmp_path)])
    assert args.models == str(tmp_path)
    assert parser.parse_args(["download", "--models", "x"]).to == parser.parse_args(["download", "--to", "x"]).to
    assert main(["info", "--models", str(tmp_path)]) == 1          # an empty folder: usable, but nothing there
    out = capsys.readouterr().out
    assert f"models folder: {tmp_path} (--models)" in out and f"vspbfr download --models {tmp_path}" in out
    assert main(["info", str(tmp_path)]) == 1                        # the older positional spelling
    assert main(["info", "--models", str(tmp_path), str(tmp_path / "other")]) == 1
    assert "two models folders given" in capsys.readouterr().err

"""`routevit <command> --help` states every default, and the defaults written as text parse."""

from __future__ import annotations

import argparse

import pytest

from routevit import cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_shows_every_default(command: str) -> None:
    parser = _commands()[command]
    text = " ".join(parser.format_help().split())  # unwrap the columns
    for action in parser._actions:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            continue
        shown = action.default if isinstance(action.default, str) else repr(action.default)
        flag = action.option_strings[-1]
        assert action.help, f"{command} {flag} has no help text"
        assert "default" in action.help or f"(default: {action.default})" in text, (
            f"`routevit {command} --help` does not show the default of {flag} ({shown})"
        )


def test_text_defaults_parse_to_lists() -> None:
    bench = cli._build_parser().parse_args(["bench"])
    assert bench.batch_sizes == [1, 32]
    rep = cli._build_parser().parse_args(["reproduce", "cifar10", "--data", "d"])
    assert rep.seeds == [0, 1] and rep.sweep == [0.1, 0.2, 0.25, 0.5, 0.75, 1.0]

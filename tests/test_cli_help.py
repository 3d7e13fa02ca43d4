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
    assert rep.seeds is None and rep.sweep is None and rep.preset == "full"  # the preset decides
    argv = ["reproduce", "cifar10", "--data", "d", "--seeds", "0,1", "--sweep", "0.5,1"]
    rep = cli._build_parser().parse_args(argv)
    assert rep.seeds == [0, 1] and rep.sweep == [0.5, 1.0]


def test_reproduce_help_quotes_the_full_presets_budget(capsys) -> None:
    from routevit.reproduce import Budget

    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    b = Budget()
    for flag, value in (("--teacher-epochs", b.teacher_epochs), ("--student-epochs", b.student_epochs),
                        ("--batch-size", b.batch_size), ("--bench-repeats", b.bench_repeats)):  # fmt: skip
        start = text.rindex(f"{flag} {flag[2:].upper().replace('-', '_')}")
        assert f"({value})" in text[start : start + 200], flag
    assert f"({','.join(map(str, b.seeds))})" in text

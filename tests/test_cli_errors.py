"""The error contract (medpipe.errors) on every subcommand: a missing input is one line on stderr, exit 2.

Every subcommand of ``medpipe`` is run with its required arguments filled in by their kind: paths that
do not exist (a ``--config`` among them), the first allowed value of a choice, a small number. Whatever
the command reads first is missing, and the answer must be exactly one line naming it, with no traceback.
"""

from __future__ import annotations

import argparse

import pytest

from medpipe import cli

# values that are not paths; every other required argument gets a path that does not exist
NOT_PATHS = {"--parts": "2", "--part": "1-of-2", "--dataset": "ds", "--model": "m", "--run": "r", "run": "r",
             "--kind": None, "--model-type": None, "--method": None, "--seed": "0"}
# a subcommand that reads no input file: what makes it fail instead (documented exception)
NO_INPUT = {"synth": (["--kind", "mri", "--out", "{tmp}/out", "--size", "64", "64"], "--size")}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([name])
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _missing_args(name: str, tmp) -> tuple[list[str], list[str]]:
    """Required arguments of ``name``: (argv, the missing paths among them)."""
    argv, missing = [name], []
    for action in _subparser(name)._actions:
        if not (action.required or not action.option_strings) or isinstance(action, argparse._HelpAction):
            continue
        if action.nargs == 0:
            continue
        key = action.option_strings[0] if action.option_strings else action.dest
        if action.choices:
            value = str(next(iter(action.choices)))
        elif NOT_PATHS.get(key):
            value = NOT_PATHS[key]
        else:
            value = f"{tmp}/missing-{action.dest.replace('_', '-')}"
            missing.append(value)
        argv += [*action.option_strings[:1], value]
    return argv, missing


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_every_subcommand_says_a_missing_input_in_one_line_and_exits_2(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if name in NO_INPUT:
        template, expected = NO_INPUT[name]
        argv, expected = [name, *(a.format(tmp=tmp_path) for a in template)], [expected]
    else:
        argv, expected = _missing_args(name, tmp_path)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert any(path in err for path in expected), (argv, err)

"""Every subcommand's --help: a description, examples and its exit codes, the codes taken from
drd.errors; shell completion and the man page generated from the same parser."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from drd import errors
from drd.cli.generated import completion, manpage
from drd.cli.helptext import COMMANDS, exit_codes, first_sentence
from drd.cli.main import build_parser, main


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))


ALL = list(subcommands(build_parser()))


def test_every_command_has_its_help_text() -> None:
    assert {p[0] for p, _ in ALL} == set(COMMANDS)


@pytest.mark.parametrize(("path", "sub"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_has_a_description_examples_and_exit_codes(
    path: tuple[str, ...], sub: argparse.ArgumentParser
) -> None:
    text = sub.format_help()
    assert sub.description and len(sub.description) > 20
    examples = re.search(r"^examples:\n((?:  .+\n)+)", text, re.M)
    assert examples, text
    assert all(
        line.strip().startswith(("drd ", "DRD_", "archive_command", "restore_command"))
        for line in examples.group(1).splitlines()
    )
    codes = re.search(r"^exit codes:\n((?:  .+\n?)+)", text, re.M)
    assert codes, text
    listed = [int(line.split()[0]) for line in codes.group(1).splitlines()]
    assert listed[0] == 0 and listed[-1] == errors.EXIT_INTERRUPTED and 2 in listed
    assert listed == sorted(listed)


def test_exit_codes_are_derived_from_the_error_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    doctor = dict(exit_codes(COMMANDS["doctor"].failures))
    assert doctor[1] == first_sentence(errors.DoctorFailed)
    assert doctor[3].startswith("The daemon config or a DR plan is invalid")
    # A changed code shows up in the help without anyone editing it.
    monkeypatch.setattr(errors.DoctorFailed, "exit_code", 42)
    assert 42 in dict(exit_codes(COMMANDS["doctor"].failures))
    text = dict(subcommands(build_parser()))[("doctor",)].format_help()
    assert re.search(r"^   42  `drd doctor` found a region", text, re.M), text


def test_drd_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    codes = {int(m) for m in re.findall(r"^ +(\d+)  ", out.split("exit codes:")[1], re.M)}
    classes = [errors.DrdError]
    for cls in classes:
        classes += cls.__subclasses__()
    assert codes == {c.exit_code for c in classes} | {errors.EXIT_OK, errors.EXIT_INTERRUPTED}


def test_restore_help_lists_the_restore_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["restore", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for cls in (errors.TargetExists, errors.MissingRoles, errors.BackupNotFound):
        assert re.search(rf"^ +{cls.exit_code}  .*{re.escape(first_sentence(cls))}", out, re.M)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_is_valid_and_completes_subcommands(tmp_path: object) -> None:
    script = completion(build_parser(), "bash")
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr

    def complete(*words: str) -> list[str]:
        probe = (
            script
            + "\nCOMP_WORDS=("
            + " ".join(f"'{w}'" for w in ("drd", *words))
            + f"); COMP_CWORD={len(words)}; _shtab_drd; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
        )
        done = subprocess.run(["bash"], input=probe, text=True, capture_output=True, check=True)
        return done.stdout.split()

    assert complete("dr") == ["drill", "drills"]
    assert set(complete("")) >= {p[0] for p, _ in ALL}
    assert complete("drills", "") == ["list", "show"]
    assert "--lose-region" in complete("drill", "--l")


def test_zsh_completion_is_generated() -> None:
    script = completion(build_parser(), "zsh")
    assert script.startswith("#compdef drd")
    if shutil.which("zsh"):
        check = subprocess.run(["zsh", "-n"], input=script, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_the_man_page_lists_every_subcommand() -> None:
    page = manpage(build_parser())
    assert page.startswith(".TH DRD")
    for path, _ in ALL:
        name = "drd " + " ".join(path)
        assert f".SH COMMAND \\fI\\,'{name.replace('-', chr(92) + '-')}'" in page, name
    assert re.search(r"^\.SH EXIT STATUS", page, re.M)
    for code in (2, 5, 13, 126):
        assert re.search(rf"^\.B {code}$", page, re.M), code


def test_completion_and_manpage_commands_print_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "_shtab_drd" in capsys.readouterr().out
    assert main(["manpage"]) == 0
    assert capsys.readouterr().out.startswith(".TH DRD")

"""Shell completion and the manual page, generated from the parser itself (drd.cli.main), so
neither can fall behind a new command or option. setup.py builds the man page into the wheel;
packagers install the completion with `drd completion bash > .../completions/drd` (README,
"Packaging")."""

from __future__ import annotations

import argparse

from drd import __version__
from drd.cli.helptext import all_exit_codes


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    return str(shtab.complete(parser, shell=shell))


def manpage(parser: argparse.ArgumentParser) -> str:
    from argparse_manpage.manpage import Manpage

    page = Manpage(parser)
    page.source = f"drd {__version__}"
    page.manual = "drd manual"
    page.description = "disaster-recovery backups you can prove"
    lines = [str(page).rstrip("\n"), ".SH EXIT STATUS"]
    for code, meaning in all_exit_codes():
        lines += [".TP", f".B {code}", _roff(meaning)]
    return "\n".join(lines) + "\n"


def _roff(text: str) -> str:
    # A hyphen is a minus sign in roff; a line starting with "." or "'" would be a request.
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text

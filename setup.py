"""The one build step pyproject.toml cannot express: the drd(1) manual page, generated from
drd's own parser, goes into the wheel as data (share/man/man1/drd.1), so `pip install` puts it
where `man drd` finds it (a prefix's share/man next to the bin/ on PATH). Everything else
about the package is in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PAGE = Path("build") / "man" / "drd.1"


def manpage() -> str:
    # drd.cli.main imports only the standard library at module level, so the source tree is
    # importable in the build environment (which has argparse-manpage, see build-system).
    sys.path.insert(0, str(HERE))
    try:
        from drd.cli.generated import manpage as generate
        from drd.cli.main import build_parser
    finally:
        sys.path.remove(str(HERE))
    out = HERE / PAGE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(generate(build_parser()), encoding="utf-8")
    return str(PAGE)


setup(data_files=[("share/man/man1", [manpage()])])

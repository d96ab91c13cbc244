"""Filesystem helpers shared by the strategies and the scratch environments."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


def remove_tree(path: Path) -> None:
    """rmtree that also copes with directories a restore made read-only; a missing path is
    not an error."""

    def retry(func: Callable[[str], object], p: str, _exc: object) -> None:
        for d in (os.path.dirname(p), p):
            if os.path.isdir(d) and not os.path.islink(d):
                with contextlib.suppress(OSError):
                    os.chmod(d, 0o700)
        func(p)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)

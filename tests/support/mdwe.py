"""Run a command the way the shipped unit's MemoryDenyWriteExecute=yes runs drd, without
systemd: `python mdwe.py CMD ARGS...` sets prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) and
execs CMD; every child inherits it (see /work/shared/notes/test-environment.md). Exit status 97
if the kernel has no MDWE (Linux < 6.3)."""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
NO_MDWE = 97


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def mdwe_flags() -> int:
    """This process's MDWE flags (1: refuse exec gain), -1 if the kernel has none."""
    return _prctl(PR_GET_MDWE)


def supported() -> bool:
    return mdwe_flags() >= 0


def main(argv: list[str]) -> int:
    if _prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) != 0:
        print(f"mdwe: prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return NO_MDWE
    os.execvp(argv[0], argv)  # does not return


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

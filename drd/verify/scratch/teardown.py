"""Teardown that runs to its end: a restore test's clean-up must survive the cancellation that
stopped the test (timeout, shutdown), or the scratch resource would leak until the next start."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` even if the caller is cancelled meanwhile (then re-raise the cancellation
    once it is done). Teardown steps bound their own duration."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result

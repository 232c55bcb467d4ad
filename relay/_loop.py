"""Run an entry point's coroutine on uvloop when it is installed (an optional accelerator), else asyncio.

Only programs call this (the CLI, the emulator); the library itself never picks the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def run(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)

"""Waiting on behalf of an HTTP client that may leave: shared by the server and the router (no engine code
here, so the router stays light)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from tachyon.server.errors import APIError

T = TypeVar("T")
DISCONNECT_POLL_S = 0.1


async def until_disconnect(awaitable: Awaitable[T], request: Request) -> T:
    """Awaits `awaitable`, but cancels it (aborting or closing what it started) and raises a 499 APIError
    if the client goes away first."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError("client disconnected", 499)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

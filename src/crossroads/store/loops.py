"""Background loops that query the store are stopped between two queries, not in the middle of one.

Cancelling a task while SQLAlchemy awaits an aiosqlite query invalidates the connection, and SQLAlchemy's terminate
path then closes it gracefully in a shielded task while also stopping it by force. When the force stop reaches the
connection's thread first, the graceful close waits for a thread that is gone: that task never ends, and
`asyncio.run` waits for it forever when the process exits (a gateway that did not stop on SIGTERM, seen in the tests
as a shutdown hanging for its whole grace). So each such loop waits on a `Stopping` between its rounds, and `stop`
lets the round under way finish, cancelling only after a bound (a query hung on an unreachable database)."""

from __future__ import annotations

import asyncio
import contextlib

STOP_BOUND = 5.0  # seconds a round under way gets to finish before it is cancelled


class Stopping:
    """The stop signal of one background loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds`, or less when a stop is asked for; True when the loop should go on."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)
        return not self._event.is_set()

    async def stop(self, task: asyncio.Task[None] | None, bound: float = STOP_BOUND) -> None:
        """Ask the loop to stop and wait for it; cancel it only when its round is not over within `bound` seconds."""
        self._event.set()
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), bound)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

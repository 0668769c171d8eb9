"""store/loops.py: a background loop that queries the store is stopped between two rounds, not inside one."""

from __future__ import annotations

import asyncio

from crossroads.store.loops import Stopping


async def test_stop_lets_the_round_under_way_finish_and_cuts_the_pause_short() -> None:
    stopping = Stopping()
    rounds: list[str] = []

    async def loop() -> None:
        while not stopping.is_set():
            rounds.append("begun")
            await asyncio.sleep(0.2)  # a query under way
            rounds.append("done")
            await stopping.pause(60)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await stopping.stop(task)
    assert rounds == ["begun", "done"]  # not cancelled inside the round
    assert task.done() and not task.cancelled()
    assert asyncio.get_running_loop().time() - started < 5  # the 60 s pause did not hold it


async def test_a_round_that_outlasts_the_bound_is_cancelled() -> None:
    stopping = Stopping()

    async def hung() -> None:
        await asyncio.sleep(60)  # a query hung on an unreachable database

    task = asyncio.create_task(hung())
    await stopping.stop(task, bound=0.1)
    assert task.cancelled()
    assert not await stopping.pause(60)  # once stopped, a pause returns at once

"""nfs_gateway/server.py's tasks_runnable: the busy-poll's test for tasks waiting to run, read
from trio's run queue, must agree with trio's public statistics in every state we reach."""

import trio

from nfs_gateway.server import tasks_runnable


def public() -> int:
    return trio.lowlevel.current_statistics().tasks_runnable


async def test_tasks_runnable_agrees_with_trio_statistics() -> None:
    ran: list[int] = []

    async def step(i: int) -> None:
        ran.append(i)
        await trio.sleep(0.001)

    assert tasks_runnable() == public() == 0
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(step, i)
            assert tasks_runnable() == public() == i + 1  # started, not run yet
        while len(ran) < 3:  # they run (in trio's order) and sleep
            await trio.lowlevel.checkpoint()
            assert tasks_runnable() == public()
        assert tasks_runnable() == public() == 0  # all asleep
    assert tasks_runnable() == public() == 0

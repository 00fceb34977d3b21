"""Processes for the redundant-bus tests (importable by spawned children)."""
from __future__ import annotations

import asyncio
import time

from zmqbus import MessageBroker, MessageMetadata, ProcessingMessage


async def _publish(pub: str, sub: str, count: int, rate: float, topic: str) -> None:
    async with MessageBroker(pub, sub, name="ha-publisher") as broker:
        await broker.ready(20)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await broker.publish(ProcessingMessage(topic, {"i": i}, MessageMetadata(source_component="ha")))
        await broker.close(linger=5)


def publisher(pub: str, sub: str, count: int, rate: float, topic: str = "ha.data") -> None:
    """Publish ``count`` numbered messages at ``rate`` per second, then close (confirming them)."""
    asyncio.run(_publish(pub, sub, count, rate, topic))
    time.sleep(0.1)

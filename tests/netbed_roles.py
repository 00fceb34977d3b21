"""Programs the multi-host tests run inside their namespaces (``python -c`` or ``zmqbus run``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from zmqbus import MessageBroker, MessageMetadata, ProcessingMessage, Processor, RetryPolicy, ZmqbusError, service


class Echo(Processor):
    """Answers ``bed.echo`` with the instance that served it."""

    @service("bed.echo")
    async def echo(self, message: ProcessingMessage) -> Any:
        return {"by": self.message_broker.client_id, "i": message.content.get("i")}


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _subscriber(pub: str, sub: str, topic: str, n: int, timeout: float) -> None:
    async with MessageBroker(pub, sub, name="bed-sub") as b:
        got: list[int] = []
        b.subscribe("bed", topic, lambda m: got.append(m.content["i"]))
        await b.ready(30)
        _say(ready=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < n and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # past a redundant bus's max_skew: what is missing is now counted lost
        s = b.statistics()
        _say(got=got, gaps=s.gaps, duplicates=s.duplicates)


def subscriber(pub: str, sub: str, topic: str, n: int, timeout: float) -> None:
    asyncio.run(_subscriber(pub, sub, topic, n, timeout))


async def _publisher(pub: str, sub: str, topic: str, n: int, rate: float) -> None:
    async with MessageBroker(pub, sub, name="bed-pub") as b:
        await b.ready(30)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await b.publish(ProcessingMessage(topic, {"i": i}, MessageMetadata(source_component="bed")))
            if (i + 1) % 500 == 0:
                _say(sent=i + 1)
        await b.close(linger=10)
        _say(done=True, unconfirmed=b.statistics().unconfirmed)


def publisher(pub: str, sub: str, topic: str, n: int, rate: float) -> None:
    asyncio.run(_publisher(pub, sub, topic, n, rate))


async def _caller(pub: str, sub: str, seconds: float, interval: float, timeout: float) -> None:
    async with MessageBroker(pub, sub, name="bed-caller") as b:
        await b.wait_for_service("bed.echo", timeout=30)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        i = 0
        while loop.time() < end:
            started = time.monotonic()
            try:
                reply = await b.request(
                    "bed.echo",
                    ProcessingMessage("bed.echo", {"i": i}),
                    timeout=timeout,
                    retry=RetryPolicy(attempts=5, attempt_timeout=0.5),
                )
                _say(
                    ok=True,
                    by=reply.content["by"],
                    ms=round(1000 * (time.monotonic() - started)),
                    instances=len(b.live_instances("bed.echo")),
                )
            except ZmqbusError as exc:
                _say(ok=False, error=type(exc).__name__, ms=round(1000 * (time.monotonic() - started)))
            i += 1
            await asyncio.sleep(interval)


def caller(pub: str, sub: str, seconds: float, interval: float = 0.1, timeout: float = 4.0) -> None:
    asyncio.run(_caller(pub, sub, seconds, interval, timeout))

"""Components for the test kit's tests (imported by name in spawned processes too)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from zmqbus import Handler, Processor, RetryPolicy, service, time_left
from zmqbus.core.message import ProcessingMessage


class Loans(Processor):
    """A service that counts what ran, for deadline and fault tests."""

    component_name = "loans"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserved: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []

    @service("loans.reserve")
    async def reserve(self, message: ProcessingMessage) -> dict[str, Any]:
        if message.content.get("book") == "forbidden":
            raise ValueError("that book may not be lent")
        self.reserved.append(message.content["book"])
        return {"left": time_left()}

    @service("loans.slow")
    async def slow(self, message: ProcessingMessage) -> str:
        try:
            await asyncio.sleep(message.content["seconds"])
        except asyncio.CancelledError:
            self.cancelled.append(message.content["book"])
            raise
        self.finished.append(message.content["book"])
        return "done"

    @service("loans.stubborn", cancel_at_deadline=False)
    async def stubborn(self, message: ProcessingMessage) -> str:
        await asyncio.sleep(message.content["seconds"])
        self.finished.append(message.content["book"])
        return "done"

    @service("loans.sync")
    def sync(self, message: ProcessingMessage) -> float | None:
        time.sleep(message.content["seconds"])  # a thread: never cancelled, it checks time_left() itself
        left = time_left()
        self.finished.append(f"sync left={left}")
        return left


class Desk(Handler):
    """Lends a book: asks the catalog, then the loans service (for stand-ins and request recorders)."""

    component_name = "desk"
    retry_policy = RetryPolicy(attempts=1)

    @service("desk.lend")
    async def lend(self, message: ProcessingMessage) -> dict[str, Any]:
        book = await self.request("catalog.find", {"title": message.content["title"]}, timeout=3.0)
        await self.request("loans.reserve", {"book": book["id"]}, timeout=3.0)
        return {"lent": book["id"]}


class BrokenAtStart(Processor):
    """Fails in setup, every time (its process exits 1 with one line)."""

    async def setup(self) -> None:
        print("opening the catalog database...", file=sys.stderr, flush=True)
        raise RuntimeError("the catalog database is unreachable")

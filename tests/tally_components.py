"""A component for the recovery tests (spawned as a process): it appends each item it handles to a file."""

from __future__ import annotations

import os

from zmqbus import Component, ProcessingMessage, on


class Tally(Component):
    """Appends ``content["i"]`` of every ``work.item`` to ``$TALLY_FILE``, one line each, as it handles it."""

    @on("work.item")
    async def count(self, message: ProcessingMessage) -> None:
        fd = os.open(os.environ["TALLY_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"%d\n" % message.content["i"])
        finally:
            os.close(fd)

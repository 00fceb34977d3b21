"""Components for the shutdown tests (run by ``zmqbus run`` in a child process)."""

from __future__ import annotations

import time
from typing import Any

from zmqbus.framework.component import Processor, service


class SlowProcessor(Processor):
    """A sync service that runs for as long as it is asked (it touches a file when it starts)."""

    @service("slow.work")
    def work(self, message: Any) -> str:
        with open(message.content["started"], "w"):
            pass
        time.sleep(message.content["seconds"])
        return "done"

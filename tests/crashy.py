"""A component that fails at start-up (for the supervisor's crash-loop test)."""

from zmqbus.framework.component import Component


class Crashy(Component):
    async def setup(self) -> None:
        raise RuntimeError("crashes at start-up, every time")

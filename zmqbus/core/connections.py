"""The forwarder's connections, counted from its sockets' monitor events: pure code.

The IO shell (:mod:`zmqbus.io.proxy`) turns each monitor event into a
:class:`ConnectionEvent`; :class:`ConnectionCounts` keeps the counters, the
live connections (by file descriptor) and answers the ZAP handler's question
"may one more client connect?" (:meth:`ConnectionCounts.admit`).

Rules it keeps:

* a connection reaches the ZAP handler only after it was accepted, but the
  thread that reads the monitors may not have seen that event yet: such
  unseen admissions count as live (an upper bound), so the limit is never
  passed by a burst;
* only near the limit does :meth:`~ConnectionCounts.admit` wait (bounded,
  on a condition the event reader notifies, never by polling) for the exact
  count.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

__all__ = ["EventKind", "ConnectionEvent", "ConnectionCounts"]


class EventKind(enum.Enum):
    """What happened to a connection of one of the forwarder's two sockets."""

    ACCEPTED = "accepted"
    DISCONNECTED = "disconnected"
    #: The allow-list refused the peer's key (the ZAP handler logged who and why).
    AUTH_FAILED = "auth_failed"
    #: Any other failed handshake: garbage bytes, a peer that does not speak ZMTP, wrong CURVE keys.
    HANDSHAKE_FAILED = "handshake_failed"
    #: The monitor's last event: the socket is gone.
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One monitor event: its kind, the connection's file descriptor, and which side it happened on."""

    kind: EventKind
    fd: int
    publisher_side: bool
    #: A failed handshake's reason, when libzmq names one: ``no_key`` (a peer with another security
    #: mechanism than this socket's: a plaintext client on a CURVE bus), else "".
    reason: str = ""


class ConnectionCounts:
    """Connections of both sides, counted; thread-safe (the monitor reader applies, ZAP admits)."""

    def __init__(self) -> None:
        self.publisher_connects = self.publisher_disconnects = 0
        self.subscriber_connects = self.subscriber_disconnects = 0
        self.handshake_failures = 0
        #: Accepted connections not yet disconnected, and the subscriber side's among them.
        self.live_fds: set[int] = set()
        self.subscriber_fds: set[int] = set()
        self._admissions = 0  # clients the ZAP handler asked admit() about
        self._changed = threading.Condition()

    def apply(self, event: ConnectionEvent) -> None:
        """Count one event (STOPPED counts nothing)."""
        with self._changed:
            fd, pub = event.fd, event.publisher_side
            if event.kind is EventKind.ACCEPTED:
                if pub:
                    self.publisher_connects += 1
                else:
                    self.subscriber_connects += 1
                    self.subscriber_fds.add(fd)
                self.live_fds.add(fd)
            elif event.kind is EventKind.DISCONNECTED:
                if pub:
                    self.publisher_disconnects += 1
                else:
                    self.subscriber_disconnects += 1
                    self.subscriber_fds.discard(fd)
                self.live_fds.discard(fd)
            elif event.kind is not EventKind.STOPPED:
                self.handshake_failures += 1
            self._changed.notify_all()

    def _unseen(self) -> int:
        return max(0, self._admissions - self.publisher_connects - self.subscriber_connects)

    def live(self) -> int:
        """Live connections, with admissions whose ACCEPTED event was not read yet counted as live."""
        connects = self.publisher_connects + self.subscriber_connects
        return connects - self.publisher_disconnects - self.subscriber_disconnects + self._unseen()

    def admit(self, max_connections: int, wait: float = 0.2) -> bool:
        """One more client asks to connect: True if the live connections stay within ``max_connections``.

        Near the limit it waits up to ``wait`` seconds for the monitor reader to catch up.
        """
        with self._changed:
            self._admissions += 1
            if self.live() > max_connections:
                self._changed.wait_for(lambda: not self._unseen() or self.live() <= max_connections, wait)
            return self.live() <= max_connections

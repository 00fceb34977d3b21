"""A bound on the bytes a forwarder holds for a subscriber that does not keep up (pure: no sockets).

libzmq counts a subscriber's queue in messages (the high-water mark), not bytes,
and the forwarder cannot see inside it. What it can see is whether each
subscriber's connection can take more bytes (the kernel's send buffer is not
full) and how many bytes it has forwarded in all. While a connection can take
bytes, libzmq's I/O thread keeps writing its queue out, so the queue is (close
to) empty. From the moment a connection stops taking bytes, its queue can grow
by at most what the forwarder forwards. So::

    queued(subscriber) <= forwarded_now - forwarded_when_it_last_took_bytes

an upper bound (exact for a subscriber of everything). When the bound passes
``max_bytes`` while the connection still takes nothing, the subscriber is cut:
its queue is freed, it reconnects (ZeroMQ does so by itself and resubscribes)
and counts what it missed as gaps, as after any reconnection. This is the
"slow consumer" rule of NATS (which cuts a client whose pending bytes pass a
limit) and the suicidal snail of the ZeroMQ guide, applied by the forwarder.

Whether a connection took bytes is seen two ways: its send buffer has room at
the moment of a look, or (tcp) its peer acknowledged more bytes since the last
look. The second matters on a busy machine: a subscriber that reads, but whose
buffer happens to be full at every look, is not cut.

Because the bound counts everything forwarded, a subscriber of one quiet topic
that stays blocked while the bus moves ``max_bytes`` of other traffic is cut
too: it had stopped reading for that long.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BacklogBound"]


class BacklogBound:
    """Decide which subscriber connections to cut, from samples of writability and bytes forwarded.

    :param max_bytes: the most a subscriber that takes nothing may have queued
        for it (an upper bound, see the module's docstring).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._since: dict[int, int] = {}  # connection -> bytes forwarded when it last took bytes
        self._acked: dict[int, int] = {}  # connection -> bytes its peer had acknowledged at the last sample
        self.cut = 0  # connections this bound asked to cut

    def check(
        self, forwarded: int, writable: Mapping[int, bool], progress: Mapping[int, int] | None = None
    ) -> list[int]:
        """Take one sample and return the connections to cut.

        :param forwarded: bytes the forwarder has handed to its subscriber side so far.
        :param writable: each live subscriber connection -> whether it can take bytes now.
            Connections not in it are forgotten (they left); new ones start with an empty queue.
        :param progress: each connection's count of bytes its peer has acknowledged so far (tcp's
            ``tcpi_bytes_acked``), where known. A connection whose count moved since the last sample
            took bytes, even if its buffer is full again at the moment of the look: a subscriber that
            reads, however slowly (a busy machine), is never cut.
        """
        since, acked = self._since, self._acked
        for gone in since.keys() - writable.keys():
            del since[gone]
        for gone in acked.keys() - writable.keys():
            del acked[gone]
        out: list[int] = []
        for conn, ok in writable.items():
            now = None if progress is None else progress.get(conn)
            moved = now is not None and acked.get(conn, now) != now
            if now is not None:
                acked[conn] = now
            if ok or moved or conn not in since:
                since[conn] = forwarded
            elif forwarded - since[conn] > self.max_bytes:
                out.append(conn)
                del since[conn]  # if the cut fails, it starts over (and is cut again)
        self.cut += len(out)
        return out

    def held(self, conn: int, forwarded: int) -> int:
        """The bound on what is queued for this connection now (0 for one not tracked)."""
        start = self._since.get(conn)
        return 0 if start is None else max(0, forwarded - start)

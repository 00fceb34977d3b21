"""Where a component's subscriber stands in each stream, on disk: what a restarted process resumes from.

One JSON line ``[publisher_id, topic, sequence]`` is appended *before* the
message is handed to its handlers (write-ahead), with a plain ``write`` on a
file opened in append mode: the kernel keeps it when the process is killed, so
a handler never runs twice for one message in one component, even across
SIGKILL (at-most-once in effect: a message whose handler was cut short by the
kill is not run again). No ``fsync``: a crash of the machine itself may lose
the last writes, and then messages are delivered again.

At start, the file is read (the last line of each stream wins, a torn last
line is ignored) and rewritten compactly; past ``max_bytes`` it is compacted
again, so it holds about one line per stream.

One process at a time: the journal holds an exclusive lock on ``PATH.lock``
while open (the kernel drops it when the process dies, SIGKILL included). A
second process given the same path (two ``zmqbus run`` of one component)
takes the next free slot, ``PATH.2``, ``PATH.3``..., so no two live
processes ever share positions, and a restarted one takes over the slot its
predecessor left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os

__all__ = ["StreamJournal"]

log = logging.getLogger("zmqbus.bus.broker")


class StreamJournal:
    """The positions of one subscriber's streams in the file at ``path`` (its folder is made if needed)."""

    def __init__(self, path: str, max_bytes: int = 4 * 1024 * 1024, max_streams: int = 10_000) -> None:
        self.path, self.max_bytes, self.max_streams = path, max_bytes, max_streams
        self.positions: dict[tuple[str, str], int] = {}
        self._heads: dict[tuple[str, str], bytes] = {}
        self._fd = -1
        self._lock = -1
        self._size = 0

    def _claim(self) -> None:
        """Take the first slot no live process holds (see the module docstring)."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        base = self.path
        for slot in range(1, 1001):
            path = base if slot == 1 else f"{base}.{slot}"
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.path, self._lock = path, fd
            if slot > 1:
                log.info("stream positions: %s is held by another process; using %s", base, path)
            return
        raise OSError(f"no free slot for the stream positions in {base}")

    def load(self) -> dict[tuple[str, str], int]:
        """Claim a slot, read its file (missing: nothing), compact it, and open it for appending."""
        self._claim()
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        pub, topic, seq = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # a torn line (the process died mid-write) or garbage
                    if isinstance(pub, str) and isinstance(topic, str) and type(seq) is int:
                        self.positions[(pub, topic)] = seq
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot read the stream positions in %s (starting afresh): %s", self.path, exc)
        self._compact()
        return dict(self.positions)

    def record(self, publisher: str, topic: str, seq: int) -> None:
        """This stream is delivered up to ``seq`` (called before its handlers run)."""
        key = (publisher, topic)
        self.positions.pop(key, None)  # most recently moved last: compaction keeps the newest streams
        self.positions[key] = seq
        head = self._heads.get(key)
        if head is None:  # the line's fixed part, once per stream (json.dumps per record cost 3 us)
            if len(self._heads) >= self.max_streams:
                self._heads.clear()
            head = self._heads[key] = json.dumps([publisher, topic], separators=(",", ":"))[:-1].encode() + b","
        line = b"%s%d]\n" % (head, seq)
        try:
            self._size += os.write(self._fd, line)
        except OSError as exc:
            log.warning("cannot record a stream position in %s: %s", self.path, exc)
            return
        if self._size > self.max_bytes:
            self._compact()

    def _compact(self) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        while len(self.positions) > self.max_streams:  # streams of publishers long gone
            del self.positions[next(iter(self.positions))]
        tmp = f"{self.path}.{os.getpid()}.tmp"
        data = b"".join(
            json.dumps([p, t, s], separators=(",", ":")).encode() + b"\n" for (p, t), s in self.positions.items()
        )
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = len(data)

    def close(self) -> None:
        """Stop recording; the slot is free for the next process."""
        for fd in (self._fd, self._lock):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock = -1

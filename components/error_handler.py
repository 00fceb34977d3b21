"""The error handler: collects every component's errors and dead letters.

Subscribes to ``error.#`` (what zmqbus components report) and ``deadletter.#``
(kept on disk, so they survive a restart: see :class:`DeadLetterFile`; run one error handler
per bus, since a second one would keep the same file),
and to ``#.error``: the guide's own error messages (``component.error``,
``order.error``: ``{"correlation_id", "error_type", "error_message"}``, the
component taken from the message's source). That pattern is a tail pattern
(PROTOCOL.md section 2.3): publishers send this process a copy of each message
whose topic ends in ``error``, nothing else. ``guide_topics=False`` (or
``$ZMQBUS_GUIDE_TOPICS=0``) leaves it out. Answers ``errors.dead_letters`` (a list),
``errors.dead_letter`` (one, whole), ``errors.purge`` (forget some or all), ``errors.stats``
(counts by error type and by component, the latest errors, dead letters held)
and ``errors.replay`` (publish a dead-lettered message again, by message id,
so an operator can retry it).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
from typing import Any, TextIO

from zmqbus import Component, MessageMetadata, ProcessingMessage, on, service
from zmqbus.core import config

log = logging.getLogger(__name__)

#: Dead letters kept (the oldest go first).
MAX_DEAD_LETTERS = 1000


def state_dir() -> str:
    """Where components keep state across restarts (:func:`zmqbus.core.config.state_dir`)."""
    return config.state_dir()


class DeadLetterFile:
    """Dead letters on disk: one JSON line per change (``add`` or ``remove``), read back at start
    and rewritten compactly then, so the file holds at most about twice what is kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO | None = None

    def load(self) -> collections.OrderedDict[str, dict[str, Any]]:
        letters: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        if entry["op"] == "add":
                            letters[str(entry["id"])] = entry["letter"]
                        else:
                            letters.pop(str(entry["id"]), None)
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line after a crash
            while len(letters) > MAX_DEAD_LETTERS:
                letters.popitem(last=False)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for key, letter in letters.items():
                f.write(json.dumps({"op": "add", "id": key, "letter": letter}, default=repr) + "\n")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", buffering=1)
        return letters

    def add(self, key: str, letter: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"op": "add", "id": key, "letter": letter}, default=repr) + "\n")

    def remove(self, key: str) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"op": "remove", "id": key}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ErrorHandler(Component):
    component_name = "error_handler"

    #: Also take the guide's ``<domain>.error`` messages (see the module docstring).
    guide_topics = True

    def __init__(
        self, *args: Any, guide_topics: bool | None = None, dead_letters: str | None = None, **kwargs: Any
    ) -> None:
        if guide_topics is not None or not config.guide_topics():
            self.guide_topics = config.guide_topics(guide_topics)
        #: The dead letters' file (set before start): ``dead_letters=``, ``$ZMQBUS_DEAD_LETTERS``, else one
        #: per bus in :func:`state_dir`; "" keeps them in memory only.
        self.dead_letters_path = dead_letters if dead_letters is not None else os.environ.get("ZMQBUS_DEAD_LETTERS")
        self._store: DeadLetterFile | None = None
        self.by_type: collections.Counter[str] = collections.Counter()
        self.by_component: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.dead_letters: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.total = 0
        super().__init__(*args, **kwargs)

    def _setup_message_handlers(self) -> None:
        if self.guide_topics:
            self.subscribe("#.error", self._handle_guide_error)

    async def setup(self) -> None:
        path = self.dead_letters_path
        if path is None:
            bus = hashlib.sha256(self.message_broker.sub_endpoint.encode()).hexdigest()[:12]
            path = os.path.join(state_dir(), f"dead-letters-{bus}.jsonl")
        if path:
            self._store = DeadLetterFile(path)
            self.dead_letters = self._store.load()
            self.dead_letters_path = path
            log.info("%s: %d dead letter(s) in %s", self.component_name, len(self.dead_letters), path)

    async def teardown(self) -> None:
        if self._store is not None:
            self._store.close()

    async def _handle_guide_error(self, message: ProcessingMessage) -> None:
        if message.topic.startswith("error."):
            return  # zmqbus's own topic: _handle_error_report has it
        await self._handle_error_report(message)

    @on("error.#")
    async def _handle_error_report(self, message: ProcessingMessage) -> None:
        c = dict(message.content) if isinstance(message.content, dict) else {"error_type": "?"}
        c.setdefault("component", message.metadata.source_component or "?")
        c.setdefault("correlation_id", message.metadata.correlation_id)
        self.total += 1
        self.by_type[str(c.get("error_type"))] += 1
        self.by_component[str(c.get("component"))] += 1
        self.recent.append(dict(c))

    @on("deadletter.#")
    async def _handle_dead_letter(self, message: ProcessingMessage) -> None:
        c = message.content
        if isinstance(c, dict):
            key = str(c.get("metadata", {}).get("message_id") or message.metadata.message_id)
            c = {**c, "at": c.get("at") or message.metadata.timestamp}  # when it was dead-lettered
            self.dead_letters[key] = c
            if self._store is not None:
                self._store.add(key, c)
            while len(self.dead_letters) > MAX_DEAD_LETTERS:
                old, _ = self.dead_letters.popitem(last=False)
                if self._store is not None:
                    self._store.remove(old)

    @service("errors.stats")
    async def stats(self, message: ProcessingMessage) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_type": dict(self.by_type),
            "by_component": dict(self.by_component),
            "recent": list(self.recent)[-10:],
            "dead_letters": len(self.dead_letters),
        }

    def _selected(self, query: Any) -> list[tuple[str, dict[str, Any]]]:
        """The dead letters a query selects, oldest first: ``component``, ``message_type`` (exact),
        ``since`` (epoch seconds), then ``limit`` (the newest n)."""
        q = query if isinstance(query, dict) else {}
        items = [
            (key, letter)
            for key, letter in self.dead_letters.items()
            if (not q.get("component") or letter.get("component") == q["component"])
            and (not q.get("message_type") or letter.get("message_type") == q["message_type"])
            and (not q.get("since") or float(letter.get("at") or 0) >= float(q["since"]))
        ]
        limit = int(q.get("limit") or MAX_DEAD_LETTERS)
        return items[-limit:]

    @service("errors.dead_letters")
    async def list_dead_letters(self, message: ProcessingMessage) -> list[dict[str, Any]]:
        """Summaries of the dead letters, oldest first (filters: see :meth:`_selected`)."""
        return [
            {
                "message_id": key,
                "at": letter.get("at"),
                "component": letter.get("component"),
                "message_type": letter.get("message_type"),
                "correlation_id": letter.get("metadata", {}).get("correlation_id"),
                "reason": letter.get("reason"),
            }
            for key, letter in self._selected(message.content)
        ]

    @service("errors.purge")
    async def purge(self, message: ProcessingMessage) -> dict[str, Any]:
        """Forget dead letters: ``{"message_ids": [...]}``, or ``{"all": true}`` with the filters of
        :meth:`_selected`. Returns ``{"purged": n}``."""
        q = message.content if isinstance(message.content, dict) else {}
        if q.get("message_ids"):
            keys = [str(k) for k in q["message_ids"] if str(k) in self.dead_letters]
        elif q.get("all"):
            keys = [key for key, _ in self._selected({**q, "limit": 0})]
        else:
            raise ValueError("name the dead letters to purge (message_ids) or say all")
        for key in keys:
            self.dead_letters.pop(key, None)
            if self._store is not None:
                self._store.remove(key)
        return {"purged": len(keys)}

    @service("errors.dead_letter")
    async def show_dead_letter(self, message: ProcessingMessage) -> dict[str, Any]:
        """One dead letter, whole, by ``{"message_id": id}``; ``{}`` if there is none."""
        key = str(message.content.get("message_id")) if isinstance(message.content, dict) else ""
        return dict(self.dead_letters.get(key, {}))

    @service("errors.replay")
    async def replay(self, message: ProcessingMessage) -> dict[str, Any]:
        key = str(message.content.get("message_id")) if isinstance(message.content, dict) else ""
        letter = self.dead_letters.pop(key, None)
        if letter is None:
            return {"replayed": False, "reason": f"no dead letter {key!r}"}
        if self._store is not None:
            self._store.remove(key)
        md = letter.get("metadata", {})
        await self.message_broker.publish(
            ProcessingMessage(
                letter["message_type"],
                letter["content"],
                MessageMetadata(
                    correlation_id=md.get("correlation_id", ""),
                    source_component=md.get("source", self.component_name),
                    target_component=md.get("target"),
                ),
            ),
            topic=letter.get("topic"),
        )
        return {"replayed": True, "message_id": key}

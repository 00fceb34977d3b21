"""The state tracker: the latest state of every process, per correlation id and per component.

Subscribes to ``status.#`` (zmqbus components' updates) and to
``#.status.update``: the guide's own (``component.status.update`` with
``{"new_state": value}``; the workflow is the message's correlation id, the
component its source). That pattern is a tail pattern (PROTOCOL.md section
2.3): publishers send this process a copy of each message whose topic ends in
``update``, nothing else. ``guide_topics=False`` (or ``$ZMQBUS_GUIDE_TOPICS=0``)
leaves it out. Answers ``state.query``: with
``{"correlation_id": id}`` the states of that workflow in every component,
with ``{"component": name}`` that component's processes, with ``{}`` counts
by state. With a journal file (``journal=`` or ``$ZMQBUS_STATE_JOURNAL``) it
appends every update as a JSON line and replays the file when it starts, so
a restarted tracker rebuilds its view.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, TextIO

from zmqbus import Component, ProcessingMessage, on, service
from zmqbus.core import config


class StateTracker(Component):
    component_name = "state_tracker"

    #: Also take the guide's ``<domain>.status.update`` messages (see the module docstring).
    guide_topics = True

    def __init__(self, *args: Any, journal: str | None = None, guide_topics: bool | None = None, **kwargs: Any) -> None:
        if guide_topics is not None or not config.guide_topics():
            self.guide_topics = config.guide_topics(guide_topics)
        self.by_correlation: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.updates = 0
        self.journal_path = journal or os.environ.get("ZMQBUS_STATE_JOURNAL") or None
        self._journal: TextIO | None = None
        super().__init__(*args, **kwargs)

    async def setup(self) -> None:
        if self.journal_path:
            if os.path.exists(self.journal_path):
                with open(self.journal_path) as f:
                    for line in f:
                        try:
                            self._apply(json.loads(line))
                        except (ValueError, KeyError, TypeError):
                            continue  # a torn last line after a crash
            self._journal = open(self.journal_path, "a", buffering=1)

    async def teardown(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def _apply(self, update: dict[str, Any]) -> None:
        self.updates += 1
        self.by_correlation[str(update["correlation_id"])][str(update["component"])] = {
            "state": update["state"],
            "updated_at": update.get("updated_at"),
            "old_state": update.get("old_state"),
        }

    def _setup_message_handlers(self) -> None:
        if self.guide_topics:
            self.subscribe("#.status.update", self._handle_guide_status)

    async def _handle_guide_status(self, message: ProcessingMessage) -> None:
        c = message.content
        if message.topic.startswith("status."):
            return  # zmqbus's own topic: _handle_status_update has it
        if not (isinstance(c, dict) and ("new_state" in c or "state" in c)):
            raise ValueError(f"invalid status update: {c!r} (the guide sends {{'new_state': value}})")
        md = message.metadata
        update = {
            "correlation_id": c.get("correlation_id") or md.correlation_id,
            "component": c.get("component") or md.source_component or "?",
            "state": c.get("state", c.get("new_state")),
            "old_state": c.get("old_state"),
            "updated_at": c.get("updated_at"),
        }
        await self._handle_status_update(message, update)

    @on("status.#")
    async def _handle_status_update(self, message: ProcessingMessage, update: dict[str, Any] | None = None) -> None:
        c = message.content if update is None else update
        if not (isinstance(c, dict) and "correlation_id" in c and "component" in c and "state" in c):
            raise ValueError(f"invalid status update: {c!r}")
        self._apply(c)
        if self._journal is not None:
            self._journal.write(json.dumps(c, default=str) + "\n")

    @service("state.query")
    async def query(self, message: ProcessingMessage) -> Any:
        q = message.content if isinstance(message.content, dict) else {}
        if "correlation_id" in q:
            return self.by_correlation.get(str(q["correlation_id"]), {})
        if "component" in q:
            name = str(q["component"])
            return {cid: comps[name]["state"] for cid, comps in self.by_correlation.items() if name in comps}
        counts: collections.Counter[str] = collections.Counter()
        for comps in self.by_correlation.values():
            for entry in comps.values():
                counts[entry["state"]] += 1
        return {"processes": len(self.by_correlation), "updates": self.updates, "by_state": dict(counts)}

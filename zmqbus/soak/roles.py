"""The processes of ``zmqbus soak``: publisher, subscriber, responder, caller.

Each runs in its own spawned process with its own ``MessageBroker``, signals
``ready`` once it is wired, works until its ``stop`` event, and writes what it
saw to ``<workdir>/<label>.json`` (responders append each execution to a log
file as it happens, so a responder killed with SIGKILL still leaves its record).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from typing import Any

from ..bus.broker import MessageBroker
from ..core.errors import RemoteError, ZmqbusError
from ..core.message import ProcessingMessage

SERVICE = "soak.work"
TOPICS_PER_PUBLISHER = 2


def topic_of(publisher: int, topic: int) -> str:
    return f"soak.p{publisher}.t{topic}"


def _quiet() -> None:
    """Losses are what the soak counts and reports; the roles do not log each one."""
    logging.getLogger("zmqbus").setLevel(logging.ERROR)


def _write(workdir: str, label: str, result: dict[str, Any]) -> None:
    path = os.path.join(workdir, label + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


async def _wait(event: Any, poll: float = 0.05) -> None:
    """Wait for a multiprocessing event without blocking the loop."""
    while not event.is_set():
        await asyncio.sleep(poll)


def publisher(pub: str, sub: str, index: int, rate: float, workdir: str, ready: Any, stop: Any) -> None:
    _quiet()
    asyncio.run(_publisher(pub, sub, index, rate, workdir, ready, stop))


async def _publisher(pub: str, sub: str, index: int, rate: float, workdir: str, ready: Any, stop: Any) -> None:
    broker = MessageBroker(pub, sub, name=f"soak-publisher-{index}", publish_timeout=5.0)
    topics = [topic_of(index, t) for t in range(TOPICS_PER_PUBLISHER)]
    calls = {t: 0 for t in topics}  # the k-th publish on a topic carries sequence k
    failed: dict[str, list[int]] = {t: [] for t in topics}
    await broker.ready(30.0)
    ready.set()
    loop = asyncio.get_running_loop()
    start, n = loop.time(), 0

    async def send(topic: str, content: Any) -> None:
        calls[topic] += 1
        try:
            await broker.publish(ProcessingMessage(topic, content), timeout=5.0)
        except ZmqbusError:
            failed[topic].append(calls[topic])  # refused with a documented error: not silent

    while not stop.is_set():
        topic = topics[n % len(topics)]
        n += 1
        await send(topic, {"n": n})
        ahead = start + n / rate - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
    for topic in topics:  # a last message per topic makes any loss before it countable
        await send(topic, {"end": True})
    await broker.close(linger=5.0)
    _write(
        workdir,
        f"publisher-{index}",
        {"calls": calls, "failed": failed, "unconfirmed": broker.statistics().unconfirmed},
    )


def subscriber(pub: str, sub: str, index: int, topics: int, workdir: str, ready: Any, stop: Any) -> None:
    _quiet()
    asyncio.run(_subscriber(pub, sub, index, topics, workdir, ready, stop))


async def _subscriber(pub: str, sub: str, index: int, topics: int, workdir: str, ready: Any, stop: Any) -> None:
    """Record every soak message as it is handled (appended to a log, so a subscriber killed with SIGKILL
    leaves its record, and its replacement goes on with it: the same label resumes the same streams);
    once told to stop, wait (up to 30 s) for each of the ``topics`` last messages ({"end": true}) the
    publishers send when they stop, rather than guess a settling time."""
    label = f"subscriber-{index}"
    fd = os.open(os.path.join(workdir, f"recv-{label}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    ended: set[str] = set()

    def on_message(msg: ProcessingMessage) -> None:
        os.write(fd, f"{msg.topic} {msg.metadata.sequence} {time.monotonic():.4f}\n".encode())
        if isinstance(msg.content, dict) and msg.content.get("end"):
            ended.add(msg.topic or "")

    resume = os.path.join(workdir, f"streams-{label}.jsonl")
    broker = MessageBroker(pub, sub, name=f"soak-{label}", resume_file=resume)
    broker.subscribe("soak", "soak.#", on_message)
    async with broker:
        await broker.ready(30.0)
        ready.set()
        await _wait(stop)
        deadline = time.monotonic() + 30.0
        while len(ended) < topics and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stats = broker.statistics()
    os.close(fd)
    received: dict[str, list[int]] = {}
    arrivals: list[float] = []
    with open(os.path.join(workdir, f"recv-{label}.log")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:  # a line torn by a kill is not a delivery
                received.setdefault(parts[0], []).append(int(parts[1]))
                arrivals.append(float(parts[2]))
    _write(
        workdir,
        label,
        {
            "received": received,
            "arrivals": [round(t, 4) for t in arrivals],
            "end_markers_missing": topics - len(ended),  # they come after the last fault: this process saw them
            "gaps": stats.gaps,
            "sequence_resets": stats.sequence_resets,
            "decode_errors": stats.decode_errors,
            "recovery": stats.recovery,
        },
    )


def responder(pub: str, sub: str, label: str, workdir: str, ready: Any, stop: Any) -> None:
    _quiet()
    asyncio.run(_responder(pub, sub, label, workdir, ready, stop))


async def _responder(pub: str, sub: str, label: str, workdir: str, ready: Any, stop: Any) -> None:
    log = open(os.path.join(workdir, f"exec-{label}-{os.getpid()}.log"), "a", buffering=1)

    async def work(msg: ProcessingMessage) -> dict[str, int]:
        log.write(msg.metadata.message_id + "\n")  # line-buffered: on disk before the reply leaves
        await asyncio.sleep(random.uniform(0.0, 0.02))
        return {"double": 2 * int(msg.content["n"])}

    broker = MessageBroker(pub, sub, name=label, heartbeat=0.5, liveness=3)
    broker.serve(SERVICE, work)
    async with broker:
        await broker.ready(30.0)
        ready.set()
        await _wait(stop)
    log.close()


def caller(pub: str, sub: str, rate: float, workdir: str, ready: Any, stop: Any) -> None:
    _quiet()
    asyncio.run(_caller(pub, sub, rate, workdir, ready, stop))


async def _caller(pub: str, sub: str, rate: float, workdir: str, ready: Any, stop: Any) -> None:
    outcomes: dict[str, str] = {}
    broker = MessageBroker(pub, sub, name="soak-caller")

    async def call(n: int) -> None:
        msg = ProcessingMessage(SERVICE, {"n": n})
        mid = msg.metadata.message_id
        try:
            reply = await broker.request(SERVICE, msg, timeout=10.0)
            outcomes[mid] = "ok" if reply.content == {"double": 2 * n} else f"wrong reply: {reply.content!r}"
        except RemoteError as exc:
            outcomes[mid] = f"RemoteError:{exc.code}"
        except ZmqbusError as exc:
            outcomes[mid] = type(exc).__name__
        except Exception as exc:  # an undocumented error: reported as such
            outcomes[mid] = f"undocumented {type(exc).__name__}: {exc}"

    async with broker:
        await broker.ready(30.0)
        ready.set()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        start, n = loop.time(), 0
        while not stop.is_set():
            n += 1
            task = loop.create_task(call(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            ahead = start + n / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
        if tasks:
            await asyncio.wait(set(tasks), timeout=15.0)
    _write(workdir, "caller", {"outcomes": outcomes})

"""``zmqbus demo``: a forwarder, a publisher and a subscriber, each its own process.

This is the pub/sub demo of the core bus: it shows guide-shaped messages
flowing from one component process through the forwarder to another, and ends
with both sides' counters. (The full example workflow with Managers, Handlers
and Processors replaces it once the component framework lands.)
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import tempfile
import time
from enum import Enum
from typing import Any, Callable

from .broker import MessageBroker
from .config import ipc_endpoints
from .message import MessageMetadata, ProcessingMessage, register_message_types
from .procs import forwarder_process, spawn, stop_process

__all__ = ["run_demo", "DemoType"]


class DemoType(Enum):
    ORDER_CREATED = "demo.order.created"
    ORDER_PAID = "demo.order.paid"
    DONE = "demo.done"


async def _subscriber(pub: str, sub: str, results: Any, ready: Any) -> None:
    register_message_types(DemoType)
    done = asyncio.Event()
    seen: list[str] = []

    async def on_order(msg: ProcessingMessage) -> None:
        seen.append(msg.metadata.correlation_id)
        print(f"  subscriber <- {msg.type_name:<20} order={msg.content['order_id']:<4} "
              f"amount={msg.content['amount']:>7.2f}  from {msg.metadata.source_component} "
              f"seq={msg.metadata.sequence}", flush=True)

    async with MessageBroker(pub, sub, name="billing") as broker:
        broker.subscribe("billing", "demo.order.#", on_order)
        broker.subscribe("billing", DemoType.DONE.value, lambda m: done.set())
        await broker.ready()
        ready.set()
        await asyncio.wait_for(done.wait(), 60)
        stats = broker.statistics()
    results.put({"received": len(seen), "gaps": stats.gaps, "decode_errors": sum(stats.decode_errors.values()),
                 "handler_errors": stats.handler_errors})


async def _publisher(pub: str, sub: str, count: int, interval: float, ready: Any) -> None:
    async with MessageBroker(pub, sub, name="shop") as broker:
        ready.wait(30)
        for i in range(1, count + 1):
            kind = DemoType.ORDER_CREATED if i % 2 else DemoType.ORDER_PAID
            await broker.publish(ProcessingMessage(
                kind, {"order_id": (i + 1) // 2, "amount": 9.5 * i},
                MessageMetadata(correlation_id=f"order-{(i + 1) // 2}", source_component="shop",
                                target_component="billing")))
            await asyncio.sleep(interval)
        await broker.publish(ProcessingMessage(DemoType.DONE, {}, MessageMetadata(source_component="shop")))


def _run(coro_fn: Callable[..., Any], *args: Any) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(coro_fn(*args))


def run_demo(count: int = 10, interval: float = 0.05, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo end to end and return the subscriber's summary."""
    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="zmqbus-demo-") as tmp:
        pub, sub = ipc_endpoints(tmp)
        echo(f"forwarder: publishers -> {pub}\n           subscribers -> {sub}")
        started = time.perf_counter()
        procs = [forwarder_process(pub, sub, stats_interval=None)]
        results, ready = mp.Queue(), mp.Event()
        try:
            procs.append(spawn(_run, _subscriber, pub, sub, results, ready, name="demo-subscriber"))
            procs.append(spawn(_run, _publisher, pub, sub, count, interval, ready, name="demo-publisher"))
            summary: dict[str, Any] = results.get(timeout=90)
        finally:
            for proc in reversed(procs):
                stop_process(proc)
        summary["published"] = count
        summary["seconds"] = round(time.perf_counter() - started, 2)
    echo(f"done: {summary['received']}/{count} messages delivered, {summary['gaps']} lost, "
         f"{summary['decode_errors']} malformed, {summary['handler_errors']} handler errors, "
         f"in {summary['seconds']} s")
    return summary

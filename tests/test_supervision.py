"""Operating, the rest (issue 25): hung components restarted, failed workflows dead-lettered and replayed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_ops import acli

from zmqbus.components.error_handler import ErrorHandler
from zmqbus.components.ingest import ChunkAnalyzer, DocumentHandler, IngestManager
from zmqbus.framework.procs import tcp_endpoints
from zmqbus.testing import TestBus, wait_until

from conftest import pid_alive

CLI = [sys.executable, "-m", "zmqbus.cli"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_up_restarts_a_component_that_stops_answering_its_liveness_check(tmp_path: Path) -> None:
    pub, sub = tcp_endpoints()
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'[bus]\npub = "{pub}"\nsub = "{sub}"\n[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    proc = subprocess.Popen([*CLI, "up", str(topo), "--hung-after", "2"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(lines):
                if found := re.search(pattern, line):
                    return found
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{''.join(lines)}"
            time.sleep(0.05)

    try:
        first = int(wait_for(r"started ChunkAnalyzer#1 \(pid (\d+)\)").group(1))
        wait_for(rf"chunk_analyzer ready \(pid {first}\)")
        os.kill(first, signal.SIGSTOP)  # alive, but its event loop no longer turns
        stopped = time.monotonic()
        wait_for(rf"ChunkAnalyzer#1 \(pid {first}\) stopped answering its liveness check")
        second = int(wait_for(r"restarted ChunkAnalyzer#1 \(pid (\d+)\)").group(1))
        noticed = time.monotonic() - stopped
        wait_for(rf"chunk_analyzer ready \(pid {second}\)")
        assert second != first and not pid_alive(first), "the hung process was killed"
        assert noticed < 2 + 1 + 10, f"noticed after {noticed:.1f} s"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 143, "".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_failed_workflow_is_dead_lettered_and_dlq_replay_runs_it_again(bus: TestBus) -> None:
    """README: the message that began a workflow ended by fail_process is dead-lettered, and
    `zmqbus dlq replay` runs the workflow again."""
    errors, *_ = await bus.start_all(ErrorHandler, IngestManager, DocumentHandler, ChunkAnalyzer)
    failed = await bus.record("ingest.failed")
    doc = {"document_id": "doomed", "text": "one two three", "fail": "fatal"}
    await bus.publish("ingest.request", doc, correlation_id="wf-doomed")
    await failed.wait_for(correlation_id="wf-doomed", timeout=20)
    await wait_until(lambda: len(errors.dead_letters) == 1, what="the workflow's dead letter")
    listed = json.loads((await acli(bus, "dlq", "ls", "--json", "--type", "ingest.request")).stdout)
    assert [(x["component"], x["correlation_id"]) for x in listed] == [("ingest_manager", "wf-doomed")]
    assert listed[0]["reason"].startswith("workflow failed: ValueError") and listed[0]["at"] > 0
    replayed = await acli(bus, "dlq", "replay", listed[0]["message_id"])
    assert replayed.returncode == 0, replayed.stderr
    await failed.wait_for(correlation_id="wf-doomed", count=2, timeout=20)  # it ran again (and failed again)
    assert errors.total == 2  # once per run: the analyzer's report (the manager's is the same root cause)
    await wait_until(lambda: len(errors.dead_letters) == 1, what="the second run's dead letter")
    purged = await acli(bus, "dlq", "purge", "--all", "--component", "ingest_manager")
    assert purged.returncode == 0 and "purged 1 dead letter(s)" in purged.stdout, purged.stderr
    assert (await acli(bus, "dlq", "ls")).stdout.strip() == "no dead letters"

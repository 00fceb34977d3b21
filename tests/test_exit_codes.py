"""One rule for every command (README, Command line): a signal that ends it exits 128 + its number,
130 for Ctrl-C (SIGINT) and 143 for SIGTERM, after a clean stop (nothing left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from zmqbus.framework.procs import tcp_endpoints

from conftest import pid_alive

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "zmqbus.cli"]


def run_until(
    args: list[str], ready: str, sig: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Start a command, wait until it prints ``ready`` (stdout or stderr), send ``sig``; its exit status."""
    proc = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if ready in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), f"never printed {ready!r}:\n{''.join(seen)}"
        os.kill(proc.pid, sig)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    reader.join(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return code, "".join(seen)


COMMANDS: dict[str, tuple[list[str], str]] = {
    "forwarder": (["forwarder", "--stats-interval", "0"], "zmqbus forwarder: publishers"),
    "run": (["run", "zmqbus.components.ingest:ChunkAnalyzer"], "ready (pid"),
    "watch": (["watch", "nothing.#"], "watching"),
    "ls": (["ls", "--watch"], "-- "),
    "stats": (["stats", "--watch"], "-- "),
    "send": (["send", "x.y", "--repeat", "100000000"], "waiting"),  # no forwarder: it waits
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_ended_by_a_signal_exits_128_plus_its_number(command: str, sig: int, spawn_forwarder: Any) -> None:
    pub, sub = tcp_endpoints()
    env = dict(os.environ, ZMQBUS_PUB=pub, ZMQBUS_SUB=sub)
    if command not in ("forwarder", "send"):
        spawn_forwarder(pub, sub, stats_interval=1.0)
    args, ready = COMMANDS[command]
    code, out = run_until(args, ready, sig, env=env)
    assert code == 128 + sig, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_and_its_processes_end_with_128_plus_the_signal(sig: int, tmp_path: Path) -> None:
    pub, sub = tcp_endpoints()
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'[bus]\npub = "{pub}"\nsub = "{sub}"\n[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    code, out = run_until(["up", str(topo)], "started ChunkAnalyzer#1", sig)
    assert code == 128 + sig and "all processes stopped" in out, out
    pids = [int(line.rsplit("pid ", 1)[1].rstrip(")\n")) for line in out.splitlines() if line.startswith("started ")]
    assert pids and not [p for p in pids if pid_alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_demo_stops_its_processes_and_exits_128_plus_the_signal(sig: int) -> None:
    code, out = run_until(["demo", "--workflows", "1000000"], "ready (pid", sig)
    assert code == 128 + sig, out
    pids = [int(line.split("(pid ", 1)[1].split(")")[0]) for line in out.splitlines() if "ready (pid" in line]
    deadline = time.monotonic() + 10
    while [p for p in pids if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if pid_alive(p)], "the demo left processes behind"

"""A multi-host test bed on one machine: hosts are Linux network namespaces on one bridge.

Each test gets fresh namespaces (random names and a random 10.x.y.0/24 subnet of
their own), a "switch" namespace holding the bridge, and one veth link per host.
``partition(host)`` takes a host's link down (its TCP connections stall, as
when a cable is pulled); ``heal(host)`` brings it back. Processes run inside a
host with ``ip netns exec`` and are ended by pid; the namespaces are deleted
at teardown. Traffic stays inside namespaces the test created.

No delay or loss is injected: this kernel has no ``netem`` qdisc, and these
tests need none (a partition is what they fault).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)


def unavailable() -> str | None:
    """Why this machine cannot build the bed (None: it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "no 'ip' command (iproute2)"
    probe = f"zbprobe{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"'ip netns add' failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NetBed:
    """``hosts`` hosts named h1..hN, at ``addr(name)``, joined by a bridge."""

    def __init__(self, hosts: int = 3) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.switch = f"zb{tag}sw"
        self.hosts = {f"h{i}": f"zb{tag}h{i}" for i in range(1, hosts + 1)}
        self._procs: list[subprocess.Popen[str]] = []
        self._made: list[str] = []

    def addr(self, host: str) -> str:
        return f"{self.subnet}.{int(host[1:])}"

    def _link(self, host: str) -> str:
        return f"zb{self.tag}v{host[1:]}"  # the switch's end of the host's link (15 characters at most)

    def up(self) -> NetBed:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host, ns in self.hosts.items():
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", self._link(host), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", self._link(host), "netns", self.switch)
            _ip("-n", self.switch, "link", "set", self._link(host), "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def partition(self, host: str) -> None:
        """Cut ``host`` off the others (its link goes down; connections stall, not close)."""
        _ip("-n", self.switch, "link", "set", self._link(host), "down")

    def heal(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self._link(host), "up")

    def run(self, host: str, *args: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
        """Start ``python args...`` inside ``host`` (tests/ on its import path); ended by pid at teardown."""
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
            PYTHONUNBUFFERED="1",
            ZMQBUS_INSECURE="1",
            # every member reachable across hosts at its request port (a publisher's history too)
            ZMQBUS_RPC_BIND="tcp://0.0.0.0:*",
            ZMQBUS_RPC_ADVERTISE=self.addr(host),
        )  # plaintext on the bed's own addresses
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[host], sys.executable, *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._procs.append(proc)
        return proc

    def zmqbus(self, host: str, *args: str) -> subprocess.Popen[str]:
        """Start a ``zmqbus`` command inside ``host``."""
        return self.run(host, "-m", "zmqbus.cli", *args)

    def down(self) -> None:
        for proc in self._procs:  # `ip netns exec` execs the command: the pid is the process's own
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()

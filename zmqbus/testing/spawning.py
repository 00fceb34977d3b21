"""Component processes for a test: started as ``zmqbus run`` starts them, watched, ended by pid.

Each replica is a new interpreter (``python -c``) with this process's import path, running
:func:`zmqbus.framework.runner.component_main`: the module named in the spec is imported there,
never the test's own script (nothing like multiprocessing's re-import of ``__main__``, so a
script fed on standard input spawns as well as a file). Its standard output and error go to a
file, so a replica that dies during start-up is reported at once with its exit code and its last
lines; the test's teardown prints each replica's output (pytest shows it when the test fails).
A replica whose parent dies is told to stop (SIGTERM) within a second, and kills itself 5 s later
if it has not ended by then.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Spawned", "start_replica", "end_replica", "child_main"]

log = logging.getLogger(__name__)

# The child's first lines: the parent's import path, then the component (see child_main).
_BOOT = (
    "import json,sys; a=json.loads(sys.argv[1]); sys.path[:]=a['path']; "
    "import zmqbus.testing.spawning as s; s.child_main(a)"
)


class Spawned:
    """Component processes started by :meth:`TestBus.spawn` (``processes``: their ``subprocess.Popen``)."""

    def __init__(self, spec: str, name: str, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
        self.spec, self.name, self.processes, self.logs = spec, name, processes, logs

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def alive(self) -> int:
        """How many replicas are still running."""
        return sum(p.poll() is None for p in self.processes)

    def exit_codes(self) -> list[int | None]:
        """Each replica's exit code (negative: the signal that ended it; None: still running)."""
        return [p.poll() for p in self.processes]

    def output(self, replica: int = 1, lines: int | None = None) -> str:
        """What replica ``replica`` (from 1) wrote to its standard output and error (the last ``lines``)."""
        try:
            text = self.logs[replica - 1].read_text(errors="replace")
        except OSError:
            return ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def dead_at_start(self) -> str | None:
        """A description of the first replica that has exited (None if all run)."""
        for replica, proc in enumerate(self.processes, 1):
            code = proc.poll()
            if code is not None:
                tail = self.output(replica, 20).strip() or "(it wrote nothing)"
                return f"replica {replica} (pid {proc.pid}) exited with code {code}; its last lines:\n{tail}"
        return None


def start_replica(args: dict[str, Any], log_path: Path) -> subprocess.Popen[bytes]:
    """Start one replica: ``component_main(**args)`` in a new interpreter, output to ``log_path``."""
    boot = {**args, "path": list(sys.path), "parent": os.getpid()}
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(boot)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def end_replica(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
    """Send ``sig`` to the replica by pid (SIGKILL after ``timeout`` if it lives on); return its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("replica pid %d ignored signal %d for %g s; killing it", proc.pid, sig, timeout)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def child_main(args: dict[str, Any]) -> None:
    """The replica's side: watch the parent, then run the component until a signal."""
    from ..framework.runner import component_main

    threading.Thread(target=_watch_parent, args=(int(args["parent"]),), daemon=True, name="parent-watch").start()
    component_main(
        args["spec"],
        args["name"],
        args["pub"],
        args["sub"],
        int(args["log_level"]),
        float(args["grace"]),
        float(args["startup_timeout"]),
        None,
        "127.0.0.1",
        int(args["replica"]),
    )


def _watch_parent(parent: int) -> None:
    """A test process that died (killed, crashed) leaves no replica behind: SIGTERM, then SIGKILL."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5.0)
    os.kill(os.getpid(), signal.SIGKILL)

"""The secure bus from the command line, as docs/SECURITY.md and the README write it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zmqbus.framework.procs import free_port

DOCS = Path(__file__).resolve().parent.parent
PYTHON_ZMQBUS = f"{sys.executable} -m zmqbus"


def three_commands() -> list[str]:
    text = (DOCS / "docs" / "SECURITY.md").read_text()
    block = re.search(r"## A secure bus in three commands\n\n```\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_the_readme_shows_the_same_three_commands() -> None:
    readme = (DOCS / "README.md").read_text()
    for line in three_commands():
        assert line in readme, line


def test_three_commands_make_a_secure_bus(tmp_path: Path) -> None:
    """Run as written (ports made free, HOST = loopback): keys, a CURVE forwarder, a secure watcher
    that sees a member's message; a member without the keys gets a one-line refusal."""
    keygen_cmd, forwarder_cmd, watch_cmd = three_commands()
    pub_port, sub_port = free_port(), free_port()
    while sub_port == pub_port:
        sub_port = free_port()

    def real(cmd: str) -> str:
        cmd = cmd.replace("5570", str(pub_port)).replace("5571", str(sub_port)).replace("HOST", "127.0.0.1")
        return re.sub(r"(^|&& |=\S+ )zmqbus ", lambda m: m.group(1) + PYTHON_ZMQBUS + " ", cmd)

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQBUS_")}
    done = subprocess.run(
        real(keygen_cmd), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    procs: list[subprocess.Popen[Any]] = []
    try:
        fwd = subprocess.Popen(
            real(forwarder_cmd),
            shell=True,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        procs.append(fwd)
        watch = subprocess.Popen(
            real(watch_cmd),
            shell=True,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(watch)
        member_env = dict(
            env, ZMQBUS_KEYS="keys", ZMQBUS_PUB=f"tcp://127.0.0.1:{pub_port}", ZMQBUS_SUB=f"tcp://127.0.0.1:{sub_port}"
        )
        deadline = time.monotonic() + 30
        while True:  # until the watcher's subscription is live (it prints "watching" on stderr, then waits)
            sent = subprocess.run(
                [sys.executable, "-m", "zmqbus", "send", "payroll.run", "--content", '{"salary": 1}'],
                cwd=tmp_path,
                env=member_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert sent.returncode == 0, sent.stderr
            line = _readline(watch, 1.0)
            if line and "payroll.run" in line:
                break
            assert time.monotonic() < deadline, "the secure watcher never saw the member's message"
        # a member with another key folder (not allowed) is refused in one line, quickly
        subprocess.run(
            f"{PYTHON_ZMQBUS} keygen stranger --dir other",
            shell=True,
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        (tmp_path / "other" / "forwarder.key").write_bytes((tmp_path / "keys" / "forwarder.key").read_bytes())
        t0 = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "zmqbus", "--keys", "other", "--key-name", "stranger", "send", "payroll.run"],
            cwd=tmp_path,
            env=member_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode == 1
        assert "AuthenticationRefused" in refused.stderr and "stranger" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert time.monotonic() - t0 < 10
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)


def _readline(proc: subprocess.Popen[Any], timeout: float) -> str | None:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            return str(proc.stdout.readline())
    return None


def test_demo_runs_secure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "demo", "--secure", "--workflows", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CURVE" in done.stdout and "3/3 workflows completed" in done.stdout

"""The code passes its own linters: ruff (pyproject.toml's rule set), mypy --strict and the layer
contracts of import-linter (both in setup.cfg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# lint: deselected where the newest releases are tested (the lint gate holds for the pinned versions)
pytestmark = [pytest.mark.slow, pytest.mark.lint, pytest.mark.timeout(300)]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=280)


def test_ruff_is_clean() -> None:
    done = run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean() -> None:
    """The tree is as `ruff format` writes it (pyproject.toml's settings): run `ruff format .`."""
    done = run("ruff", "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean() -> None:
    done = run("mypy", "--no-incremental")
    assert done.returncode == 0, done.stdout + done.stderr


def test_layers_hold() -> None:
    """No upward import between the layers, and no zmq, asyncio or click in the pure core."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_user_code_importing_the_public_names_passes_mypy_strict(tmp_path: Path) -> None:
    """Every name `zmqbus` exports is an explicit re-export: a user's `mypy --strict` accepts
    `from zmqbus import MessageBroker` (implicit re-exports are off under --strict)."""
    import zmqbus

    user = tmp_path / "user_code.py"
    user.write_text(f"from zmqbus import {', '.join(n for n in zmqbus.__all__ if n != '__version__')}\n")
    done = run("mypy", "--strict", "--no-incremental", str(user))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_users_type_checker_sees_the_brokers_settings(tmp_path: Path) -> None:
    """``MessageBroker(**settings)`` is typed (``Unpack[BrokerSettings]``): mypy accepts the settings
    with their types and rejects a misspelt one or a wrong type, in the user's own code."""
    user = tmp_path / "user_settings.py"
    user.write_text(
        "from zmqbus import MessageBroker\n"
        "ok = MessageBroker(name='shop', heartbeat=0.5, hwm=10)\n"
        "typo = MessageBroker(hearbeat=0.5)\n"
        "wrong = MessageBroker(hwm='many')\n"
    )
    done = run("mypy", "--strict", "--no-incremental", str(user))
    assert done.returncode == 1, done.stdout + done.stderr
    assert ':3: error: Unexpected keyword argument "hearbeat"' in done.stdout, done.stdout
    assert ':4: error: Argument "hwm"' in done.stdout, done.stdout
    assert ":2:" not in done.stdout, done.stdout

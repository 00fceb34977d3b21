"""The pytest plugin beside other async plugins: user folders run in their own pytest process.

What it owns (tests using ``bus`` or marked ``zmqbus``) it runs, async fixtures included; what
another plugin runs (pytest-asyncio in strict and auto mode, anyio) it leaves alone; a project
that does not use zmqbus sees its async tests handled exactly as without zmqbus installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NO_OTHERS = ["-p", "no:asyncio", "-p", "no:anyio"]
#: Live warnings: a TestBus closed with brokers still open (not closed in their loop) says so.
SHOW_WARNINGS = ["--log-cli-level=WARNING", "-o", "asyncio_default_fixture_loop_scope=function"]

ECHO = """
from zmqbus import Processor, service

class Echo(Processor):
    @service("echo")
    async def echo(self, message):
        return message.content
"""


def run_user_suite(folder: Path, files: dict[str, str], *args: str) -> tuple[int, str]:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ZMQBUS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args, str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    return done.returncode, done.stdout + done.stderr


def outcome(output: str) -> dict[str, int]:
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|warnings?)", output)}


def test_a_project_that_does_not_use_zmqbus_sees_its_async_tests_as_before(tmp_path: Path) -> None:
    files = {
        "test_theirs.py": """
            import pytest

            @pytest.fixture
            async def theirs():
                return 1

            async def test_async():
                assert True

            def test_sync():
                assert True
        """
    }
    code, with_zmqbus = run_user_suite(tmp_path, files, *NO_OTHERS)
    code_without, without = run_user_suite(tmp_path, files, *NO_OTHERS, "-p", "no:zmqbus")
    assert (code, outcome(with_zmqbus)) == (code_without, outcome(without)), with_zmqbus + without
    assert "not natively supported" in with_zmqbus  # pytest's own word on an async test nobody runs
    assert "zmqbus" not in with_zmqbus


def test_alone_it_runs_its_async_tests_and_their_async_fixtures_on_one_loop(tmp_path: Path) -> None:
    files = {
        "components.py": ECHO,
        "test_user.py": """
            import asyncio
            import pytest
            from components import Echo

            EVENTS = []

            @pytest.fixture
            async def echo(bus):
                return await bus.start(Echo)

            @pytest.fixture
            async def loop_and_cleanup():
                loop = asyncio.get_running_loop()
                yield loop
                assert asyncio.get_running_loop() is loop  # torn down on the test's own loop
                EVENTS.append("cleaned")

            async def test_echo(bus, echo, loop_and_cleanup):
                assert asyncio.get_running_loop() is loop_and_cleanup
                assert await bus.request("echo", {"a": 1}) == {"a": 1}

            @pytest.mark.zmqbus
            async def test_marked_without_the_bus(loop_and_cleanup):
                await asyncio.sleep(0)

            class TestInAClass:
                @pytest.fixture
                async def word(self):
                    return "in a class"

                async def test_method(self, bus, word):
                    assert word == "in a class"

            def test_the_teardowns_ran():
                assert EVENTS == ["cleaned", "cleaned"]
        """,
    }
    code, out = run_user_suite(tmp_path, files, *NO_OTHERS, *SHOW_WARNINGS)
    assert code == 0 and outcome(out).get("passed") == 4, out
    assert "still open" not in out
    assert "never closed" not in out


def test_beside_pytest_asyncio_in_strict_mode(tmp_path: Path) -> None:
    files = {
        "components.py": ECHO,
        "test_user.py": """
            import asyncio
            import pytest
            import pytest_asyncio
            from components import Echo

            @pytest_asyncio.fixture
            async def theirs():
                return asyncio.get_running_loop()

            @pytest.fixture
            async def ours():
                return asyncio.get_running_loop()

            @pytest.mark.asyncio
            async def test_theirs(theirs):
                assert asyncio.get_running_loop() is theirs

            async def test_ours(bus, ours):
                assert asyncio.get_running_loop() is ours
                await bus.start(Echo)
                assert await bus.request("echo", 1) == 1

            @pytest.mark.asyncio
            async def test_theirs_with_the_bus(bus, theirs):
                assert asyncio.get_running_loop() is theirs  # pytest-asyncio runs it
                await bus.start(Echo)
                assert await bus.request("echo", 2) == 2
        """,
    }
    code, out = run_user_suite(tmp_path, files, "-p", "no:anyio", "-o", "asyncio_mode=strict", *SHOW_WARNINGS)
    assert code == 0 and outcome(out).get("passed") == 3, out
    assert "never closed" not in out and "still open" not in out


def test_beside_pytest_asyncio_in_auto_mode(tmp_path: Path) -> None:
    files = {
        "components.py": ECHO,
        "test_user.py": """
            import asyncio
            import pytest
            from components import Echo

            @pytest.fixture
            async def loop():
                return asyncio.get_running_loop()

            async def test_one(bus, loop):
                assert asyncio.get_running_loop() is loop
                await bus.start(Echo)
                assert await bus.request("echo", 1) == 1

            async def test_two(bus):
                await bus.start(Echo)
                assert await bus.request("echo", 2) == 2

            async def test_without_the_bus():
                await asyncio.sleep(0)
        """,
    }
    code, out = run_user_suite(tmp_path, files, "-p", "no:anyio", "-o", "asyncio_mode=auto", *SHOW_WARNINGS)
    assert code == 0 and outcome(out).get("passed") == 3, out
    assert "never closed" not in out and "still open" not in out


def test_beside_anyio(tmp_path: Path) -> None:
    files = {
        "components.py": ECHO,
        "test_user.py": """
            import asyncio
            import pytest
            from components import Echo

            @pytest.fixture
            def anyio_backend():
                return "asyncio"

            @pytest.fixture
            async def value():
                return asyncio.get_running_loop()

            @pytest.mark.anyio
            async def test_theirs(value):
                assert asyncio.get_running_loop() is value

            async def test_theirs_by_fixture(anyio_backend, bus):
                await bus.start(Echo)
                assert await bus.request("echo", 3) == 3

            async def test_ours(bus, value):
                assert asyncio.get_running_loop() is value
                await bus.start(Echo)
                assert await bus.request("echo", 4) == 4
        """,
    }
    code, out = run_user_suite(tmp_path, files, "-p", "no:asyncio", *SHOW_WARNINGS)
    assert code == 0 and outcome(out).get("passed") == 3, out
    assert "never closed" not in out and "still open" not in out


def test_a_wider_scoped_async_fixture_gets_a_clear_error(tmp_path: Path) -> None:
    files = {
        "test_user.py": """
            import pytest

            @pytest.fixture(scope="module")
            async def shared():
                return 1

            async def test_it(bus, shared):
                pass
        """
    }
    code, out = run_user_suite(tmp_path, files, *NO_OTHERS)
    assert code != 0 and "async fixture 'shared' is module-scoped" in out, out

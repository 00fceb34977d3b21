"""Every Python snippet of README.md and docs/GUIDE.md runs as written, against a real forwarder.

A snippet whose first line is ``# NAME.py`` is (part of) a file of the
reader's project: the snippets that name the same file are joined in order and
written to a temporary folder, where the other snippets run (so they can
import it); a ``test_*.py`` one is run with pytest there, as its reader would,
with no conftest (the installed plugin gives it ``bus``). Every other snippet
runs as a script, with ``$ZMQBUS_PUB``/``$ZMQBUS_SUB`` pointing at a forwarder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = {"README.md": ROOT / "README.md", "GUIDE.md": ROOT / "docs" / "GUIDE.md"}
NAMED = re.compile(r"# (\w+\.py)\n")
#: What a script snippet prints, where the document says so.
EXPECTED = {
    "README.md": {0: "MessageType.ORDER_START_REQUEST {'order_id': 7} order-7", 1: "{'price': 28.5}"},
}


def snippets(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS[doc].read_text(), re.S)


def scripts(doc: str) -> list[tuple[int, str]]:
    return [(i, s) for i, s in enumerate(b for b in snippets(doc) if not NAMED.match(b))]


def write_files(doc: str, folder: Path) -> list[str]:
    files: dict[str, str] = {}
    for block in snippets(doc):
        named = NAMED.match(block)
        if named:
            files[named.group(1)] = files.get(named.group(1), "") + block + "\n"
    for name, text in files.items():
        (folder / name).write_text(text)
    return list(files)


def _env(endpoints: tuple[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(ZMQBUS_PUB=endpoints[0], ZMQBUS_SUB=endpoints[1])
    return env


CASES = [(doc, i) for doc in DOCS if DOCS[doc].exists() for i, _ in scripts(doc)]


@pytest.mark.parametrize(("doc", "index"), CASES, ids=[f"{d}-script{i}" for d, i in CASES])
def test_script_snippets_run(
    doc: str, index: int, tmp_path: Path, tcp_pair: tuple[str, str], spawn_forwarder: Any
) -> None:
    spawn_forwarder(*tcp_pair, stats_interval=None)
    write_files(doc, tmp_path)
    code = scripts(doc)[index][1]
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(tcp_pair), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{doc} snippet {index}:\n{code}\n{done.stderr}"
    expected = EXPECTED.get(doc, {}).get(index)
    if expected is not None:
        assert done.stdout.strip() == expected


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if DOCS[d].exists()])
def test_test_snippets_pass_under_pytest(doc: str, tmp_path: Path) -> None:
    names = write_files(doc, tmp_path)
    tests = [n for n in names if n.startswith("test_")]
    if not tests:
        pytest.skip(f"{doc} has no test snippet")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tmp_path,
        env=_env(("", "")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_the_readme_test_snippet_needs_at_most_ten_lines_of_setup() -> None:
    """The issue's bar: a three-component flow with an error path, at most 10 lines before its first assertion."""
    block = next(b for b in snippets("README.md") if b.startswith("# test_orders.py"))
    body = block.split("async def test_", 1)[1].splitlines()[1:]
    setup = [line for line in body[: next(i for i, line in enumerate(body) if "assert" in line)] if line.strip()]
    assert len(setup) <= 10, setup
    assert "start_all(OrderManager, PricingProcessor, ErrorHandler)" in block


def readme_command(marker: str) -> str:
    """The first line of the code block after ``<!-- marker -->``, as .ci/run reads it."""
    block = re.search(rf"<!-- {marker} -->\n```\n(.*?)\n", DOCS["README.md"].read_text())
    assert block is not None, f"README.md has no {marker} block"
    return block.group(1)


def test_the_readmes_commands_are_one_line_each_and_agree() -> None:
    """The test commands install the pinned versions; the quick tier is the full command less the
    slow tests; the newest-releases command installs without the pins and leaves out only the lint
    gate; .ci/run reads every marker it runs."""
    test, quick, newest = (readme_command(m) for m in ("test-command", "quick-test-command", "newest-test-command"))
    assert "-c constraints.txt" in test and readme_command("main-command").startswith("python3 -m pip install")
    assert quick == test + ' -m "not slow"'
    assert "constraints" not in newest and newest.endswith('-m "not lint"')
    ci = (ROOT / ".ci" / "run").read_text()
    for marker in ("main-command", "test-command", "newest-test-command"):
        assert f"readme_command {marker}" in ci


def test_constraints_pin_everything_the_tests_and_linters_read() -> None:
    """Every requirement of the library and of the test extra has an exact pin in constraints.txt,
    and the linters' pins there are the ones setup.cfg asks for: an upstream release cannot change
    what the lint gate or the tests run against."""
    import configparser

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["test"].splitlines()
    wanted = [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt (bash scripts/refresh-constraints)"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, outside {req}"

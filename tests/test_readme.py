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
def test_script_snippets_run(doc: str, index: int, tmp_path: Path, tcp_pair: tuple[str, str],
                             spawn_forwarder: Any) -> None:
    spawn_forwarder(*tcp_pair, stats_interval=None)
    write_files(doc, tmp_path)
    code = scripts(doc)[index][1]
    done = subprocess.run([sys.executable, "-c", code], env=_env(tcp_pair), cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{doc} snippet {index}:\n{code}\n{done.stderr}"
    expected = EXPECTED.get(doc, {}).get(index)
    if expected is not None:
        assert done.stdout.strip() == expected


@pytest.mark.parametrize("doc", [d for d in DOCS if DOCS[d].exists()])
def test_test_snippets_pass_under_pytest(doc: str, tmp_path: Path) -> None:
    names = write_files(doc, tmp_path)
    tests = [n for n in names if n.startswith("test_")]
    if not tests:
        pytest.skip(f"{doc} has no test snippet")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=tmp_path,
                          env=_env(("", "")), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_the_readme_test_snippet_needs_at_most_ten_lines_of_setup() -> None:
    """The issue's bar: a three-component flow with an error path, at most 10 lines before its first assertion."""
    block = next(b for b in snippets("README.md") if b.startswith("# test_orders.py"))
    body = block.split("async def test_", 1)[1].splitlines()[1:]
    setup = [line for line in body[:next(i for i, line in enumerate(body) if "assert" in line)] if line.strip()]
    assert len(setup) <= 10, setup
    assert "start_all(OrderManager, PricingProcessor, ErrorHandler)" in block

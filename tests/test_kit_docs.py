"""What GUIDE.md and the test kit's docstring state about the kit, checked against the code."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_readme import _env, write_files

import zmqbus.testing
from zmqbus import MessageBroker
from zmqbus.components.error_handler import ErrorHandler
from zmqbus.components.state_tracker import StateTracker
from zmqbus.core.workflow import ALLOWED, ComponentContext, ComponentState, ContextStore

GUIDE = (Path(__file__).resolve().parent.parent / "docs" / "GUIDE.md").read_text()


def test_the_guides_transition_table_is_the_one_update_state_checks() -> None:
    rows = re.findall(r"^\| (created|processing|waiting|retrying|completed|failed|cancelled) \| (.*?) \|$", GUIDE, re.M)
    table = {
        ComponentState(a): frozenset() if b == "(none)" else frozenset(map(ComponentState, b.split(", ")))
        for a, b in rows
    }
    assert table == ALLOWED


def test_the_infrastructure_attributes_the_guide_lists_exist_with_their_types() -> None:
    broker = MessageBroker("ipc:///nowhere/pub", "ipc:///nowhere/sub")
    errors, states = ErrorHandler(broker, dead_letters=""), StateTracker(MessageBroker("ipc:///x/p", "ipc:///x/s"))
    expected = {
        (errors, "total"): int,
        (errors, "by_type"): collections.Counter,
        (errors, "by_component"): collections.Counter,
        (errors, "recent"): collections.deque,
        (errors, "dead_letters"): collections.OrderedDict,
        (states, "by_correlation"): dict,
        (states, "updates"): int,
    }
    for (component, name), kind in expected.items():
        assert isinstance(getattr(component, name), kind), name
        assert f"| `{name}` |" in GUIDE
    assert errors.recent.maxlen == 100


def test_active_processes_is_a_real_mapping_as_the_guide_says() -> None:
    store = ContextStore()
    assert store == {} and not store
    ctx = ComponentContext("r-1", "wf-1")
    store["wf-1"] = ctx
    assert store["wf-1"] is ctx and "wf-1" in store and list(store) == ["wf-1"] and store == {"wf-1": ctx}
    assert store.pop("wf-1") is ctx and store == {}
    with pytest.raises(KeyError):
        store["wf-1"]
    with pytest.raises(TypeError, match="ComponentContext"):
        store["wf-2"] = {"state": "processing"}  # type: ignore[assignment]
    assert store.create("wf-3", "r-3") is store["wf-3"]
    del store["wf-3"]
    assert len(store) == 0


@pytest.mark.slow
def test_the_kits_docstring_example_runs_as_written(tmp_path: Path) -> None:
    """zmqbus.testing's docstring, with the README's orders.py and the bundled error handler."""
    write_files("README.md", tmp_path)
    doc = zmqbus.testing.__doc__ or ""
    example = textwrap.dedent(doc.split("::\n", 1)[1].split("\n\n", 1)[0])
    (tmp_path / "test_docstring.py").write_text(
        "from orders import OrderManager, PricingProcessor\n"
        "from zmqbus.components.error_handler import ErrorHandler\n\n" + example + "\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_docstring.py"],
        cwd=tmp_path,
        env=_env(("", "")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr

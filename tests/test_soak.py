"""`zmqbus soak`: its classification (pure) and a short real run under faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zmqbus.soak.classify import classify_requests, classify_topic, longest_pauses

from conftest import TIMED

pytestmark = [pytest.mark.slow, TIMED]


def test_every_sequence_number_is_classified_once() -> None:
    # sent 1..10; 3 refused by publish(); 2 received twice; 5, 6 lost between received ones;
    # 9, 10 lost after the last received one; 1 lost before the first received one
    out = classify_topic(10, [3], [2, 2, 4, 7, 8], publisher_warned=False)
    assert out == {
        "delivered": 3,
        "duplicated": 1,
        "refused": 1,
        "lost_counted": 2,
        "lost_reported": 0,
        "lost_silently": 3,
        "unexpected": 0,
    }
    # the same tail, but the publisher's close() reported unconfirmed messages
    warned = classify_topic(10, [3], [2, 2, 4, 7, 8], publisher_warned=True)
    assert (warned["lost_reported"], warned["lost_silently"]) == (2, 1)
    assert classify_topic(2, [], [1, 2, 99], False)["unexpected"] == 1


def test_requests_executed_twice_on_one_instance_are_found() -> None:
    out = classify_requests(
        {"a": "ok", "b": "RequestTimeout", "c": "undocumented KeyError: x"}, {"r1": ["a", "b", "a"], "r2": ["b"]}
    )
    assert out["executed_twice_on_one_instance"] == 1
    assert out["executed_on_several_instances"] == 1
    assert out["undocumented"] == 1 and out["executed_never_replied"] == 1


def test_longest_pause_spans_each_restart() -> None:
    assert longest_pauses([5.0], [[1.0, 4.5, 5.7, 6.0], [4.9, 5.1]]) == [1.2]


@pytest.mark.timeout(180)
def test_short_soak_with_faults_passes() -> None:
    """A short soak of the real thing: forwarder restarts and responder kills, no silent loss."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zmqbus.cli",
            "soak",
            "--duration",
            "8",
            "--restart-forwarder-every",
            "3",
            "--kill-responder-every",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = json.loads(done.stdout)
    assert report["passed"] and report["forwarder_restarts"] == 2 and report["responder_kills"] >= 1
    ps, rq = report["pubsub"], report["requests"]
    assert ps["lost_silently"] == 0 and ps["duplicated"] == 0 and ps["delivered"] > 5000
    assert ps["end_markers_missing"] == 0  # every subscriber saw each publisher's last message
    # every loss the subscribers counted is one the classification found, and the reverse
    assert ps["gaps_counted_by_subscribers"] == ps["lost_counted"] + ps["refused"]
    assert rq["executed_twice_on_one_instance"] == 0 and rq["undocumented"] == 0
    assert rq["outcomes"].get("ok", 0) > 100
    assert all(len(v) == 2 for v in report["rss_kb"].values())


@pytest.mark.timeout(180)
def test_a_redundant_soak_loses_nothing_when_forwarders_are_killed_in_turn() -> None:
    """Two forwarders, one killed with SIGKILL (and restarted) every 2 s, in turn: nothing lost,
    nothing duplicated, no pause in delivery worth the name (one forwarder: ~0.3 s and counted loss)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zmqbus.cli",
            "soak",
            "--duration",
            "7",
            "--forwarders",
            "2",
            "--restart-forwarder-every",
            "2",
            "--rate",
            "2000",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = json.loads(done.stdout)
    ps = report["pubsub"]
    assert report["passed"] and report["forwarder_restarts"] == 3
    assert (ps["lost_counted"], ps["lost_silently"], ps["duplicated"]) == (0, 0, 0), ps
    assert ps["delivered"] > 20_000 and ps["gaps_counted_by_subscribers"] == 0
    assert report["requests"]["undocumented"] == 0


def test_soak_exits_1_on_a_failed_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's exit status follows the verdict (the checker itself is the short soak above)."""
    from click.testing import CliRunner

    from zmqbus.cli import main
    from zmqbus.soak import run

    report = {
        "options": {"duration": 1.0},
        "passed": False,
        "forwarder_restarts": 0,
        "responder_kills": 0,
        "pubsub": {
            "delivered": 9,
            "lost_counted": 0,
            "lost_reported": 0,
            "refused": 0,
            "lost_silently": 1,
            "duplicated": 0,
            "gaps_counted_by_subscribers": 0,
            "sequence_resets": 0,
        },
        "requests": {
            "sent": 0,
            "outcomes": {},
            "undocumented": 0,
            "executed_twice_on_one_instance": 0,
            "executed_on_several_instances": 0,
        },
        "pause_after_restart_s": {"each": [], "max": 0.0},
        "rss_kb": {},
    }
    monkeypatch.setattr(run, "run_soak", lambda opts, progress: report)
    result = CliRunner().invoke(main, ["soak", "--duration", "1"])
    assert result.exit_code == 1
    assert "LOST SILENTLY 1" in result.output and "FAILED" in result.output

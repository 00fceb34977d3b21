"""The zmqbus command line, run as real processes (and through CliRunner for argument errors)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from zmqbus.cli import main

from conftest import TIMED

pytestmark = [pytest.mark.slow, TIMED, pytest.mark.timeout(120)]


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_forwarder_watch_send_stats(tcp_pair: tuple[str, str], run_cli: Any) -> None:
    ep = ["--pub", tcp_pair[0], "--sub", tcp_pair[1]]
    fwd = run_cli("forwarder", *ep, "--stats-interval", "0.2")
    watch = run_cli("watch", "cli.#", *ep, "--count", "2", "--timeout", "60", "--json")
    assert watch.stderr is not None
    line = watch.stderr.readline()  # "watching ..." is printed once its subscription is live
    assert "watching cli.#" in line, line
    code, _, err = finish(
        run_cli(
            "send",
            "cli.hello",
            *ep,
            "--content",
            '{"n": 1}',
            "--repeat",
            "2",
            "--target",
            "watcher",
            "--correlation-id",
            "conv-9",
        )
    )
    assert code == 0, err
    code, out, err = finish(watch)
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["content"] for x in lines] == [{"n": 1}, {"n": 1}]
    assert [x["sequence"] for x in lines] == [1, 2]
    assert lines[0]["correlation_id"] == "conv-9" and lines[0]["target"] == "watcher"
    code, out, err = finish(run_cli("stats", *ep, "--timeout", "20"))
    assert code == 0, err
    assert "frames_in" in out and "handshake_failures" in out
    fwd.send_signal(signal.SIGTERM)
    code, _, err = finish(fwd)
    assert code == 143, err  # 128 + SIGTERM
    assert "forwarded" in err


def test_forwarder_reports_a_busy_port(tcp_pair: tuple[str, str], run_cli: Any) -> None:
    ep = ["--pub", tcp_pair[0], "--sub", tcp_pair[1], "--stats-interval", "0"]
    first = run_cli("forwarder", *ep)
    host, port = tcp_pair[1][len("tcp://") :].rsplit(":", 1)
    deadline = time.monotonic() + 20
    while True:  # wait until the first one has bound both ports
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the first forwarder never bound"
            time.sleep(0.05)
    code, _, err = finish(run_cli("forwarder", *ep))
    assert code == 1 and "Address already in use" in err, err
    assert len(err.strip().splitlines()) == 1, f"a start-up error is one line, as a member's is:\n{err}"
    code, _, err = finish(run_cli("forwarder", "--pub", "tcp//bad", "--sub", tcp_pair[1]))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "tcp//bad" in err, err
    first.send_signal(signal.SIGINT)
    assert finish(first)[0] == 130  # ended by Ctrl-C: 128 + SIGINT


def test_send_errors_are_one_line() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["send", "bad..topic"])
    assert result.exit_code == 1 and "TopicError" in result.output
    result = runner.invoke(main, ["send", "a.b", "--content", "{not json"])
    assert result.exit_code == 2 and "not JSON" in result.output


def test_send_without_a_forwarder_times_out_cleanly(tcp_pair: tuple[str, str], run_cli: Any) -> None:
    code, _, err = finish(
        run_cli("send", "a.b", "--pub", tcp_pair[0], "--sub", tcp_pair[1], "--timeout", "1"), timeout=60
    )
    assert code == 1 and "BusTimeout" in err


def test_demo(run_cli: Any) -> None:
    code, out, err = finish(run_cli("demo", "--workflows", "4"), timeout=110)
    assert code == 0, err
    assert "4/4 workflows completed, 0 failed, 0 missing" in out
    assert out.count(" completed: ") == 4
    assert "'by_state': {'completed': 4}" in out  # the state tracker saw every workflow end


def test_bench_pubsub_json(run_cli: Any) -> None:
    """Checks that the benchmark runs and reports; it asserts no speed."""
    code, out, err = finish(run_cli("bench", "pubsub", "--quick", "--json", "--count", "3000"), timeout=110)
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == 3000
    assert report["zmqbus_msgs_per_s"] > 0 and report["raw_msgs_per_s"] > 0
    assert report["ratio"] == round(report["zmqbus_msgs_per_s"] / report["raw_msgs_per_s"], 3)
    assert report["zmqbus"]["received"] + report["zmqbus"]["lost"] == 3000


@pytest.mark.timeout(300)
def test_bench_suite_quick(run_cli: Any, tmp_path: Path) -> None:
    """The whole suite in --quick mode, as CI runs it: every section reports; no speed is asserted."""
    out_dir = tmp_path / "report"
    code, out, err = finish(run_cli("bench", "--quick", "--json", "--peers", "--out", str(out_dir)), timeout=280)
    assert code == 0, err
    report = json.loads(out)
    assert report["failed"] == []
    s = report["sections"]
    assert s["pubsub"]["zmqbus"]["lost"] == 0 and s["pubsub"]["ratio"] > 0
    assert [r["content_bytes"] for r in s["sizes"]] == [64, 1024, 16384, 65536]
    assert [r["subscribers"] for r in s["fanout"]] == [1, 2, 4]
    for r in s["sizes"] + s["fanout"]:
        assert r["zmqbus_msgs_per_s"] > 0 and r["raw_msgs_per_s"] > 0
        assert r["zmqbus"]["lost"] == 0 and r["zmqbus"]["gaps_counted"] == 0  # XPUB_NODROP: nothing lost
    for side in ("raw", "zmqbus"):
        p = s["latency"][side]["latency_us"]
        assert 0 < p["p50"] <= p["p99"] <= p["p999"] <= p["max"]
    for side in ("raw", "sync", "zmqbus"):
        r = s["reqrep"][side]
        assert r["p50_us"] > 0 and r["throughput_req_s"] > 0 and r["many_p50_us"] > 0
    w = s["workflow"]
    assert w["completed"] == w["workflows"] == 30 and w["workflows_per_s"] > 0
    assert len(w["workflows_per_s_rounds"]) == w["rounds"] == 1
    assert s["pubsub"]["batching"]["lost"] == 0 and s["pubsub"]["batching_ratio"] > 0
    # the saved report as a baseline: the same section again, each figure next to the saved one
    ccode, cout, cerr = finish(
        run_cli("bench", "--quick", "--only", "workflow", "--compare", str(out_dir / "report.json")), timeout=120
    )
    assert ccode == 0, cerr
    assert f"## Compared with {out_dir / 'report.json'}" in cout and "| workflow: workflows/s |" in cout
    assert "beyond the noise" in cout
    ha = s["ha"]
    assert ha["one_forwarder_msgs_per_s"] > 0 and ha["two_forwarders_msgs_per_s"] > 0
    assert (ha["failover"]["lost"], ha["failover"]["duplicated"]) == (0, 0), "a redundant bus loses nothing"
    assert ha["single_restart"]["lost"] == ha["single_restart"]["gaps_counted"], "one forwarder's loss is counted"
    rc = s["recovery"]
    assert rc["history_on_msgs_per_s"] > 0 and rc["history_off_msgs_per_s"] > 0 and rc["cache_memory"]["rss_mb"] > 0
    for run in rc["restart"]["runs"]:  # what a killed forwarder held comes back, once and in order
        assert (run["delivered"], run["in_order_once"], run["lost"]) == (300, True, 0), run
    for peer in ("redis", "nats"):  # measured where installed, else skipped with the reason
        entry = s["peers"][peer]
        assert ("skipped" in entry and "not" in entry["skipped"]) or entry["pubsub"]["msgs_per_s"] > 0
    assert {t["target"] for t in report["targets"]} >= {
        "pub/sub throughput / raw pyzmq",
        "request/reply p50 / raw asyncio echo",
    }
    md = (out_dir / "report.md").read_text()
    for heading in (
        "## Pub/sub through a forwarder",
        "## Pub/sub throughput by content size",
        "## Fan-out",
        "## One-way latency",
        "## Request/reply",
        "## The demo workflow",
        "## Peers",
        "## Targets",
    ):
        assert heading in md
    assert json.loads((out_dir / "report.json").read_text())["sections"].keys() == s.keys()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out_dir / "report.png").exists()
    else:
        assert (out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[" in err and "pubsub (1/" in err  # progress went to stderr


def test_run_component_stops_on_sigterm(tcp_pair: tuple[str, str], run_cli: Any, spawn_forwarder: Any) -> None:
    spawn_forwarder(*tcp_pair, stats_interval=None)
    ep = ["--pub", tcp_pair[0], "--sub", tcp_pair[1]]
    proc = run_cli("--log-level", "INFO", "run", "zmqbus.components.ingest:ChunkAnalyzer", "--name", "analyzer-x", *ep)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while "component analyzer-x started" not in proc.stderr.readline():
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc, timeout=30)
    assert code == 143, err
    assert "component analyzer-x stopped" in err


def test_run_rejects_what_is_not_a_component(run_cli: Any) -> None:
    code, _, err = finish(run_cli("run", "zmqbus:MessageBroker"))
    assert code == 1 and "not a zmqbus Component" in err
    code, _, err = finish(run_cli("run", "no-colon"))
    assert code == 1 and "module:Class" in err


def test_up_runs_the_shipped_topology_and_stops_cleanly(tmp_path: Any, run_cli: Any) -> None:
    """The README's `zmqbus up topology.toml`, with the file as shipped (its endpoints moved to ipc in a
    temp dir): every process starts, a document goes through the whole workflow, Ctrl-C stops it all."""
    import asyncio

    from zmqbus import MessageBroker, MessageMetadata, ProcessingMessage
    from zmqbus.testing import Recorder

    pub, sub = f"ipc://{tmp_path}/bus.pub", f"ipc://{tmp_path}/bus.sub"
    shipped = (Path(__file__).parent.parent / "topology.toml").read_text()
    assert 'pub = "tcp://127.0.0.1:5570"' in shipped and 'sub = "tcp://127.0.0.1:5571"' in shipped
    topology = tmp_path / "topology.toml"
    topology.write_text(shipped.replace("tcp://127.0.0.1:5570", pub).replace("tcp://127.0.0.1:5571", sub))
    proc = run_cli("up", str(topology))

    async def run_one() -> Any:
        async with MessageBroker(pub, sub) as b:
            for service, n in (
                ("ingest.analyze", 3),
                ("ingest.split", 1),
                ("ingest_manager.status", 1),
                ("errors.stats", 1),
                ("state.query", 1),
            ):
                await b.wait_for_service(service, instances=n, timeout=60)
            done = Recorder()
            b.subscribe("test", "ingest.complete", done)
            await b.ready()
            await b.publish(
                ProcessingMessage(
                    "ingest.request", {"document_id": "d1", "text": "a b c"}, MessageMetadata(correlation_id="d1")
                )
            )
            return (await done.wait_for(correlation_id="d1", timeout=30)).content

    assert asyncio.run(run_one())["words"] == 3
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=30)
    assert code == 130, err
    assert err.count("started ") == 8 and "all processes stopped" in err


def test_bench_compare_with_a_file_that_is_no_report_fails_before_measuring(run_cli: Any, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"nothing": 1}')
    for path in (tmp_path / "x.json", tmp_path / "missing.json"):
        code, _out, err = finish(run_cli("bench", "--quick", "--compare", str(path)), timeout=30)
        assert code == 1 and f"--compare {path}" in err and "round" not in err


def test_bench_out_dir_that_cannot_be_written_fails_before_measuring(run_cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _out, err = finish(run_cli("bench", "--quick", "--out", str(blocker / "report")), timeout=30)
    assert code == 1 and "cannot write the report" in err
    assert "pubsub (1/" not in err  # nothing was measured


def test_up_runs_a_secure_topology(tmp_path: Any, run_cli: Any) -> None:
    """keys, key_name and policy in the topology file reach every process `zmqbus up` starts:
    CURVE over tcp loopback, a policed forwarder, a component serving under its own key."""
    import asyncio

    from zmqbus import MessageBroker, ProcessingMessage, keygen, load_keys, load_policy
    from zmqbus.framework.procs import tcp_endpoints

    keys = tmp_path / "keys"
    for name in ("forwarder", "worker", "client"):
        keygen(keys, name, allow=name != "forwarder")
    (tmp_path / "policy.toml").write_text(
        '[keys.worker]\npublish = ["#"]\nsubscribe = ["#"]\nserve = ["#"]\ncall = ["#"]\n'
        '[keys.client]\npublish = ["#"]\nsubscribe = ["#"]\ncall = ["ingest.#"]\n'
    )
    pub, sub = tcp_endpoints()
    topology = tmp_path / "topology.toml"
    topology.write_text(
        f'[bus]\npub = "{pub}"\nsub = "{sub}"\nkeys = "keys"\nkey_name = "worker"\n'
        f'policy = "policy.toml"\n\n[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    proc = run_cli("up", str(topology))

    async def ask() -> Any:
        async with MessageBroker(
            pub, sub, keys=load_keys(keys, "client"), policy=load_policy(tmp_path / "policy.toml")
        ) as b:
            await b.ready(30)
            deadline = time.monotonic() + 60
            while True:
                try:
                    return (
                        await b.request(
                            "ingest.analyze",
                            ProcessingMessage("ingest.analyze", {"document_id": "d", "index": 0, "text": "two words"}),
                            timeout=10,
                        )
                    ).content
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    assert asyncio.run(ask())["words"] == 2
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=30)
    assert code == 130, err


def test_up_with_a_bad_policy_says_so_in_one_line(tmp_path: Any, run_cli: Any) -> None:
    (tmp_path / "policy.toml").write_text('[keys.x]\npublsh = ["#"]\n')
    keygen_dir = tmp_path / "keys"
    from zmqbus import keygen

    keygen(keygen_dir, "forwarder", allow=False)
    keygen(keygen_dir, "client")
    topology = tmp_path / "topology.toml"
    topology.write_text('[bus]\nkeys = "keys"\npolicy = "policy.toml"\n')
    code, _, err = finish(run_cli("up", str(topology)), timeout=30)
    assert code == 1 and "unknown key(s) ['publsh']" in err and len(err.strip().splitlines()) == 1, err

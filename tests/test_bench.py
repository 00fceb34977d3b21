"""The benchmark suite's own logic: percentiles, message shapes, reports, peers that fail.

The suite as a whole runs in test_cli.py (``zmqbus bench --quick``); no test
here asserts a speed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from zmqbus.bench.common import sized_content
from zmqbus.bench.peers import run_peers
from zmqbus.bench.report import to_markdown
from zmqbus.bench.suite import check_targets, machine
from zmqbus.core.stats import percentiles

from conftest import TIMED

pytestmark = [pytest.mark.slow, TIMED]


def test_percentiles_nearest_rank() -> None:
    samples = [i / 1e6 for i in range(1, 1001)]  # 1..1000 us
    p = percentiles(list(reversed(samples)))
    assert (p["p50"], p["p99"], p["p999"], p["max"]) == (500.0, 990.0, 999.0, 1000.0)
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}


@pytest.mark.parametrize("size", [32, 64, 1024, 16 * 1024, 64 * 1024])
def test_sized_content_encodes_to_the_size(size: int) -> None:
    assert len(msgpack.packb(sized_content(size))) == size


def test_report_shows_a_failed_section_and_skips_its_targets() -> None:
    sections: dict[str, Any] = {
        "pubsub": {"error": "RuntimeError: benchmark process zmqbus-sub-0 exited with 1"},
        "reqrep": {
            "p50_ratio": 1.2,
            "p50_us": 200.0,
            "throughput_req_s": 40_000,
            "latency_requests": 10,
            "throughput_requests": 10,
            "throughput_ratio": 0.5,
            **{
                side: {
                    "p50_us": 1.0,
                    "p99_us": 2.0,
                    "p999_us": 3.0,
                    "one_req_s": 1,
                    "throughput_req_s": 1,
                    "many_p50_us": 1.0,
                    "many_p99_us": 2.0,
                }
                for side in ("zmqbus", "raw", "sync")
            },
        },
    }
    report = {
        "quick": True,
        "started": "now",
        "seconds": 1.0,
        "machine": machine(),
        "sections": sections,
        "failed": ["pubsub"],
        "targets": check_targets({"reqrep": sections["reqrep"]}),
    }
    md = to_markdown(report)
    assert "## pubsub: FAILED" in md and "exited with 1" in md
    assert "## Request/reply" in md
    assert [t["target"] for t in report["targets"]] == [
        "request/reply p50 / raw asyncio echo",
        "requests/s with 100 in flight / raw asyncio echo",
    ]


def test_a_peer_server_that_will_not_start_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("redis-server", "nats-server"):
        fake = tmp_path / name
        fake.write_text("#!/bin/sh\nexit 3\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    said: list[str] = []
    out = run_peers(quick=True, progress=said.append)
    for name in ("redis", "nats"):
        entry = out[name]
        # measured nowhere: failed (its client is installed) or skipped (it is not)
        assert ("failed" in entry and "did not start (exit code 3)" in entry["failed"]) or (
            "skipped" in entry and "not installed" in entry["skipped"]
        ), entry
    assert len(said) == 2


def test_text_reports_of_the_single_sections() -> None:
    from zmqbus.bench.report import format_pubsub, format_reqrep

    text = format_pubsub(
        {
            "count": 1000,
            "transport": "tcp loopback",
            "rounds": 3,
            "raw_msgs_per_s": 200_000,
            "zmqbus_msgs_per_s": 150_000,
            "ratio": 0.75,
            "zmqbus": {"lost": 0, "gaps_counted": 0},
        },
        180,
    )
    assert "1,000 messages of ~180 B" in text and "150,000 msg/s" in text and "0.75" in text
    r = {"transport": "tcp loopback", "rounds": 1, "p50_ratio": 1.5, "throughput_ratio": 0.6}
    for key in ("sync_", "raw_", ""):
        r.update({key + "p50_us": 100.0, key + "p99_us": 200.0, key + "throughput_req_s": 40_000})
    text = format_reqrep(r)
    assert "raw asyncio echo" in text and "1.50x" in text and "40,000" in text
    from zmqbus.bench.report import format_pubsub_secure, format_pubsub_traced

    text = format_pubsub_traced(
        {
            "count": 2000,
            "rounds": 1,
            "raw_msgs_per_s": 100_000,
            "zmqbus_msgs_per_s": 60_000,
            "zmqbus_traced_msgs_per_s": 6_000,
            "ratio": 0.6,
            "trace_cost": 0.1,
            "lost": {},
        },
        180,
    )
    assert "tracing on           6,000 msg/s  (keeps 10% of off)" in text
    text = format_pubsub_secure(
        {
            "count": 2000,
            "rounds": 1,
            "raw_curve_msgs_per_s": 80_000,
            "zmqbus_curve_msgs_per_s": 70_000,
            "zmqbus_clear_msgs_per_s": 75_000,
            "zmqbus_policy_msgs_per_s": 50_000,
            "ratio": 0.88,
            "curve_cost": 0.93,
            "policy_cost": 0.71,
            "lost": {},
        },
        180,
    )
    assert "(CURVE keeps 93% of it)" in text and "keeps 71% of CURVE alone" in text


def test_secure_pubsub_bench_runs_every_side_over_curve() -> None:
    """`zmqbus bench pubsub --secure`: three sides, each delivers everything (it asserts no speed)."""
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "bench", "pubsub", "--secure", "--quick", "--count", "3000", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["lost"] == {"raw_curve": 0, "zmqbus_curve": 0, "zmqbus_clear": 0, "zmqbus_policy": 0}
    assert (
        min(
            out["raw_curve_msgs_per_s"],
            out["zmqbus_curve_msgs_per_s"],
            out["zmqbus_clear_msgs_per_s"],
            out["zmqbus_policy_msgs_per_s"],
        )
        > 0
    )


def test_traced_pubsub_bench_measures_tracing_off_and_on() -> None:
    """`zmqbus bench pubsub --trace`: raw, zmqbus with tracing off and on; everything delivered."""
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "bench", "pubsub", "--trace", "--quick", "--count", "2000", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["lost"] == {"raw": 0, "zmqbus": 0, "zmqbus_traced": 0}
    assert min(out["raw_msgs_per_s"], out["zmqbus_msgs_per_s"], out["zmqbus_traced_msgs_per_s"]) > 0
    assert 0 < out["trace_cost"]


def test_secure_reqrep_bench_runs_every_side_over_curve() -> None:
    """`zmqbus bench reqrep --secure --quick`: three sides report figures (it asserts no speed)."""
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "bench", "reqrep", "--secure", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for side in ("raw_curve", "zmqbus_curve", "zmqbus_clear"):
        assert out[side]["p50_us"] > 0 and out[side]["throughput_req_s"] > 0


def test_the_report_shows_the_secure_sections() -> None:
    sides = {"raw_curve": 0, "zmqbus_curve": 0, "zmqbus_clear": 0, "zmqbus_policy": 0}
    rr_side = {"p50_us": 200.0, "p99_us": 400.0, "throughput_req_s": 20_000}
    sections: dict[str, Any] = {
        "secure_pubsub": {
            "count": 1000,
            "rounds": 1,
            "raw_curve_msgs_per_s": 80_000,
            "zmqbus_curve_msgs_per_s": 70_000,
            "zmqbus_clear_msgs_per_s": 78_000,
            "zmqbus_policy_msgs_per_s": 50_000,
            "ratio": 0.875,
            "curve_cost": 0.9,
            "policy_cost": 0.71,
            "lost": sides,
        },
        "secure_reqrep": {
            "rounds": 1,
            "raw_curve": rr_side,
            "zmqbus_curve": rr_side,
            "zmqbus_clear": rr_side,
            "p50_ratio": 1.0,
            "throughput_ratio": 1.0,
        },
    }
    report = {
        "quick": True,
        "started": "now",
        "seconds": 1.0,
        "machine": machine(),
        "sections": sections,
        "failed": [],
        "targets": [],
    }
    md = to_markdown(report)
    assert "## Pub/sub with CURVE" in md and "a publish policy keeps 71%" in md
    assert "## Request/reply with CURVE" in md and "20,000" in md


def test_the_hot_path_breakdown_runs() -> None:
    """`python3 benchmarks/hotpath.py` (the per-step costs the README and benchmarks/profiles quote)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "hotpath.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 15 and all(float(line.rsplit("|", 2)[1]) > 0 for line in rows)


@pytest.mark.parametrize(
    "step",
    [
        "build",
        "encode",
        "sequence",
        "history",
        "publish",
        "publish-batching",
        "raw-pack",
        "decode",
        "dispatch-frames",
        "dispatch-batch",
        "raw-unpack",
        "request",
        "request-100",
        "raw-request-100",
    ],
)
def test_every_step_the_instruction_counts_run_works(step: str) -> None:
    """`python3 benchmarks/instructions.py` runs each step under valgrind: here each runs natively, 64 units
    after its warm-up (the request steps check that every request was executed and answered)."""
    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "instructions.py"
    done = subprocess.run(
        [sys.executable, str(script), "--step", step, "--n", "64", "--total", "64"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_the_instruction_counts_print_a_table() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "instructions.py"), "--quick", "--only", "sequence"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| publish |")]
    assert 100 < float(row.rsplit("|", 2)[1].replace(",", "")) < 100_000

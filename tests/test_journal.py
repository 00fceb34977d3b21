"""The stream positions journal (io.journal): write-ahead lines, compaction, one process per slot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from zmqbus.io.journal import StreamJournal


def test_positions_survive_a_reopen_and_a_torn_last_line(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "streams.jsonl")
    j = StreamJournal(path)
    assert j.load() == {}
    j.record("p1", "a.b", 5)
    j.record("p1", "a.b", 6)
    j.record("p2", "c", 1)
    j.close()
    with open(path, "a") as f:
        f.write('["p2", "c", 9')  # a write torn by a kill
    again = StreamJournal(path)
    assert again.load() == {("p1", "a.b"): 6, ("p2", "c"): 1}
    assert len(Path(path).read_text().splitlines()) == 2  # compacted at load
    again.close()


def test_a_second_live_process_takes_another_slot_and_a_dead_ones_slot_is_taken_over(tmp_path: Path) -> None:
    path = str(tmp_path / "streams.jsonl")
    mine = StreamJournal(path)
    mine.load()
    mine.record("p", "t", 3)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from zmqbus.io.journal import StreamJournal; j = StreamJournal({path!r}); "
         "j.load(); print(j.path, flush=True); import time; time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == path + ".2"  # not the slot this process holds
    finally:
        holder.kill()  # by pid: its lock goes with it
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    mine.close()
    later = StreamJournal(path)
    assert later.load() == {("p", "t"): 3} and later.path == path  # the first slot is free again
    later.close()

"""What a soak run delivered, lost and executed: pure functions over the roles' records.

Pub/sub, per subscriber and topic, every sequence number the publisher used
is exactly one of:

* ``delivered``: received once;
* ``duplicated``: received more than once (a defect);
* ``refused``: ``publish`` raised a documented error for it (the publisher knew);
* ``lost_counted``: never received, but an earlier and a later number of that
  topic were, so the subscriber's gap detection counted it;
* ``lost_reported``: never received, after the last number that was, and the
  publisher's ``close()`` reported unconfirmed messages (the publisher knew);
* ``lost_silently``: never received and nobody counted it (a defect).

Requests: each outcome as the caller saw it (``ok``, a documented error by
name), and each instance's execution log checked for an id it ran twice.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any

__all__ = ["classify_topic", "classify_pubsub", "classify_requests", "longest_pauses"]


def classify_topic(sent: int, refused: list[int], received: list[int], publisher_warned: bool) -> dict[str, int]:
    """Classify sequence numbers 1..``sent`` of one topic at one subscriber."""
    counts = Counter(received)
    refused_set = set(refused)
    # The subscriber's gap detection counts a missing number only between two it
    # received: before the first one nothing was counted.
    first = received[0] if received else 0
    last = max(counts, default=0)
    out = {"delivered": 0, "duplicated": 0, "refused": 0, "lost_counted": 0, "lost_reported": 0, "lost_silently": 0}
    for seq in range(1, sent + 1):
        times = counts.get(seq, 0)
        if times == 1:
            out["delivered"] += 1
        elif times > 1:
            out["duplicated"] += 1
        elif seq in refused_set:
            out["refused"] += 1
        elif first < seq < last:
            out["lost_counted"] += 1
        elif seq > last and publisher_warned:
            out["lost_reported"] += 1
        else:
            out["lost_silently"] += 1
    out["unexpected"] = sum(1 for seq in counts if not 1 <= seq <= sent)  # numbers never sent
    return out


def classify_pubsub(publishers: list[dict[str, Any]], subscribers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over every (subscriber, topic), plus each subscriber's own gap counter for comparison."""
    totals: Counter[str] = Counter()
    for sub in subscribers:
        for pub in publishers:
            warned = pub["unconfirmed"] > 0
            for topic, sent in pub["calls"].items():
                totals.update(classify_topic(sent, pub["failed"][topic], sub["received"].get(topic, []), warned))
    return {
        **{
            k: totals.get(k, 0)
            for k in (
                "delivered",
                "duplicated",
                "refused",
                "lost_counted",
                "lost_reported",
                "lost_silently",
                "unexpected",
            )
        },
        "out_of_order": sum(
            sum(1 for a, b in pairwise(seqs) if b <= a) for s in subscribers for seqs in s["received"].values()
        ),
        "recovered": sum(s.get("recovery", {}).get("recovered", 0) for s in subscribers),
        "gaps_counted_by_subscribers": sum(s["gaps"] for s in subscribers),
        "sequence_resets": sum(s["sequence_resets"] for s in subscribers),
        "end_markers_missing": sum(s.get("end_markers_missing", 0) for s in subscribers),
    }


def classify_requests(outcomes: dict[str, str], executions: dict[str, list[str]]) -> dict[str, Any]:
    """``outcomes``: request id -> outcome; ``executions``: instance -> ids in the order it ran them."""
    by_outcome = Counter(outcomes.values())
    twice_on_one = {inst: [i for i, n in Counter(ids).items() if n > 1] for inst, ids in executions.items()}
    twice_on_one = {inst: ids for inst, ids in twice_on_one.items() if ids}
    ran_on: Counter[str] = Counter()
    for ids in executions.values():
        ran_on.update(set(ids))
    documented = ("ok", "RequestTimeout", "NoResponder", "ClosedError") + tuple(
        f"RemoteError:{code}" for code in ("shutting_down", "expired", "unknown_service")
    )
    return {
        "sent": len(outcomes),
        "outcomes": dict(sorted(by_outcome.items())),
        "undocumented": sum(n for o, n in by_outcome.items() if o not in documented),
        "executed_twice_on_one_instance": sum(len(ids) for ids in twice_on_one.values()),
        "executed_on_several_instances": sum(1 for n in ran_on.values() if n > 1),
        "executed_never_replied": sum(1 for i in ran_on if outcomes.get(i, "ok") != "ok"),
    }


def longest_pauses(restarts: list[float], arrivals: list[list[float]]) -> list[float]:
    """For each restart time, the longest pause in delivery around it over all subscribers (seconds).

    The pause is the time from a subscriber's last arrival before the restart
    to its first arrival after it.
    """
    out = []
    for when in restarts:
        worst = 0.0
        for times in arrivals:
            before = [t for t in times if t <= when]
            after = [t for t in times if t > when]
            if before and after:
                worst = max(worst, min(after) - max(before))
        out.append(round(worst, 3))
    return out

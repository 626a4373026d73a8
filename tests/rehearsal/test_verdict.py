"""The rehearsal's judge, on made-up records: each check must catch what it is there for (no
processes: `make rehearsal` runs the real thing)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tests.chaos.load import Post
from tests.rehearsal.faults import Fault
from tests.rehearsal.receiver import Delivery
from tests.rehearsal.verdict import judge, recovery

T0 = 1_800_000_000.0


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def _world(n: int = 20) -> dict[str, Any]:
    """n jobs, one a second, each finished 2 s later, with both events delivered."""
    posts, accepted, jobs, sent, received = [], {}, [], [], []
    for i in range(n):
        job = str(uuid.uuid4())
        posts.append(Post(i, T0 + i, T0 + i + 0.01, 201, job))
        accepted[job] = i
        row = {"id": job, "status": "completed", "created_at": _at(i), "completed_at": _at(i + 2)}
        jobs.append({**row, "prompt": f"rehearsal job {i} [x]"})
        for event, status in (("start", "processing"), ("completed", "completed")):
            delivery = uuid.uuid4()
            sent.append({"id": delivery, "job_id": job, "event": event, "status": "delivered"})
            sent[-1]["attempts"] = 1
            received.append(Delivery(T0 + i + 2, f"msg_{delivery.hex}", event, job, status))
    return {
        "posts": posts,
        "accepted": accepted,
        "jobs": jobs,
        "audit": {},
        "changed": set(),
        "file_errors": [],
        "deliveries": sent,
        "received": received,
        "faults": [],
        "rate": 1.0,
        "end": T0 + n + 5,
    }


def test_a_clean_run_passes() -> None:
    verdict = judge(**_world())
    assert verdict.problems == []
    assert (verdict.accepted, verdict.terminal, verdict.lost, verdict.duplicated) == (20, 20, 0, 0)
    assert verdict.webhooks_missing == verdict.five_xx_other == 0


def test_lost_duplicated_and_missing_are_each_caught() -> None:
    world = _world()
    world["jobs"][0]["status"] = "processing"  # lost
    world["audit"] = {world["jobs"][1]["id"]: (2, 0)}  # finished twice
    extra = Delivery(T0, "msg_other", "completed", world["jobs"][2]["id"], "completed")
    world["received"].append(extra)  # a second completed event
    world["received"] = [r for r in world["received"] if r.job_id != world["jobs"][3]["id"]]
    verdict = judge(**world)
    assert verdict.lost == 1 and verdict.terminal == 19
    assert verdict.duplicated == 2
    # job 3's two events never arrived; job 0 is not finished, so its completed is not owed
    assert verdict.webhooks_missing == 3
    assert "PASS" not in verdict.line()


def test_only_a_503_with_retry_after_is_excused() -> None:
    world = _world()
    world["posts"] += [
        Post(90, T0, T0 + 0.1, 503, retry_after="5"),
        Post(91, T0, T0 + 0.1, 503),  # no Retry-After
        Post(92, T0, T0 + 0.1, 502),
        Post(93, T0, T0 + 0.1, "error: RemoteProtocolError"),
        Post(94, T0, T0 + 15, "timeout"),
    ]
    world["faults"] = [Fault("F9", "x", started=T0 - 1, ended=T0 + 1, recovered=T0 + 2)]
    verdict = judge(**world)
    assert verdict.five_xx_other == 4
    assert verdict.recoveries[0].unavailable == 1


def test_a_job_created_although_refused_is_caught() -> None:
    world = _world()
    world["posts"].append(Post(50, T0, T0 + 0.1, 503, retry_after="5"))
    job = {"id": str(uuid.uuid4()), "status": "completed", "created_at": _at(0)}
    world["jobs"].append({**job, "completed_at": _at(1), "prompt": "rehearsal job 50 [x]"})
    world["faults"] = [Fault("F9", "x", started=T0 - 1, ended=T0 + 1, recovered=T0 + 2)]
    verdict = judge(**world)
    assert any("although every POST was refused" in p for p in verdict.problems)


def test_recovery_figures() -> None:
    world = _world(30)
    # jobs 10-14 stalled by the fault (at 10 s, over at 12 s) until 25 s
    for job in world["jobs"][10:15]:
        job["completed_at"] = _at(25)
    fault = Fault("F9", "x", started=T0 + 10, ended=T0 + 12, recovered=T0 + 26)
    figures = recovery(fault, world["jobs"], world["posts"], 1.0, world["end"])
    assert figures.first == 7.0  # job 15, created after the fault, done at 17 s
    assert figures.drained == 15.0  # the last job created before it ended, done at 25 s
    assert figures.steady == 6.0  # [16 s, 21 s) holds 4 completions (jobs 15-18): 80 % of 5
    assert figures.recovered == 16.0

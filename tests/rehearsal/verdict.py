"""Judging a rehearsal from what the three witnesses recorded: Postgres (job rows, the audit
trigger's transitions, webhook deliveries), the receiver's log, and the client's answers.

- accepted: jobs a 201 announced; terminal: of those, finished; lost: the others.
- duplicated: jobs finished more than once: more than one terminal transition or a terminal
  row that changed later (tests.chaos.measure), stored files that are not exactly the
  outputs' keys, or more than one `start` or `completed` event (distinct webhook-ids) at the
  receiver.
- webhooks_missing: deliveries recorded for accepted jobs that never reached the receiver or
  did not end `delivered`, and finished jobs without a `completed` event naming their status.
- 5xx_other: answers the client saw that are neither 201 nor 503 with Retry-After: any other
  5xx (HAProxy's 502/504 included), a timeout, or a connection error. The client talks only
  to HAProxy, which stays up throughout, so a connection error is never excused by a host
  being down: it is counted.
- recovery, per fault: `first` (to the first job accepted after the fault finishing), `steady`
  (to the first STEADY_WINDOW-second window with 80 % of the offered rate finishing),
  `drained` (to the last job accepted before the fault ended finishing), `recovered` (seen
  live: all of those, and every worker host taking tasks again).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.chaos.load import Post
from tests.chaos.measure import TERMINAL
from tests.rehearsal.faults import STEADY_SHARE, STEADY_WINDOW, Fault
from tests.rehearsal.receiver import Delivery


def allowed(post: Post) -> bool:
    """A 503 that says when to come back is what an outage may answer."""
    return post.status == 503 and bool(post.retry_after)


def other_5xx(post: Post) -> bool:
    return isinstance(post.status, str) or (post.status >= 500 and not allowed(post))


@dataclass
class Recovery:
    fault: Fault
    first: float | None
    steady: float | None
    drained: float | None
    recovered: float | None
    unavailable: int  # 503 with Retry-After answered meanwhile
    five_xx_other: int


@dataclass
class Verdict:
    accepted: int = 0
    terminal: int = 0
    lost: int = 0
    duplicated: int = 0
    webhooks_missing: int = 0
    five_xx_other: int = 0
    recoveries: list[Recovery] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_recovery(self) -> float | None:
        times = [r.recovered for r in self.recoveries]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    @property
    def ok(self) -> bool:
        return not self.problems and self.max_recovery is not None

    def line(self) -> str:
        worst = self.max_recovery
        return (
            f"rehearsal: accepted={self.accepted} terminal={self.terminal} lost={self.lost} "
            f"duplicated={self.duplicated} webhooks_missing={self.webhooks_missing} "
            f"5xx_other={self.five_xx_other} "
            f"max_recovery_s={'none' if worst is None else f'{worst:.1f}'} "
            f"{'PASS' if self.ok else 'FAIL'}"
        )


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def recovery(
    fault: Fault, jobs: list[dict[str, Any]], posts: list[Post], rate: float, end: float
) -> Recovery:
    """A fault's recovery figures from the job rows (created_at, completed_at) and answers."""
    start = fault.started
    done = [(_ts(j["created_at"]) or 0.0, _ts(j["completed_at"])) for j in jobs]
    after = [d for c, d in done if d is not None and c >= start]
    first = min(after) - start if after else None
    hit = [d for c, d in done if c <= fault.ended and (d is None or d >= start)]
    drained = None if any(d is None for d in hit) else max(hit, default=start) - start
    finished = sorted(d for _, d in done if d is not None and d >= start)
    steady = None
    need = STEADY_SHARE * rate * STEADY_WINDOW
    t = start
    while t + STEADY_WINDOW <= max(end, start):
        if sum(1 for d in finished if t <= d < t + STEADY_WINDOW) >= need:
            steady = t - start
            break
        t += 1.0
    until = fault.recovered or end
    inside = [p for p in posts if p.ended >= start and p.started <= until]
    return Recovery(
        fault,
        first,
        steady,
        drained,
        None if fault.recovered is None else fault.recovered - start,
        sum(allowed(p) for p in inside),
        sum(other_5xx(p) for p in inside),
    )


_INDEX = re.compile(r"^rehearsal job (\d+) ")


def judge(
    posts: list[Post],
    accepted: dict[str, int],
    jobs: list[dict[str, Any]],
    audit: dict[str, tuple[int, int]],
    changed: set[str],
    file_errors: list[str],
    deliveries: list[dict[str, Any]],
    received: list[Delivery],
    faults: list[Fault],
    rate: float,
    end: float,
) -> Verdict:
    """Every check; `jobs`: id, status, created_at, completed_at, prompt of every row."""
    v = Verdict()
    by_id = {j["id"]: j for j in jobs}
    v.accepted = len(accepted)
    lost = [j for j in accepted if j not in by_id or by_id[j]["status"] not in TERMINAL]
    v.lost, v.terminal = len(lost), len(accepted) - len(lost)
    if lost:
        states = [by_id[j]["status"] if j in by_id else "missing" for j in lost]
        sample = list(zip(lost, states, strict=True))[:5]
        v.problems.append(f"{len(lost)} accepted jobs not finished: {sample}")

    # Finished once: the audit, the monitor, the files, the events.
    dup = {j for j, (terminals, later) in audit.items() if terminals > 1 or later > 0}
    dup |= changed
    events: dict[tuple[str, str], set[str]] = defaultdict(set)
    for hit in received:
        events[(hit.job_id, hit.event)].add(hit.webhook_id)
    twice = {job for (job, event), ids in events.items() if event in ("start", "completed")}
    twice = {job for job in twice if any(len(events[(job, e)]) > 1 for e in ("start", "completed"))}
    if twice:
        v.problems.append(
            f"{len(twice)} jobs with two start or completed events: {sorted(twice)[:3]}"
        )
    dup |= twice
    v.duplicated = len(dup) + len(file_errors)
    if dup - twice:
        v.problems.append(f"{len(dup - twice)} jobs finished more than once: {sorted(dup)[:3]}")
    v.problems.extend(file_errors[:5])

    # Every webhook event delivered.
    ids = {hit.webhook_id for hit in received}
    mine = [d for d in deliveries if d["job_id"] in accepted]
    unsent = [d for d in mine if f"msg_{d['id'].hex}" not in ids or d["status"] != "delivered"]
    completed_events = {hit.job_id: hit.status for hit in received if hit.event == "completed"}
    unannounced = [
        j for j in accepted if j not in lost and completed_events.get(j) != by_id[j]["status"]
    ]
    v.webhooks_missing = len(unsent) + len(unannounced)
    if unsent:
        sample = [(str(d["job_id"]), d["event"], d["status"], d["attempts"]) for d in unsent[:3]]
        v.problems.append(f"{len(unsent)} webhook deliveries never received: {sample}")
    if unannounced:
        v.problems.append(
            f"{len(unannounced)} finished jobs without their completed event: {unannounced[:3]}"
        )
    strays = ids - {f"msg_{d['id'].hex}" for d in deliveries}
    if strays:
        v.problems.append(f"{len(strays)} webhooks received that no delivery row names")
    v.notes.append(
        f"webhooks: {len(mine)} deliveries, {len(received)} POSTs received "
        f"({len(received) - len(ids)} repeats of a webhook-id)"
    )

    # Answers.
    v.answers = Counter(_kind(p) for p in posts)
    v.five_xx_other = sum(other_5xx(p) for p in posts)
    if v.five_xx_other:
        bad = Counter(_kind(p) for p in posts if other_5xx(p))
        v.problems.append(
            f"{v.five_xx_other} answers other than 201 or 503+Retry-After: {dict(bad)}"
        )
    odd = [p for p in posts if isinstance(p.status, int) and p.status < 500 and p.status != 201]
    if odd:
        v.problems.append(f"{len(odd)} 4xx answers: {dict(Counter(_kind(p) for p in odd))}")
    windows = [(f.started, f.recovered or end) for f in faults]
    calm = [p for p in posts if allowed(p) and not _inside(p, windows)]
    if calm:
        v.problems.append(f"{len(calm)} answers 503 while nothing was broken")
    # A job no 201 announced: fine only if a POST for it got no answer (then it must finish).
    unanswered = {p.index for p in posts if isinstance(p.status, str)}
    refused = {p.index for p in posts} - set(accepted.values()) - unanswered
    exists = [j["id"] for j in jobs if _index(j["prompt"]) in refused]
    if exists:
        v.problems.append(f"{len(exists)} jobs exist although every POST was refused: {exists[:3]}")
    unacked = [j for j in jobs if j["id"] not in accepted and _index(j["prompt"]) in unanswered]
    if unacked:
        v.notes.append(f"{len(unacked)} jobs created by a POST that got no answer")
        stuck = [j["id"] for j in unacked if j["status"] not in TERMINAL]
        if stuck:
            v.problems.append(f"{len(stuck)} unannounced jobs not finished: {stuck[:3]}")

    v.recoveries = [recovery(f, jobs, posts, rate, end) for f in faults]
    slow = [r.fault.key for r in v.recoveries if r.recovered is None]
    if slow:
        v.problems.append(f"not recovered: {', '.join(slow)}")
    return v


def _kind(post: Post) -> str:
    if isinstance(post.status, str):
        return post.status
    if post.status == 503:
        return f"503 ({post.code or 'no code'}{'' if post.retry_after else ', no Retry-After'})"
    return str(post.status)


def _inside(post: Post, windows: Iterable[tuple[float, float]]) -> bool:
    return any(post.ended >= a and post.started <= b for a, b in windows)


def _index(prompt: str) -> int:
    match = _INDEX.match(prompt)
    return int(match.group(1)) if match else -1


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown(v: Verdict) -> str:
    """The faults and their recovery, as a table for docs/scaling.md."""
    lines = [
        "| Fault | Down (s) | First job done (s) | Steady (s) | Drained (s) | Recovered (s) "
        "| 503 + Retry-After | Other 5xx | Notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in v.recoveries:
        f = r.fault
        lines.append(
            f"| {f.key} {f.title} | {_fmt(f.ended - f.started)} | {_fmt(r.first)} "
            f"| {_fmt(r.steady)} | {_fmt(r.drained)} | {_fmt(r.recovered)} | {r.unavailable} "
            f"| {r.five_xx_other} | {'; '.join(f.notes)} |"
        )
    return "\n".join(lines)

"""The outbox writes exactly the messages Celery's own publisher (kombu) writes, so stock
workers consume them; and it sends what is appended together in one batch."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from mediagen.broker import QUEUE, Outbox, Task, queue_key, task_message
from mediagen.worker import celery_app
from tests.conftest import REDIS

SCRATCH = REDIS.fresh()  # no worker consumes it

# Fields that differ between any two messages (ids, times, the sending process).
_VARYING_HEADERS = {"id", "root_id", "origin", "eta"}
_VARYING_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag"}


def _shape(raw: bytes) -> dict[str, Any]:
    message = orjson.loads(raw)
    message["body"] = orjson.loads(base64.b64decode(message["body"]))
    message["headers"] = {k: v for k, v in message["headers"].items()
                          if k not in _VARYING_HEADERS}
    message["properties"] = {k: v for k, v in message["properties"].items()
                             if k not in _VARYING_PROPERTIES}
    return message


def test_messages_are_the_ones_kombu_writes() -> None:
    client = redis.Redis.from_url(SCRATCH)
    client.flushdb()
    with celery_app.connection_for_write(SCRATCH) as connection:
        for args, countdown in ((["a-job"], None), (["a-job", 2], 1.5)):
            # Our steps go at priority 3 (the normal jobs' list): kombu's own, given the same.
            celery_app.send_task("mediagen.jobs.poll", args=args, queue=QUEUE, priority=3,
                                 countdown=countdown, connection=connection)
    assert client.llen(QUEUE) == 0
    theirs = [orjson.loads(raw) for raw in reversed(client.lrange(queue_key(QUEUE, 3), 0, -1))]
    assert len(theirs) == 2
    ours = [orjson.loads(task_message(Task("mediagen.jobs.poll", ("a-job",)))),
            orjson.loads(task_message(Task("mediagen.jobs.poll", ("a-job", 2), 1.5)))]
    for kombu, mine in zip(theirs, ours, strict=True):
        assert _shape(orjson.dumps(mine)) == _shape(orjson.dumps(kombu))
        assert mine["headers"]["id"] == mine["headers"]["root_id"] \
            == mine["properties"]["correlation_id"]
    assert theirs[0]["headers"]["eta"] is None and ours[0]["headers"]["eta"] is None
    assert theirs[1]["headers"]["eta"] and ours[1]["headers"]["eta"]
    client.flushdb()


async def test_appends_made_together_go_out_in_one_batch() -> None:
    client = aioredis.from_url(SCRATCH)
    await client.flushdb()
    outbox = Outbox(client)
    try:
        first = outbox.send(Task("mediagen.jobs.start", ("one",)))
        later = [outbox.send(Task("mediagen.jobs.start", (f"job-{n}",))) for n in range(50)]
        assert all(f is later[0] for f in later)  # one batch, one future
        assert await first and await later[0]
        assert await client.llen(queue_key(QUEUE, Task("x", ()).priority)) == 51
        assert await outbox.flush()
        # A dead Redis: the futures say so, nothing raises.
        dead = Outbox(aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5))
        assert await asyncio.wait_for(dead.send(Task("mediagen.jobs.start", ("x",))), 10) is False
        await dead.close()
    finally:
        await outbox.close()
        await client.flushdb()
        await client.aclose()


async def test_a_message_sent_once_waits_alone_until_its_task_clears_the_marker() -> None:
    """`send_once` (a batch's settle look): many jobs ending queue one message, not one each;
    once the task cleared the marker, the next end sends another."""
    url = REDIS.fresh()
    client = aioredis.from_url(url)
    outbox = Outbox(client)
    task = Task("mediagen.batches.settle", ("b-1",))
    try:
        for _ in range(5):
            outbox.send_once(task, "marker:b-1", 60)
        assert await outbox.flush()
        outbox.send_once(task, "marker:b-1", 60)  # in a later batch too
        assert await outbox.flush()
        assert await client.llen(queue_key(QUEUE, task.priority)) == 1
        assert 59_000 < await client.pttl("marker:b-1") <= 60_000
        await client.delete("marker:b-1")  # the task started: it looks from now on
        outbox.send_once(task, "marker:b-1", 60)
        assert await outbox.flush()
        messages = await client.lrange(queue_key(QUEUE, task.priority), 0, -1)
        assert len(messages) == 2
        assert orjson.loads(messages[0])["headers"]["task"] == "mediagen.batches.settle"
    finally:
        await outbox.close()
        await client.aclose()

"""The scheduler's queues in a real Redis: fair turns between keys (weights, levels, first come
first served inside a key), slots and their release, start messages lent to another job,
paused models, and queue positions. No Postgres: the Lua scripts alone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, Endpoint, ModelRoute
from mediagen.config import Settings
from mediagen.scheduling import Entry, Queues, Taken, enqueue, queue_position, remove
from tests.conftest import REDIS

FREE = ModelRoute(name="acme/free", provider="builtin")  # no limit
TWO = ModelRoute(name="acme/two", provider="replicate", concurrency=2)
COG = ModelRoute(
    name="acme/cog", provider="cog", endpoints=(Endpoint("http://a:1", 1), Endpoint("http://b:1", 2))
)


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    client = aioredis.Redis.from_url(REDIS.fresh())
    catalog = Catalog([FREE, TWO, COG], FREE)
    yield Queues(Settings(_env_file=None), catalog, client)  # type: ignore[call-arg]
    await client.aclose()


async def add(queues: Queues, model: str, key: str, n: int, level: str = "1",
              weight: int = 0) -> list[str]:
    outbox = Outbox(queues.client)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    enqueue(outbox, [Entry(i, model, level, key, weight) for i in ids])
    assert await outbox.flush()
    await outbox.close()
    return ids


async def starts(queues: Queues, tokens: list[str]) -> list[str]:
    started = []
    for token in tokens:
        taken = await queues.pick(token)
        assert isinstance(taken, Taken), taken
        started.append(taken.job_id)
    return started


async def test_a_later_key_takes_turns_with_a_key_that_queued_first(queues: Queues) -> None:
    a = await add(queues, "acme/free", "A", 100)
    assert await starts(queues, a[:30]) == a[:30]  # alone: in order
    b = await add(queues, "acme/free", "B", 10)
    # The next 20 starts (start messages of A's jobs) alternate A, B: not B after all of A's.
    nxt = await starts(queues, a[30:50])
    assert sorted(nxt) == sorted(a[30:40] + b)
    assert [j for j in nxt if j in a] == a[30:40]  # first come first served inside a key
    assert [j for j in nxt if j in b] == b
    for i in range(0, 20, 2):
        assert {nxt[i] in a, nxt[i + 1] in a} == {True, False}, nxt


async def test_weights_give_more_turns(queues: Queues) -> None:
    a = await add(queues, "acme/free", "A", 60)
    b = await add(queues, "acme/free", "B", 60, weight=3)
    nxt = await starts(queues, a[:40])
    assert sum(j in b for j in nxt) == 30 and sum(j in a for j in nxt) == 10


async def test_a_higher_level_goes_first_and_a_job_waits_behind_no_other_key(
    queues: Queues,
) -> None:
    low = await add(queues, "acme/free", "A", 3, level="0")
    normal = await add(queues, "acme/free", "A", 3)
    high = await add(queues, "acme/free", "B", 2, level="2")
    assert await starts(queues, low + normal + high) == high + normal + low


async def test_a_start_message_lent_to_another_job_starts_the_next(queues: Queues) -> None:
    a = await add(queues, "acme/free", "A", 3)
    # The third job's message starts the first in turn; the first's own message is lent.
    assert await queues.pick(a[2]) == Taken(a[0], "")
    assert await queues.pick(a[0]) == Taken(a[1], "")  # ... and starts the next
    assert await queues.pick(a[1]) == Taken(a[2], "")
    assert await queues.pick(a[2]) is None  # lent, but the queue is empty
    assert await queues.pick(a[2]) == "self"  # spent: its own job, which is not queued
    assert await queues.pick(str(uuid.uuid4())) == "self"  # a job never queued


async def test_a_limited_model_starts_as_many_as_it_has_slots(queues: Queues) -> None:
    jobs = await add(queues, "acme/two", "A", 4)
    taken = [await queues.pick(j) for j in jobs[:2]]
    assert taken == [Taken(jobs[0], "model:acme/two"), Taken(jobs[1], "model:acme/two")]
    first = jobs[:2]
    assert await queues.pick(jobs[2]) is None  # both slots held: it waits
    assert await queues.usage([TWO]) == {"acme/two": (2, 2)}
    # A job whose turn came holds its slot while it is started: none is ahead of it.
    assert await queue_position(queues.client, jobs[0]) == (0, False)
    assert await queues.release(first[0], TWO) == [(jobs[2], "1")]  # the next that fits
    assert await queue_position(queues.client, jobs[0]) is None  # over: no place at all
    assert await starts(queues, [jobs[2]]) == [jobs[2]]
    assert await queues.release("", TWO) == []  # full again


async def test_cog_servers_are_pools_and_one_set_aside_gets_no_work(queues: Queues) -> None:
    jobs = await add(queues, "acme/cog", "A", 4)
    taken = [await queues.pick(j) for j in jobs[:3]]
    pools = sorted(t.pool for t in taken if isinstance(t, Taken))
    assert len(pools) == 3 and await queues.pick(jobs[3]) is None
    released = next(t for t in taken if isinstance(t, Taken))
    await queues.set_down(released.pool, 30, "busy")
    await queues.release(released.job_id, COG)
    assert await queues.pick(jobs[3]) is None  # its only free slot is set aside
    await queues.set_up(released.pool)
    assert isinstance(await queues.pick(jobs[3]), Taken)


async def test_a_paused_model_keeps_its_jobs_and_others_go_on(queues: Queues) -> None:
    two = await add(queues, "acme/two", "A", 1)
    free = await add(queues, "acme/free", "A", 1)
    await queues.set_paused(["acme/two"], True)
    assert await queue_position(queues.client, two[0]) == (0, True)
    assert await starts(queues, two) == free  # the paused model's turn goes to another
    assert await queues.pick(free[0]) is None  # lent, but nothing may start
    await queues.set_paused(["acme/two"], False)
    assert [j for j, _ in await queues.queued("acme/two")] == two
    assert await starts(queues, two) == two


async def test_positions_count_the_jobs_of_the_model_ahead(queues: Queues) -> None:
    a = await add(queues, "acme/free", "A", 3)
    b = await add(queues, "acme/free", "B", 3)
    other = await add(queues, "acme/two", "A", 5)  # another model's: not ahead
    high = await add(queues, "acme/free", "C", 1, level="2")
    assert await queue_position(queues.client, high[0]) == (0, False)
    positions = sorted([(await queue_position(queues.client, j))[0] for j in a + b])  # type: ignore[index]
    assert positions == [1, 2, 3, 4, 5, 6]
    assert await queue_position(queues.client, other[4]) == (4, False)
    outbox = Outbox(queues.client)
    remove(outbox, [high[0]])
    assert await outbox.flush()
    await outbox.close()
    assert await queue_position(queues.client, high[0]) is None


async def test_a_job_not_queued_takes_a_slot_or_waits_first_in_line(queues: Queues) -> None:
    jobs = await add(queues, "acme/two", "A", 2)
    assert len(await starts(queues, jobs)) == 2
    later = await add(queues, "acme/two", "B", 1)
    retry = str(uuid.uuid4())
    assert await queues.acquire(retry, "1", TWO) is None  # full: it waits, first in line
    assert await queue_position(queues.client, retry) == (0, False)
    assert await queues.release(jobs[0], TWO) == [(retry, "1")]
    assert (await queues.pick(later[0])) == Taken(retry, "model:acme/two")


async def test_a_cog_model_without_servers_yet_keeps_its_jobs_waiting(queues: Queues) -> None:
    """A DNS name not resolved yet: its jobs wait until the catalog gives the model servers."""
    bare = ModelRoute(name="acme/cog", provider="cog")
    catalog = Catalog([FREE, bare], FREE)
    early = Queues(queues.settings, catalog, queues.client)
    jobs = await add(early, "acme/cog", "A", 1)
    assert await early.pick(jobs[0]) is None
    assert await early.usage([bare]) == {"acme/cog": (0, 0)}
    catalog.replace(Catalog([FREE, COG], FREE))  # the name resolved
    assert isinstance(await early.pick(jobs[0]), Taken)

"""Pausing a model: its jobs stay queued (pending, `paused` in their detail and `queue` events)
until an operator resumes it (`mediagen models pause|resume NAME`).

Postgres keeps which models are paused (`model_pauses`), so a pause outlives Redis; the queues
follow (`mediagen.scheduling`: a start skips a paused model), and the sweeper brings Redis back
in line with Postgres each sweep. A resume sends a start for every job of the model's queue:
the starts a paused model's jobs were given went to other jobs meanwhile.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from mediagen.broker import Outbox
from mediagen.jobs.dispatch import level_start
from mediagen.scheduling import Queues
from mediagen.scheduling.models import ModelPause

log = logging.getLogger(__name__)


async def paused_models() -> set[str]:
    return {str(name) for name in await ModelPause.all().values_list("model", flat=True)}


async def pause(queues: Queues, model: str) -> bool:
    """Pause `model` (a name the catalog routes); False if it already was."""
    _, created = await ModelPause.get_or_create(model=model)
    await queues.set_paused([model], True)
    return created


async def resume(queues: Queues, outbox: Outbox, model: str) -> int | None:
    """Resume `model` and send a start for each of its queued jobs (how many); None if it was
    not paused."""
    deleted = await ModelPause.filter(model=model).delete()
    await queues.set_paused([model], False)
    if not deleted:
        return None
    return await _kick(queues, outbox, model)


async def _kick(queues: Queues, outbox: Outbox, model: str) -> int:
    queued = await queues.queued(model)
    for job_id, level in queued:
        outbox.send(level_start(job_id, level))
    return len(queued)


async def sync(queues: Queues, outbox: Outbox) -> None:
    """Redis's paused models made Postgres's again (the sweeper): a pause Redis lost is set
    again; a resume it missed starts the model's jobs."""
    try:
        wanted, present = await paused_models(), await queues.paused()
        await queues.set_paused(wanted - present, True)
        await queues.set_paused(present - wanted, False)
        for model in present - wanted:
            await _kick(queues, outbox, model)
    except RedisError as exc:  # the next sweep tries again
        log.warning("sweep: paused models not checked: %s", exc)

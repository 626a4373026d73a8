"""Who starts next: every model's queue, fair turns between keys, and slots.

Each model has a queue per priority level in Redis. A key's jobs take turns with other keys'
by weighted fair queueing: a job is queued at turn `max(clock, the key's last turn) + 1/weight`,
where `clock` is the turn of the last job started at its level. So a key that queues 10,000
jobs at once holds turns 1..10,000 of its own, and a key that comes later starts at the clock:
its jobs alternate with the first key's (weight 3: three for one), whatever either has run
before. Inside one key the order is first come, first served; a higher level always goes first.

A start message (`mediagen.jobs.start`) names a job but starts the job whose turn it is among
the models with a free slot (`pick`): a key that queued 10,000 start messages ahead of another
key's still gets only its turns. When the started job is not the one the message named, the
started job's own message is marked `lent` and will start the next in turn, so every queued job
keeps exactly one message in the broker.

Every model may have a concurrency limit (`queues.pools`): a Cog model's servers and their
slots, or a `concurrency` for any other (a Replicate account's limit, say). A job takes a slot
as its turn comes and gives it back when its attempt ends (`release`), which sends the start of
the next jobs that fit; the sweeper does the same for every model, so a lost message costs a
sweep at most. A paused model keeps its jobs queued (`control`).

`queue_position` is the number of jobs of the job's model that start before it as things stand:
exact for the jobs queued now. A key that queues later can take turns ahead of it, at most its
weight per turn the job's own key still has to wait, so the position is an estimate with that
bound, and never counts another model's jobs.
"""

from mediagen.scheduling.queues import (
    ANONYMOUS,
    Entry,
    Queues,
    Taken,
    enqueue,
    level_of,
    model_pool,
    pool_of,
    pools,
    queue_position,
    remove,
    remove_now,
)

__all__ = [
    "ANONYMOUS",
    "Entry",
    "Queues",
    "Taken",
    "enqueue",
    "level_of",
    "model_pool",
    "pool_of",
    "pools",
    "queue_position",
    "remove",
    "remove_now",
]

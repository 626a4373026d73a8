"""`GET /api/v1/jobs/{job_id}/events`: a job's status changes and progress as Server-Sent Events.

The first event is a snapshot of the job from Postgres (`id:` the newest stream entry it
covers); then the job's Redis Stream (`mediagen.jobs.events`) is followed with XREAD BLOCK, so
any API instance serves any job. `Last-Event-ID` resumes after that entry (replaying what the
stream still holds) instead of sending a snapshot; an id the stream no longer covers (trimmed,
expired, unknown) gets a snapshot. The server closes the stream after the terminal event, and
answers a resume of a finished job that has nothing more to say with 204, which tells an
`EventSource` to stop reconnecting.

What the stream sends, and when, is `mediagen.jobs.feed`; this module serves it (`serve`,
shared with the Replicate-compatible stream) and answers the request.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Annotated

import orjson
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message

from mediagen.errors import AuthenticationError
from mediagen.jobs import service
from mediagen.jobs.event_schema import EVENT_SCHEMA, STREAM_DOC
from mediagen.jobs.feed import (
    BLOCK_SECONDS,
    Event,
    JobFeed,
    StreamInfo,
    parse_id,
    resumable,
    stream_end,
)
from mediagen.jobs.models import Job
from mediagen.jobs.router import READ, Reader
from mediagen.jobs.schemas import ErrorResponse
from mediagen.keys.auth import BEARER, identify
from mediagen.keys.models import ApiKey
from mediagen.limits.streams import StreamSlots, blocking_client

log = logging.getLogger(__name__)

PING_SECONDS = 15
SEND_TIMEOUT = 30.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Read streams on a client of their own whose socket timeout outlasts a blocked XREAD; its
    pool holds one connection per open stream (MAX_STREAMS) and a few for the rest."""
    settings = app.state.settings
    app.state.events_redis = blocking_client(
        settings, "mediagen-events", settings.max_streams, BLOCK_SECONDS
    )
    app.state.stream_slots = StreamSlots(
        app.state.events_redis, settings.max_streams_per_key, settings.max_streams
    )
    try:
        yield
    finally:
        await app.state.events_redis.aclose()


router = APIRouter(tags=["jobs"], lifespan=lifespan)


# How a surface writes a job's events: each one as none, one or several events of its own.
Writer = Callable[[Event], Awaitable[Sequence[ServerSentEvent]]]


async def _as_json(event: Event) -> list[ServerSentEvent]:
    """`/api/v1`'s events: the event as it is, its payload as JSON."""
    return [ServerSentEvent(data=orjson.dumps(event.data).decode(), event=event.name, id=event.id)]


async def serve(
    request: Request,
    job: Job,
    owner: ApiKey | None,
    cursor: str | None,
    info: StreamInfo | None,
    allowed: Callable[[], Awaitable[bool]],
    write: Writer,
    logs: bool = False,
    signed: bool = False,
    queue: bool = True,
) -> EventSourceResponse:
    """The events of `job` (after the stream entry `cursor`, else a snapshot first), as
    `write` writes them, while `allowed()` says the caller may see them. The stream takes one
    of `owner`'s places (MAX_STREAMS_PER_KEY: 429; MAX_STREAMS on this server: 503), or, opened
    through a `signed` URL, one of the job's (`limits.streams.SIGNED_PER_JOB`), and frees it
    when the client leaves; it is pinged every PING_SECONDS, and a client that does not read
    for SEND_TIMEOUT is dropped. `queue`: read the pending job's position (`queue` events)."""
    state = request.app.state
    slots: StreamSlots = state.stream_slots
    slot = await (slots.take_signed(job.id) if signed else slots.take(owner))
    feed = JobFeed(job, state.events_redis, state.storage, slot, allowed, logs, queue)

    async def written() -> AsyncIterator[ServerSentEvent]:
        async with contextlib.aclosing(feed.run(cursor, info)) as followed:
            async for event in followed:
                for sent in await write(event):
                    yield sent

    async def closed(_: Message) -> None:  # the client left: free its place at once
        await slot.release()

    return EventSourceResponse(
        written(),
        ping=PING_SECONDS,
        send_timeout=SEND_TIMEOUT,
        client_close_handler_callable=closed,
    )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a job's status and progress (Server-Sent Events)",
    description=STREAM_DOC,
    responses={
        200: {
            "description": "The job's events, until its terminal status.",
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
        },
        204: {"description": "Resumed after the end of a finished job: nothing more to send."},
        **READ,
        429: {
            "model": ErrorResponse,
            "description": "Read rate limit, or MAX_STREAMS_PER_KEY streams already open.",
        },
        503: {"model": ErrorResponse, "description": "MAX_STREAMS open here, or Redis down."},
    },
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    owner: Reader,
    last_event_id: Annotated[
        str | None,
        Header(
            description="Resume after this event id (`EventSource` sends it on reconnect); "
            "`0-0`: the whole history. Anything else gets a snapshot first.",
        ),
    ] = None,
    logs: Annotated[bool, Query(description="Also send the model's logs (`logs` events).")] = False,
) -> Response:
    # The stream's end first, then the row: the snapshot then covers at least every entry up to
    # the id it is sent with (a later one it already reflects is dropped as not newer).
    info = await stream_end(request.app.state.events_redis, job_id)
    job = await service.get_job(job_id, owner)
    if last_event_id is not None and parse_id(last_event_id) is None:
        last_event_id = None  # not one of ours: start afresh
    cursor = last_event_id if last_event_id and info and resumable(last_event_id, info) else None
    if last_event_id and job.status.is_terminal:
        at_end = cursor is not None and info is not None and parse_id(cursor) == parse_id(info.last)
        if info is None or at_end:
            return Response(status_code=204)
    return await serve(request, job, owner, cursor, info, still_allowed(request), _as_json, logs)


def still_allowed(
    request: Request, schemes: Collection[str] = BEARER
) -> Callable[[], Awaitable[bool]]:
    """Whether the caller of this stream may still see it: the caller rule again, on the same
    header (its key not revoked; for an anonymous caller, keys still not required)."""
    state, authorization = request.app.state, request.headers.get("authorization")

    async def allowed() -> bool:
        try:
            await identify(state, authorization, schemes)
        except AuthenticationError:
            return False
        return True

    return allowed

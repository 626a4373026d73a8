"""What every submitted job passes before it is written, whether it comes alone
(`POST /api/v1/generate`, a `/v1` prediction) or as an entry of a batch (`POST /api/v1/batches`),
and what follows once it is.

Before: its model is routed in the catalog (422 if this service does not run it), its inputs
pass its model's rules (422 `validation_error`, each input by the model's own name: the
built-in generator's `GenerationParameters`, defaults filled in; a Cog model's schema where it
is known, `mediagen.catalog.schemas`, and nothing added: the job keeps exactly the caller's
inputs), its priority is within the caller's ceiling (403), its wait before a start is bounded
as it, its key or its model says (`max_queue_seconds`), its webhook is one we can sign and
may call (422), and the input files it names are accepted (`data:` ones stored, uploads
claimed; 422). A refusal about an entry of a batch names it (`jobs[3]: ...`). A refused
submission keeps none of the files it stored, whether a later entry was refused or the insert
found no room within MAX_JOBS_IN_FLIGHT (`Admission.refused`).

After the commit: the starts are published through the process's outbox (`dispatch`); if that
fails the jobs stay accepted and their `dispatched_at` is cleared in the background, so the
sweeper dispatches them after DISPATCH_GRACE. `settle` waits for that work at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

from pydantic import ValidationError

from mediagen.batches.repository import NewJob
from mediagen.broker import Outbox
from mediagen.catalog import Catalog, ModelRoute
from mediagen.catalog.listing import InputSchemas
from mediagen.catalog.schemas import Problem, model_inputs, problems
from mediagen.config import Settings
from mediagen.errors import InputValidationError, MediagenError, RateLimitedError
from mediagen.errors_http import describe
from mediagen.files import inputs
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import dispatch as dispatch_jobs
from mediagen.jobs.dispatch import entry
from mediagen.jobs.parameters import GenerationParameters
from mediagen.jobs.priority import check_priority
from mediagen.jobs.schemas import GenerateRequest
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owner_id
from mediagen.limits import rates as quotas
from mediagen.notify import service as notify

log = logging.getLogger(__name__)
_background: set[asyncio.Task[None]] = set()


class Admission:
    """The checks of one submission by `owner`: a single job's, or a batch's (`batch=True`:
    its refusals name the entry, and its in-flight refusal speaks of the batch). Each webhook
    URL is checked once per submission. `schemas`: where Cog models' input schemas are found
    (without it, only the models file's); `field`: what the surface calls a job's inputs
    (`parameters`, or `/v1`'s `input`), for the refusals; `file_urls`: the URL prefixes under
    which the surface names uploads (`mediagen.files.inputs.by_url`)."""

    def __init__(
        self,
        settings: Settings,
        owner: ApiKey | None,
        catalog: Catalog,
        batch: bool = False,
        schemas: InputSchemas | None = None,
        field: str = "parameters",
        file_urls: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.catalog = catalog
        self.batch = batch
        self.schemas = schemas
        self.field = field
        self.file_urls = file_urls
        self._checked: set[str] = set()

    async def webhook(self, url: str) -> None:
        """Refuse (422) a webhook we could not sign or must not call."""
        if url not in self._checked:
            await notify.check_webhook(url, self.settings, self.owner)
            self._checked.add(url)

    async def job(
        self, request: GenerateRequest, index: int = 0, job_id: uuid.UUID | None = None
    ) -> NewJob:
        """The job `request` asks for (entry `index` of a batch), once its model, priority and
        webhook passed, as the inserts write it (under `job_id`, or a new id); nothing is
        stored yet."""
        with self._entry(index):
            route = self.catalog.route(request.model)
            parameters = await self._parameters(route, request, index)
            check_priority(request.priority, self.owner, self.settings)
            if request.webhook is not None:
                await self.webhook(request.webhook)
        return NewJob(
            id=job_id or uuid.uuid4(),
            prompt=request.prompt,
            parameters=parameters,
            model=self.catalog.job_model(route, request.model),
            provider=route.provider,
            priority=str(request.priority),
            retention_seconds=request.retention,
            webhook=request.webhook,
            webhook_events=request.webhook_events_filter if request.webhook else (),
            max_queue_seconds=max_queue_seconds(request, self.owner, route, self.settings),
        )

    async def _parameters(
        self, route: ModelRoute, request: GenerateRequest, index: int
    ) -> dict[str, Any]:
        """The parameters a job on `route` keeps, once they passed its model's rules: the
        built-in generator's (and a Replicate model's) with their defaults; a Cog model's
        exactly as given, checked against its schema where one is known."""
        if route.provider != "cog":
            try:
                checked = GenerationParameters.model_validate(request.parameters)
            except ValidationError as exc:
                found = [Problem(tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]
                raise self._invalid(found, index) from None
            return checked.model_dump(exclude_none=True)
        if self.schemas is not None:
            schema = await self.schemas.of(route)
        else:
            schema = route.input_schema
        if schema is not None:
            given = model_inputs(schema, request.prompt, request.parameters)
            if self.field == "input" and request.prompt:  # `input.prompt` is one of the inputs
                given["prompt"] = request.prompt
            found = problems(schema, given)
            if found:
                raise self._invalid(found, index)
        return dict(request.parameters)

    def _invalid(self, found: list[Problem], index: int) -> InputValidationError:
        """The 422 of inputs the model refuses: each where the request has it (the prompt at
        the top level of a job, the rest under `self.field`)."""
        where = [
            p.loc
            if self.field == "parameters" and p.loc[:1] == ("prompt",)
            else (self.field, *p.loc)
            for p in found
        ]
        body: tuple[str | int, ...] = ("body", "jobs", index) if self.batch else ("body",)
        errors = [
            {"loc": [*body, *loc], "msg": p.msg, "type": p.type}
            for p, loc in zip(found, where, strict=True)
        ]
        detail = describe({"loc": loc, "msg": p.msg} for p, loc in zip(found, where, strict=True))
        return InputValidationError(detail, errors=errors)

    async def inputs(self, jobs: list[NewJob]) -> list[NewJob]:
        """`jobs` with the input files they name accepted (their `data:` values changed in
        place into the files they were stored as), all or none: last, since it may store files.
        Costs nothing for jobs without inputs."""
        owner = owner_id(self.owner)
        accepted = list(jobs)
        try:
            for index, job in enumerate(jobs):
                with self._entry(index):
                    files = await inputs.accept(
                        job.parameters, job.id, owner, self.settings, self.file_urls
                    )
                if files:
                    accepted[index] = dataclasses.replace(job, input_files=files)
        except BaseException:
            await self.discard(accepted)  # the entries before the refused one stored theirs
            raise
        return accepted

    async def discard(self, jobs: Sequence[NewJob]) -> None:
        """The input files stored for jobs that will not be written."""
        for job in jobs:
            await inputs.discard(job.id, job.parameters, job.input_files)

    async def refused(self, jobs: Sequence[NewJob]) -> RateLimitedError:
        """The insert found no room within MAX_JOBS_IN_FLIGHT: the files stored for `jobs` are
        discarded, and this is the answer (429)."""
        await self.discard(jobs)
        return quotas.in_flight_exceeded(self.settings, len(jobs) if self.batch else None)

    def _entry(self, index: int) -> contextlib.AbstractContextManager[None]:
        """Where a refusal about entry `index` of a batch is named (`jobs[3]: ...`)."""
        return _named(index) if self.batch else contextlib.nullcontext()


def max_queue_seconds(
    request: GenerateRequest, owner: ApiKey | None, route: ModelRoute, settings: Settings
) -> int | None:
    """How long a job may wait to start: its own `max_queue_seconds`, else its key's default,
    else its model's, else MAX_QUEUE_SECONDS; None (0): as long as JOB_TIMEOUT allows."""
    for seconds in (
        request.max_queue_seconds,
        owner.max_queue_seconds if owner is not None else None,
        route.max_queue_seconds,
    ):
        if seconds is not None:
            return seconds
    return settings.max_queue_seconds or None


@contextlib.contextmanager
def _named(index: int) -> Iterator[None]:
    try:
        yield
    except MediagenError as exc:
        exc.message = f"jobs[{index}]: {exc.message}"
        exc.args = (exc.message,)
        raise


def dispatch(
    outbox: Outbox, jobs: Sequence[NewJob], owner: ApiKey | None, catalog: Catalog, what: str
) -> None:
    """Queue and publish the starts of jobs just committed, in the turns of `owner` (at its
    weight, `mediagen.scheduling`); if that fails they stay accepted, and the sweeper
    dispatches them after DISPATCH_GRACE. `what` names them in the log."""
    key = owner.id if owner is not None else None
    weight = owner.weight if owner is not None else 1
    entries = [
        entry(job.id, catalog.for_job(job.provider, job.model).name, job.priority, key, weight)
        for job in jobs
    ]
    done = dispatch_jobs(outbox, entries)
    ids = [job.id for job in jobs]

    def published(future: asyncio.Future[bool]) -> None:
        if not future.result():
            _undispatched(ids, what)

    if done is not None:
        done.add_done_callback(published)


def _undispatched(job_ids: list[uuid.UUID], what: str) -> None:
    """The starts were not published: let the sweeper dispatch the jobs after DISPATCH_GRACE."""

    async def clear() -> None:
        try:
            await repo.clear_dispatched(job_ids)
        except Exception as exc:  # they are still dispatched, a lease later
            log.warning("%s: dispatch not reset: %s", what, exc)

    in_background(clear())


def in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on the running loop after the answer, held until it is done (`settle`)."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def settle() -> None:
    """Wait for the background work still running (at shutdown, before the pool closes)."""
    if _background:
        await asyncio.gather(*_background, return_exceptions=True)

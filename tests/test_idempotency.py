"""An Idempotency-Key whose first request's process died between its claim and its answer
(SIGKILL, host lost), on POST /generate and POST /batches, against the in-process application
and the session's Postgres.

The dead process is played by committing exactly what it would have: the claim row (reserving
the id of what it creates) and, in some tests, the job or batch created through the service
under that id; then nothing more. Its age is then set past (or not past) the limit after which
a claim is taken for abandoned."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from mediagen.batches import service as batches_service
from mediagen.batches.models import Batch
from mediagen.batches.schemas import BatchRequest
from mediagen.idempotency import CLAIM_ABANDONED_AFTER, IdempotencyRecord, fingerprint
from mediagen.jobs import service as jobs_service
from mediagen.jobs.models import Job
from mediagen.jobs.repository import now
from mediagen.jobs.schemas import GenerateRequest
from mediagen.keys.models import ApiKey
from tests.stack import InProcess, create_key

FAST = {"width": 64, "height": 64}


@dataclass
class Endpoint:
    path: str
    scope: str  # the prefix of its claims' scope
    request: type[BaseModel]
    model: Any  # what it creates: Job or Batch

    def body(self) -> dict[str, Any]:
        tag = uuid.uuid4().hex
        if self.model is Job:
            return {"prompt": f"a lost {tag}", "parameters": FAST}
        return {"jobs": [{"prompt": f"a lost {tag} #{i}", "parameters": FAST} for i in range(2)]}

    def created_id(self, answer: dict[str, Any]) -> str:
        return str(answer["job_id"] if self.model is Job else answer["id"])

    async def create(self, app: InProcess, body: dict[str, Any], owner: ApiKey,
                     resource_id: uuid.UUID) -> None:
        """What the dead request's process did after its claim: the creation, by the service."""
        state = app.app.state
        args = (state.settings, state.outbox, owner, state.catalog)
        if self.model is Job:
            await jobs_service.create_job(GenerateRequest.model_validate(body), *args,
                                          schemas=state.input_schemas, job_id=resource_id)
        else:
            await batches_service.create_batch(BatchRequest.model_validate(body), *args,
                                               schemas=state.input_schemas, batch_id=resource_id)

    async def count(self, owner: ApiKey) -> int:
        return int(await self.model.filter(api_key_id=owner.id).count())


ENDPOINTS = [
    Endpoint("/api/v1/generate", "", GenerateRequest, Job),
    Endpoint("/api/v1/batches", "batches:", BatchRequest, Batch),
]


@pytest.fixture(params=ENDPOINTS, ids=["generate", "batches"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    return request.param  # type: ignore[no-any-return]


@dataclass
class Caller:
    key: ApiKey
    http: httpx.AsyncClient

    async def post(self, endpoint: Endpoint, body: dict[str, Any],
                   idempotency_key: str) -> httpx.Response:
        return await self.http.post(endpoint.path, json=body,
                                    headers={"Idempotency-Key": idempotency_key})


@pytest.fixture
async def caller(client: httpx.AsyncClient) -> Caller:
    key, secret = await create_key(f"idem-{uuid.uuid4().hex[:8]}")
    client.headers["Authorization"] = f"Bearer {secret}"
    return Caller(key, client)


async def _abandon(endpoint: Endpoint, owner: ApiKey, idempotency_key: str,
                   body: dict[str, Any], age: timedelta,
                   resource_id: uuid.UUID | None = None) -> uuid.UUID:
    """The claim row a request's process committed before it died, `age` old: what
    `idempotency.claim` writes. `resource_id` None: a claim written before claims reserved
    an id."""
    reserved = uuid.uuid4()
    await IdempotencyRecord.create(
        id=uuid.uuid4(), scope=endpoint.scope + str(owner.id), key=idempotency_key,
        request_hash=fingerprint(endpoint.request.model_validate(body).model_dump(mode="json")),
        resource_id=reserved if resource_id is None else resource_id,
    )
    await IdempotencyRecord.filter(key=idempotency_key).update(created_at=now() - age)
    return reserved


STALE = CLAIM_ABANDONED_AFTER + timedelta(seconds=5)


async def test_a_retry_after_the_limit_gets_what_the_dead_request_created(
    endpoint: Endpoint, caller: Caller, in_process: InProcess
) -> None:
    body, key = endpoint.body(), f"dead-{uuid.uuid4()}"
    reserved = await _abandon(endpoint, caller.key, key, body, STALE)
    await endpoint.create(in_process, body, caller.key, reserved)

    retry = await caller.post(endpoint, body, key)
    assert retry.status_code == 201, retry.text
    assert retry.headers.get("idempotent-replayed") == "true"
    assert endpoint.created_id(retry.json()) == str(reserved)
    assert await endpoint.count(caller.key) == 1  # nothing created again
    # The claim now holds the answer: a later retry replays it at once.
    again = await caller.post(endpoint, body, key)
    assert again.status_code == 201 and again.json() == retry.json()
    assert again.headers.get("idempotent-replayed") == "true"


async def test_a_retry_after_the_limit_creates_what_the_dead_request_did_not(
    endpoint: Endpoint, caller: Caller
) -> None:
    body, key = endpoint.body(), f"dead-{uuid.uuid4()}"
    await _abandon(endpoint, caller.key, key, body, STALE)

    retry = await caller.post(endpoint, body, key)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert await endpoint.count(caller.key) == 1
    again = await caller.post(endpoint, body, key)
    assert again.status_code == 201 and again.json() == retry.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert await endpoint.count(caller.key) == 1


async def test_a_claim_from_before_reserved_ids_is_taken_over_after_the_limit(
    caller: Caller,
) -> None:
    endpoint = ENDPOINTS[0]
    body, key = endpoint.body(), f"old-{uuid.uuid4()}"
    await _abandon(endpoint, caller.key, key, body, STALE)
    await IdempotencyRecord.filter(key=key).update(resource_id=None)

    retry = await caller.post(endpoint, body, key)
    assert retry.status_code == 201, retry.text
    assert await endpoint.count(caller.key) == 1


async def test_a_retry_before_the_limit_is_still_a_twin_in_progress(
    endpoint: Endpoint, caller: Caller, in_process: InProcess
) -> None:
    body, key = endpoint.body(), f"busy-{uuid.uuid4()}"
    young = CLAIM_ABANDONED_AFTER - timedelta(seconds=30)
    reserved = await _abandon(endpoint, caller.key, key, body, young)
    await endpoint.create(in_process, body, caller.key, reserved)

    retry = await caller.post(endpoint, body, key)
    assert retry.status_code == 409, retry.text
    assert "still being processed" in retry.json()["detail"]
    assert await endpoint.count(caller.key) == 1


@pytest.mark.parametrize("created", [False, True], ids=["nothing-created", "created"])
async def test_concurrent_retries_of_an_abandoned_claim_make_one(
    endpoint: Endpoint, caller: Caller, in_process: InProcess, created: bool
) -> None:
    body, key = endpoint.body(), f"race-{uuid.uuid4()}"
    reserved = await _abandon(endpoint, caller.key, key, body, STALE)
    if created:
        await endpoint.create(in_process, body, caller.key, reserved)

    retries = await asyncio.gather(*(caller.post(endpoint, body, key) for _ in range(4)))
    assert {r.status_code for r in retries} <= {201, 409}, [r.text for r in retries]
    answered = {endpoint.created_id(r.json()) for r in retries if r.status_code == 201}
    assert len(answered) == 1
    if created:
        assert answered == {str(reserved)}
    else:  # exactly one of them created, whatever the others answered
        assert sum("idempotent-replayed" not in r.headers for r in retries
                   if r.status_code == 201) == 1
    assert await endpoint.count(caller.key) == 1

"""The body of a prediction's webhook: the prediction object, as Replicate sends it.

Built when the delivery is sent, from the job row (its outputs' URLs are signed then), showing
the state the event announced; signed as every client webhook is (Standard Webhooks with the
key's `whsec_` secret: what `replicate.webhooks.validate` and `validateWebhook` check). The
worker has its deliveries use it for jobs of this SURFACE (`mediagen.notify.delivery.Bodies`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from mediagen.base_url import public_root
from mediagen.catalog import get_catalog
from mediagen.config import Settings
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.replicate_api.predictions import as_json, prediction_of
from mediagen.storage.base import Storage

SURFACE = "replicate"  # the `surface` of jobs made through `/v1`: their deliveries use `body`


async def body(
    job_id: uuid.UUID, payload: dict[str, Any], storage: Storage, settings: Settings
) -> str:
    """The prediction as of the delivery's event (`payload`, written with the transition)."""
    job = await Job.get(id=job_id)
    base = (job.surface_base or public_root(settings)).rstrip("/")
    status = JobStatus(payload["status"]) if payload.get("status") else None
    prediction = await prediction_of(job, storage, base, get_catalog().default.name, status=status)
    return json.dumps(as_json(prediction), separators=(",", ":"))

"""The names of Cog predictions and the tokens of their webhooks and uploads.

A job's attempt has one Cog id, `mg-<job hex>-<attempt>`: the same for every PUT of it, so a
repeated create starts nothing. `jobs.prediction_id` keeps it with where and when it was made
(`Handle`). Cog signs no webhook, so the URL it is given carries a token: HMAC-SHA256 of the id
under the deployment's key, good for that prediction only, checked in constant time.

Uploads (`--upload-url`) go to one URL per server, fixed when the server starts; the only thing
of the prediction's own that a Cog server sends with them is the prediction's id
(`X-Prediction-ID`). So the id the server is given (`given_id`) is the Cog id followed by the
prediction's upload token (another HMAC of the id, under the same key for another purpose):
only the server that runs a prediction can upload its outputs, and no storage is needed to
check it. The Cog id stays what mediagen knows the prediction by (records, staging, webhook
URLs); the token never leaves the server's request and our check.

Apart from the provider because the API's webhook routes and the pipeline's slot accounting
use them too.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from mediagen.base_url import public_root
from mediagen.config import Settings
from mediagen.signing import deployment_key, matches, sign

_COG_ID = re.compile(r"^mg-([0-9a-f]{32})-([1-9][0-9]{0,8})$")
_HANDLE = re.compile(r"^(mg-[0-9a-f]{32}-[1-9][0-9]{0,8})\.([0-9a-f]{10})\.([0-9]{1,16})$")
_KEY_ROW = "cog-webhook-secret"
_GIVEN_SEPARATOR = "."  # never in a Cog id


def cog_id(job_id: str | uuid.UUID, attempt: int) -> str:
    """The id a job's attempt has on the Cog server: the same for every PUT of that attempt."""
    return f"mg-{uuid.UUID(str(job_id)).hex}-{attempt}"


def parse_cog_id(value: str) -> tuple[uuid.UUID, int] | None:
    """(job id, attempt) of a Cog id we made; None for anything else."""
    match = _COG_ID.match(value)
    return None if match is None else (uuid.UUID(match.group(1)), int(match.group(2)))


def endpoint_key(url: str) -> str:
    """A short, stable name of an endpoint (its URL stays out of the job's public fields)."""
    return hashlib.sha256(url.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Handle:
    """What `jobs.prediction_id` holds for a Cog prediction."""

    cog_id: str
    endpoint: str  # endpoint_key of the server that took it
    created_ms: int

    def __str__(self) -> str:
        return f"{self.cog_id}.{self.endpoint}.{self.created_ms}"

    @classmethod
    def parse(cls, value: str) -> Handle | None:
        match = _HANDLE.match(value)
        if match is None:
            return None
        return cls(match.group(1), match.group(2), int(match.group(3)))


async def webhook_key(settings: Settings) -> bytes:
    """The deployment's key for webhook and upload tokens: COG_WEBHOOK_SECRET, else the
    deployment's own (`mediagen.signing`), so API and workers agree."""
    return await deployment_key(_KEY_ROW, settings.cog_webhook_secret.get_secret_value())


def webhook_token(key: bytes, prediction: str) -> str:
    """The token of one prediction's webhook URL (43 url-safe characters)."""
    return sign(key, b"cog-webhook\n" + prediction.encode())


def token_matches(key: bytes, prediction: str, token: str) -> bool:
    """Whether `token` is the token of `prediction`, in constant time."""
    return matches(token, webhook_token(key, prediction))


def upload_token(key: bytes, prediction: str) -> str:
    """The token of one prediction's uploads (43 url-safe characters)."""
    return sign(key, b"cog-upload\n" + prediction.encode())


def given_id(key: bytes, prediction: str) -> str:
    """The id a Cog server is given for `prediction`: the Cog id and its upload token, which
    the server sends back as `X-Prediction-ID` with each upload (and as the `id` of its
    webhooks' bodies)."""
    return f"{prediction}{_GIVEN_SEPARATOR}{upload_token(key, prediction)}"


def cog_id_of(given: str) -> str:
    """The Cog id in an id a server was given (`given_id`), or in a bare Cog id."""
    return given.partition(_GIVEN_SEPARATOR)[0]


def uploading(key: bytes, given: str) -> str | None:
    """The Cog id whose uploads `given` (an `X-Prediction-ID`) may make: when it is the id that
    prediction's server was given, its token checked in constant time; None for anything else
    (a bare Cog id, a token of another prediction or of another deployment)."""
    prediction, separator, token = given.partition(_GIVEN_SEPARATOR)
    if not separator or parse_cog_id(prediction) is None:
        return None
    return prediction if matches(token, upload_token(key, prediction)) else None


def webhook_url(settings: Settings, key: bytes, prediction: str) -> str:
    base = public_root(settings)
    return f"{base}/api/v1/webhooks/cog/{prediction}/{webhook_token(key, prediction)}"

"""mediagen's Python client: submit, follow, download (sync and async; stdlib + httpx only).

    from mediagen.client import Client

    with Client() as client:  # $MEDIAGEN_URL, $MEDIAGEN_API_KEY
        [png] = client.run("a red fox", width=512, height=512)  # the output's bytes
        print(client.run("a red fox", save_to="out", logs=True))  # saved; logs on stderr

        job = client.generate("a red fox", width=512, height=512)  # step by step
        job = job.wait(progress=lambda event, data: print(event, data))
        print(job.download("out"))

``AsyncClient`` has the same methods as coroutines (``list`` an async iterator). Errors:
:mod:`mediagen.client._errors`.
"""

from mediagen.client._async import AsyncClient
from mediagen.client._errors import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    MediagenError,
    NotFoundError,
    RateLimitedError,
    ServiceUnavailableError,
    ValidationError,
)
from mediagen.client._logs import LogCallback
from mediagen.client._models import (
    Job,
    JobFailedError,
    Metrics,
    Model,
    Output,
    Progress,
    ProgressCallback,
)
from mediagen.client._sync import Client

__all__ = [
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Job",
    "JobFailedError",
    "LogCallback",
    "MediagenError",
    "Metrics",
    "Model",
    "NotFoundError",
    "Output",
    "Progress",
    "ProgressCallback",
    "RateLimitedError",
    "ServiceUnavailableError",
    "ValidationError",
]

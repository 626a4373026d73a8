"""Staged Cog outputs that nobody will use, swept away (the sweeper's share, through
`CogCapacity.sweep`).

An output is staged for its prediction (a webhook's data: URI decoded, or an upload) until the
job completes and moves it to the job's own keys. The paths that know of a staged object
delete it when it will not be used (a failed or duplicate completion, a job that ended while
its outputs were staged). What no path knows of stays: an upload whose prediction never sent
its completion (its server died, the job was canceled or timed out first), a crash between
staging and recording. So every sweep lists the staging area (SCAN objects at most) and
deletes what belongs to a prediction that is not the running attempt of an unfinished job
(the job ended, moved on to another attempt, or is gone), and whatever is older than
JOB_TIMEOUT (no job runs that long), whatever its name. On local storage it also removes the
prediction folders left empty.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from mediagen.config import Settings
from mediagen.errors import StorageError
from mediagen.jobs.models import Job
from mediagen.jobs.states import UNFINISHED
from mediagen.providers.cog.ids import cog_id, parse_cog_id
from mediagen.providers.cog.outputs import staging_prefix
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage

log = logging.getLogger(__name__)

SCAN = 1000  # staged objects looked at per sweep
EMPTY_FOLDER_AGE = 60.0  # a prediction's folder left empty this long goes (local storage)


async def sweep_staged(storage: Storage, settings: Settings, limit: int = SCAN) -> int:
    """Delete the staged objects no job will use; how many went."""
    prefix = staging_prefix(storage)
    listed = await storage.listing(prefix, limit)
    now = time.time()
    jobs = {parsed[0] for key, _ in listed if (parsed := parse_cog_id(_prediction(prefix, key)))}
    running: set[str] = set()
    if jobs:
        rows = await Job.filter(id__in=jobs, status__in=UNFINISHED).values("id", "attempt")
        running = {cog_id(row["id"], row["attempt"]) for row in rows}
    unused = [
        key
        for key, written in listed
        if _prediction(prefix, key) not in running or now - written > settings.job_timeout
    ]
    deleted = 0
    for key in unused:
        try:
            await storage.delete(key)
            deleted += 1
        except StorageError as exc:  # the next sweep tries again
            log.warning("staged output %s not deleted: %s", key, exc)
    if isinstance(storage, LocalStorage):
        folder = storage.path_for(prefix.rstrip("/"))
        await asyncio.to_thread(_drop_empty_folders, folder, now - EMPTY_FOLDER_AGE)
    if deleted:
        log.info("sweep: %d staged Cog output(s) nobody will use deleted", deleted)
    return deleted


def _prediction(prefix: str, key: str) -> str:
    """The prediction a staged key belongs to (the first folder under the staging prefix)."""
    return key[len(prefix) :].partition("/")[0]


def _drop_empty_folders(folder: Path, before: float) -> None:
    """Remove the empty folders directly in `folder` not changed since `before` (a folder
    that an upload is being written to right now is never one of them)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < before:
                os.rmdir(entry.path)  # refuses a folder that is not empty
        except OSError:
            continue

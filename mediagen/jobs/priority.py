"""Who may ask for which job priority, and where a job's priority puts it in the queues.

A key's ceiling is `api_keys.max_priority` (NULL: the DEFAULT_MAX_PRIORITY setting, which is
also the ceiling of callers without a key). The check needs no query: the key row is already in
hand (authentication, `mediagen.keys.cache`), so a changed ceiling applies once the API
processes drop their cached keys (at once over Redis, KEY_CACHE_SECONDS at the latest).

Dispatch uses kombu's own Redis priorities: a job's start task goes to the sub-list of the
`mediagen` queue for its priority (`mediagen`, `mediagen\\x06\\x163`, `mediagen\\x06\\x166`) and
a worker's BRPOP names the lists most urgent first (kombu priority 0 is consumed first).
"""

from __future__ import annotations

from mediagen.config import Settings
from mediagen.errors import PriorityNotAllowedError
from mediagen.jobs.states import Priority
from mediagen.keys.models import ApiKey


def ceiling(owner: ApiKey | None, settings: Settings) -> Priority:
    """The highest priority `owner` may ask for."""
    return Priority(
        owner.max_priority if owner and owner.max_priority else settings.default_max_priority
    )


def check_priority(requested: Priority, owner: ApiKey | None, settings: Settings) -> None:
    """Refuse (403) a priority above the caller's ceiling; before anything is written."""
    allowed = ceiling(owner, settings)
    if requested.rank > allowed.rank:
        raise PriorityNotAllowedError(
            f"this key may ask for priority up to {allowed}",
            requested=str(requested),
            max_priority=str(allowed),
        )


# kombu's Redis transport serves priority 0 first; a message goes to the list of the highest
# step at or below its priority (`mediagen.broker.PRIORITY_STEPS`: 0, 3, 6, 9). Normal starts
# share their list with every other step (polls, retries), in order, as before priorities: a
# burst of starts is not held back behind the polls of running jobs, nor the other way round.
# High starts come before all of them (with Celery's own messages, the sweep), low after.
KOMBU_PRIORITY = {Priority.HIGH: 0, Priority.NORMAL: 3, Priority.LOW: 6}


def kombu_priority(priority: Priority | str | None) -> int:
    """The kombu message priority of a job's start task (normal when unknown)."""
    return KOMBU_PRIORITY[Priority(priority)] if priority else KOMBU_PRIORITY[Priority.NORMAL]

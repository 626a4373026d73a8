"""The job states, as the server names them (``mediagen.jobs.states``): copied, because the
client is installed without the server. ``tests/client/test_states.py`` holds them to it.

The one list of states on the client's side: everything else asks these.
"""

from __future__ import annotations

# Every state, in the server's order (the order ``mediagen jobs list --status`` offers them).
STATUSES = ("pending", "processing", "retrying", "completed", "failed", "canceled", "expired")

# The finished states: nothing leaves them, so a wait ends there. ``expired`` is a job that
# completed and whose outputs were deleted since, when their retention ended.
TERMINAL = frozenset({"completed", "failed", "canceled", "expired"})

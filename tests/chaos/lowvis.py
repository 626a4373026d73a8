"""mediagen's Celery app with a tiny Redis visibility timeout, for S8: `celery -A
tests.chaos.lowvis worker ...`.

mediagen/worker.py fixes `visibility_timeout` at `max(3600, RETRY_MAX_DELAY * 2)`, so no setting
can lower it. Here it is overridden (same app, same tasks) to CHAOS_VISIBILITY_TIMEOUT seconds
(default 2), and kombu's restore sweep runs every second: any message a worker holds longer
than that (a countdown poll, a slow step) is put back in the queue and delivered again while the
first delivery still runs, which is exactly the duplicate the guarded transitions must absorb.
"""

from __future__ import annotations

import os

from mediagen.worker import celery_app

VISIBILITY_TIMEOUT = float(os.environ.get("CHAOS_VISIBILITY_TIMEOUT", "2"))

celery_app.conf.broker_transport_options = {
    **celery_app.conf.broker_transport_options,
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
app = celery_app

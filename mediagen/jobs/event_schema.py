"""What `GET /api/v1/jobs/{job_id}/events` sends, as its OpenAPI description says it (served by
`mediagen.jobs.live`): the kinds of event and the JSON each carries."""

from __future__ import annotations

from typing import Any

from mediagen.jobs.states import JobStatus

STREAM_DOC = """\
`text/event-stream`. Each event has an `id:` (resume with `Last-Event-ID`) and JSON `data:`:

- `event: status` - `{job_id, status, retry_count, error, error_code, attempts, result_url,
  output}` (`error_code`: `queue_timeout` for a job that waited too long to start, else null;
  `result_url` once completed; `output`: what the model returned, as in the job's detail). The
  first event is the job's current state (after its logs, if asked for).
- `event: output` - `{job_id, attempt, output, offset}` while a model streams its output:
  `output` is a list of chunks new to you, the first being chunk number `offset` (from 0) of
  that attempt's output. Appended in order they are the output so far; a new attempt starts
  again at 0. The final value comes with the `completed` status.
- `event: progress` - `{current, total, percent}` while the prediction reports progress.
- `event: queue` - `{job_id, queue_position, paused}` while the job is pending: how many jobs
  are ahead of it (as `queue_position` in its detail) and whether its model is paused, sent when
  either changed, at most once a second.
- `event: logs` (with `?logs=true`) - `{job_id, logs, offset}`: text the model's logs gained,
  starting at byte `offset` (UTF-8) of the job's log; the log so far comes first, before the
  current state. Appended in order they are the log; an `offset` past what you have means that
  much was omitted (the job keeps JOB_LOGS_MAX_BYTES).

The server closes the stream after the terminal status (completed, failed, canceled)."""


def json_data(schema: dict[str, Any]) -> dict[str, Any]:
    """An event's `data:` that is JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return sse_event(kind, json_data(data))


def sse_event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """One kind of event, its `data:` as `data` says (also the Replicate stream's events)."""
    return {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"const": kind},
            "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            "data": data,
        },
    }


_NULLABLE_STRING = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
# One event, as OpenAPI before 3.2 describes an event stream (`schema` is each event).
EVENT_SCHEMA = {
    "oneOf": [
        _event(
            "status",
            {
                "type": "object",
                "required": [
                    "job_id",
                    "status",
                    "retry_count",
                    "error",
                    "error_code",
                    "attempts",
                    "result_url",
                    "output",
                ],
                "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": [str(s) for s in JobStatus]},
                    "retry_count": _COUNT,
                    "error": _NULLABLE_STRING,
                    "error_code": _NULLABLE_STRING,
                    "attempts": _COUNT,
                    "result_url": _NULLABLE_STRING,
                    "output": {"description": "What the model returned (any JSON)."},
                },
            },
        ),
        _event(
            "progress",
            {
                "type": "object",
                "required": ["current", "total", "percent"],
                "properties": {"current": _COUNT, "total": _COUNT, "percent": _COUNT},
            },
        ),
        _event(
            "logs",
            {
                "type": "object",
                "required": ["job_id", "logs", "offset"],
                "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "logs": {"type": "string"},
                    "offset": _COUNT,
                },
            },
        ),
        _event(
            "output",
            {
                "type": "object",
                "required": ["job_id", "attempt", "output", "offset"],
                "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "attempt": _COUNT,
                    "output": {"type": "array", "description": "Chunks new to you."},
                    "offset": _COUNT,
                },
            },
        ),
        _event(
            "queue",
            {
                "type": "object",
                "required": ["job_id", "queue_position", "paused"],
                "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "queue_position": _COUNT,
                    "paused": {"type": "boolean", "description": "Its model is paused."},
                },
            },
        ),
    ]
}

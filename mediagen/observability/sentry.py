"""Error tracking with Sentry: the API's and the workers' exceptions, each tagged with the
request id and the job id in force (`observability.context`). Off unless SENTRY_DSN is set;
off, nothing is imported and nothing is patched. sentry-sdk is the extra `mediagen[sentry]`:
with SENTRY_DSN set and the SDK missing, `configure` says so in one line and the process runs
without it (`mediagen api|worker|beat|run` refuse to start instead).

What is reported: an API request answered 500 (an unexpected exception, or one of ours that
means a 500, such as storage refusing a write: `errors_http` calls `capture`), an exception a
worker's task raised, and every ERROR log line (Sentry's logging integration; lower lines
travel with an event as its breadcrumbs). A 503 for a dependency that is down is not: health
and metrics report outages.

What an event never holds, whatever LOG_PROMPTS says:
- a request's body (the prompt, the parameters) or any header but a few harmless ones
  (`redaction.recorded_headers`: never Authorization, a signature or a cookie);
- the secrets of a request's path and query (`redaction.secrets_of`), or the query of a call
  we made (`redaction.bare`);
- a frame's local variables (they hold prompts, parameters and keys);
- a value under a field name that can hold a prompt or a credential (`logs.SENSITIVE`, on
  top of sentry-sdk's own list), in breadcrumbs, extra data and contexts;
- the command line of the process.
No trace context goes out with our requests (`trace_propagation_targets`): that is
`observability.tracing`'s to decide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from mediagen import __version__, extras
from mediagen.config import Settings
from mediagen.observability import context
from mediagen.observability.logs import SENSITIVE
from mediagen.observability.redaction import bare, recorded_headers, redact, secrets_of

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

log = logging.getLogger(__name__)

Role = Literal["api", "worker"]
# The tags an event carries the ids under (and the context variables they come from).
TAGS = (("request_id", context.request_id), ("job_id", context.job_id))

_configured_in: int | None = None  # the pid that ran configure (a forked child inherits it)


def configure(settings: Settings, role: Role) -> bool:
    """Report this process's errors to SENTRY_DSN, if it is set; True when on. Once per
    process (a forked child keeps its parent's set-up: the SDK restarts its sending thread)."""
    global _configured_in
    if not settings.sentry_dsn:
        return False
    if _configured_in is not None:
        return True
    absent = extras.missing("sentry")
    if absent:
        error = extras.MissingExtraError(
            "sentry", "error tracking (SENTRY_DSN)", absent, alternative="unset SENTRY_DSN"
        )
        log.error("%s; errors are not reported", error)
        return False
    _init(settings, role)
    _configured_in = os.getpid()
    return True


def _init(settings: Settings, role: Role) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.argv import ArgvIntegration
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    tracing = settings.sentry_traces_sample_rate > 0
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        release=f"mediagen@{__version__}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        event_scrubber=EventScrubber(
            denylist=sorted({*DEFAULT_DENYLIST, *SENSITIVE}), recursive=True
        ),
        before_send=scrub,
        before_send_transaction=scrub,
        before_breadcrumb=scrub_breadcrumb,
        trace_propagation_targets=[],
        # Only the integrations below (and the SDK's defaults: logging, exceptions leaving a
        # thread, ...): the auto-enabled ones record commands and URLs we would have to scrub.
        auto_enabling_integrations=False,
        integrations=[
            # Which answers are reported is `errors_http`'s to say (`capture`): its fast
            # paths answer outside the handlers these integrations watch.
            StarletteIntegration(failed_request_status_codes=set()),
            FastApiIntegration(failed_request_status_codes=set()),
            CeleryIntegration(propagate_traces=tracing),
        ],
        disabled_integrations=[ArgvIntegration()],
    )
    sentry_sdk.set_tag("service", f"mediagen-{role}")


def capture(exc: BaseException) -> None:
    """Report `exc`, if error tracking is on: an error the API answered 500
    (`errors_http`, the one place that decides what is a 500)."""
    if _configured_in is not None:
        import sentry_sdk

        sentry_sdk.capture_exception(exc)


def scrub(event: Event, _: Hint) -> Event:
    """The event as it leaves: the ids of the context it was captured in as tags, and the
    request without its body, its cookies, its secrets and all but a few headers."""
    tags = event.setdefault("tags", {})
    if isinstance(tags, dict):
        for name, variable in TAGS:
            value = variable.get()
            if value is not None:
                tags.setdefault(name, value)
    request = event.get("request")
    if isinstance(request, dict):
        url = str(request.get("url") or "")
        query = str(request.get("query_string") or "")
        secrets = secrets_of(_path(url), query)
        event["request"] = _request(request, secrets)
        if isinstance(event.get("transaction"), str):  # an unmatched path is its own name
            event["transaction"] = redact(event["transaction"], secrets)
    return event


def _request(request: Mapping[str, Any], secrets: list[str]) -> dict[str, Any]:
    """The request's method, URL and query without `secrets`, and the headers we record."""
    kept: dict[str, Any] = {"method": request.get("method")}
    kept["url"] = redact(str(request.get("url") or ""), secrets)
    if request.get("query_string"):
        kept["query_string"] = redact(str(request["query_string"]), secrets)
    headers = request.get("headers")
    if isinstance(headers, Mapping):
        kept["headers"] = recorded_headers(headers)
    return kept


def _path(url: str) -> str:
    """The path of a request's URL as the event records it (scheme and host first)."""
    rest = url.partition("://")[2]
    return "/" + rest.partition("/")[2].partition("?")[0]


def scrub_breadcrumb(crumb: dict[str, Any], _: Hint) -> dict[str, Any]:
    """A call we made is recorded by its scheme, host, port and path alone."""
    data = crumb.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("url"), str):
            data["url"] = bare(data["url"])
        data.pop("http.query", None)
        data.pop("http.fragment", None)
    return crumb

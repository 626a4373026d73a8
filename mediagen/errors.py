"""The one exception tree of mediagen. Services raise these; `mediagen.main` maps them to HTTP.

MediagenError
├── InvalidHostError         400  a Host header that is malformed or not in ALLOWED_HOSTS
├── AuthenticationError      401  missing or invalid credentials or signature
├── PriorityNotAllowedError  403  a job priority above the caller's ceiling
├── NotFoundError            404  a job (or file) that does not exist
├── ConflictError            409  the request contradicts the job's current state
├── InvalidInputError        422  a job's input file (or an upload's form) is not usable
│   ├── RefusedInputUrlError      a parameter is a URL we neither fetch nor pass on
│   └── InputValidationError      inputs its model refuses (`errors` says which, where)
├── PayloadTooLargeError     413  an upload or webhook body over its limit
│   ├── ImageTooLargeError        an image whose header says it decodes to too many pixels
│   └── StorageQuotaError         the key's input files would pass STORAGE_QUOTA_BYTES
├── UnsupportedMediaTypeError 415 an upload of a type we do not store
├── RateLimitedError         429  too many requests or jobs in flight (Retry-After)
├── ServiceUnavailableError  503  a dependency we cannot do without is down
│   ├── DatabaseUnavailableError
│   └── RedisUnavailableError     Redis (queue, event streams, limits) does not answer,
│                                 or this process has no connection to it left
├── ProviderError                 raised by a generation provider; its message becomes the
│   │                             job's public `error`: plain words, never an upstream URL or
│   │                             body (those go in `details`, which the worker logs)
│   ├── RetryableProviderError    transient: rate limit, 5xx, timeout, connection
│   │   ├── PredictionLostError   the prediction will never report (its completion was
│   │   │                         missed, its server lost it): a new attempt, counted
│   │   └── NoCapacityError       no free slot upstream: try again soon, not counted
│   └── PermanentProviderError    bad input or model failure: fail the job at once
│       └── OutputTooLargeError   an output value past MAX_OUTPUT_VALUE_BYTES: the job
│                                 fails and a running prediction is stopped
├── OutboundError                 an outbound HTTP exchange failed (`retryable`, `status`,
│   │                             `retry_after` say how; mediagen.outbound)
│   └── RefusedAddressError       not http(s), or the host reaches a non-public address
├── StorageError                  the result store refused a read or write
└── ConfigurationError            a setting a process cannot start with (`mediagen` prints
                                  its message, one line, and exits 2)
"""

from __future__ import annotations


class MediagenError(Exception):
    """Base of every error mediagen raises on purpose."""

    status_code = 500
    code = "internal_error"
    headers: dict[str, str] | None = None
    # Which limit refused the request (submissions, reads, in_flight, streams), for the
    # `mediagen_rate_limited_total` metric; counted once, when the refusal is answered.
    limit: str | None = None

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidHostError(MediagenError):
    """Our own absolute URLs would be built from a Host header we may not trust
    (`mediagen.base_url`)."""

    status_code = 400
    code = "invalid_host"


class AuthenticationError(MediagenError):
    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class PriorityNotAllowedError(MediagenError):
    """A key (or a keyless caller) asked for a job priority above its ceiling."""

    status_code = 403
    code = "priority_not_allowed"


class NotFoundError(MediagenError):
    status_code = 404
    code = "not_found"


class ConflictError(MediagenError):
    status_code = 409
    code = "conflict"


class GoneError(MediagenError):
    """What was there is gone for good: an output deleted when its job's retention ended."""

    status_code = 410
    code = "gone"


class InvalidInputError(MediagenError):
    """A job names an input it may not use (unknown, another key's, expired, undecodable), or
    an upload is not the form it should be."""

    status_code = 422
    code = "invalid_input"


class InputValidationError(InvalidInputError):
    """A job's inputs break its model's rules (the built-in generator's parameters, a Cog
    model's schema), found at submit: each in `errors` (`loc`, `msg`, `type`), as a body that
    does not parse is."""

    code = "validation_error"


class RefusedInputUrlError(InvalidInputError):
    """A parameter's value is a URL that is not an input file in a form we take (`http://`,
    another scheme, `user@` in it, one inside a list): passed on, a model's server would fetch
    it from inside its own network."""

    code = "input_url_refused"


class PayloadTooLargeError(MediagenError):
    status_code = 413
    code = "payload_too_large"


class ImageTooLargeError(PayloadTooLargeError):
    """An input image whose header says it decodes to more pixels than accepted
    (`Settings.max_input_pixels`): a few kilobytes can decode to gigabytes."""

    code = "image_too_large"


class StorageQuotaError(PayloadTooLargeError):
    """The caller's input files would take more than its storage quota: nothing is kept until
    some are deleted or expire."""

    code = "storage_quota_exceeded"


class UnsupportedMediaTypeError(MediagenError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimitedError(MediagenError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, **details: object) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailableError(MediagenError):
    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int | None = None, **details: object) -> None:
        super().__init__(message, **details)
        if retry_after is not None:
            self.headers = {"Retry-After": str(retry_after)}


class DatabaseUnavailableError(ServiceUnavailableError):
    code = "database_unavailable"


class RedisUnavailableError(ServiceUnavailableError):
    """What a Redis connection error (refused, timed out, pool exhausted) answers, wherever a
    request needed Redis (`mediagen.errors_http` maps them)."""

    code = "redis_unavailable"


class ProviderError(MediagenError):
    code = "provider_error"
    retryable = False

    def __init__(self, message: str, *, retry_after: float | None = None, **details: object):
        super().__init__(message, **details)
        self.retry_after = retry_after


class RetryableProviderError(ProviderError):
    code = "provider_retryable"
    retryable = True


class PredictionLostError(RetryableProviderError):
    """A started prediction that will never report: the job runs a new attempt (a retry,
    counted) instead of waiting on it. Raised by `get` (a Cog prediction past its deadline)."""

    code = "prediction_lost"


class NoCapacityError(RetryableProviderError):
    """The Cog server of the job's slot is busy all the same (409: someone else uses it): the
    job waits for a slot again without counting a retry; JOB_TIMEOUT bounds the wait."""

    code = "no_capacity"


class EndpointDownError(NoCapacityError):
    """The Cog server a job's slot is on could not be reached (refused, unreachable): the job
    waits for a slot elsewhere, without counting a retry, and the server gets no work until
    its health check is good again."""

    code = "endpoint_down"


class PermanentProviderError(ProviderError):
    code = "provider_permanent"


class OutputTooLargeError(PermanentProviderError):
    """A prediction's output value (text, numbers, JSON: `mediagen.jobs.values`) is larger than
    MAX_OUTPUT_VALUE_BYTES: the job fails, and a prediction still streaming is stopped."""

    code = "output_too_large"


class OutboundError(MediagenError):
    """`message` says what happened on the wire (for logs); `reason`, the same in plain words
    that name no address (for whoever the failure is reported to)."""

    code = "outbound_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.reason = reason or message


class RefusedAddressError(OutboundError):
    code = "refused_address"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message, retryable=False, reason=reason)


class StorageError(MediagenError):
    code = "storage_error"


class ConfigurationError(MediagenError):
    """A setting (or a secret file it names) that no process can start with; the message is
    one line naming the variable and how to fix it."""

    code = "configuration_error"

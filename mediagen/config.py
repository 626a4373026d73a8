"""All configuration in one pydantic-settings class, read from the environment and `.env`.

Every variable is listed, with its default, in `.env-example`; a test keeps the two in step.

Secrets are `SecretStr` (`SecretUrl` for the URLs that may carry a password): a repr, a log
line or a health report shows `**********` (a URL, without its password); the one place
that needs the value calls `.get_secret_value()`. Each can also come from a file
(`NAME_FILE`, SECRETS_DIR: mediagen.secret_files).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mediagen.secret_files import SecretFiles

# The longest wait before a start a job, a key or a model may set (`max_queue_seconds`).
MAX_QUEUE_SECONDS_LIMIT = 7 * 24 * 3600


class SecretUrl(SecretStr):
    """A URL that may carry a password (DATABASE_URL, REDIS_URL): shown without it
    (`postgres://user@host:5432/db`), so a repr or an error can still name the server."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


def mask_url(url: str) -> str:
    """`url` without its password (if any)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()


#: Where `mediagen run` keeps its embedded servers (EMBEDDED_DATA_DIR), and the file in it that
#: holds their URLs while it runs them, so that other commands (`celery -A mediagen.worker
#: inspect ping`, `mediagen migrate`) find them.
EMBEDDED_DATA_DIR = Path(".mediagen")
EMBEDDED_ENV = "embedded.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=(".env", str(EMBEDDED_DATA_DIR / EMBEDDED_ENV)),
        extra="ignore",
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Secret files (mediagen.secret_files) come after a non-empty value of any other
        source, but before an empty one."""
        assert isinstance(init_settings, InitSettingsSource)
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        given = {
            **dotenv_settings.env_vars,
            **env_settings.env_vars,
            **{k.lower(): v for k, v in init_settings.init_kwargs.items()},
        }
        files = SecretFiles(settings_cls, SECRETS, given)
        return init_settings, files, env_settings, dotenv_settings

    # --- infrastructure --------------------------------------------------------------------
    # Unset means "embedded": `mediagen run` starts a private Postgres and Redis
    # (see docs/operations.md).
    database_url: SecretUrl | None = None
    redis_url: SecretUrl | None = None
    # Sentinel (docs/scaling.md): `host:port,host:port`; empty: REDIS_URL's own address. With
    # Sentinels, REDIS_URL gives only the password, database number and scheme.
    redis_sentinels: str = ""
    redis_sentinel_master: str = Field("mymaster", min_length=1)
    redis_sentinel_password: SecretStr = SecretStr("")
    # TLS (a `rediss://` REDIS_URL): the CA that signed the server's certificate (unset: the
    # system's), and a client certificate and its key when the server asks for one.
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    db_pool_max: int = Field(10, ge=1, le=100)
    # Prepared statements each database connection keeps (asyncpg's statement cache); 0 for
    # PgBouncer in transaction mode (docs/scaling.md, PgBouncer).
    database_statement_cache_size: int = Field(100, ge=0, le=10_000)
    embedded_data_dir: Path = EMBEDDED_DATA_DIR
    # A directory of secret files, one per secret setting, named after it (a mounted
    # Kubernetes Secret, Docker's /run/secrets); `NAME_FILE` names one file. Unset: none.
    secrets_dir: Path | None = None

    # --- generation --------------------------------------------------------------------------
    replicate_api_token: SecretStr = SecretStr("")
    replicate_base_url: str = "https://api.replicate.com/v1"
    replicate_default_model: str = "black-forest-labs/flux-schnell"
    # Models a request may name (`model`), comma-separated shell-style patterns such as
    # `black-forest-labs/*` or `owner/name:*`; empty: the default model only.
    allowed_models: str = ""
    # A TOML file mapping public model names to providers (mediagen.catalog); when set it is
    # the allow-list (ALLOWED_MODELS must then be empty). Unset: the settings above decide.
    models_file: Path | None = None
    # How often (seconds) each process looks whether the models file changed, and resolves its
    # `discover = "dns"` names again; 0: only on SIGHUP.
    models_file_check_seconds: float = Field(5.0, ge=0, le=3600)
    # Secret (`whsec_...`) that verifies Replicate's webhooks; webhooks are used only when
    # PUBLIC_BASE_URL is set (the address Replicate can reach us at), else jobs are polled.
    replicate_webhook_secret: SecretStr = SecretStr("")
    # Also the root of the absolute URLs in answers (`/v1`'s prediction and stream URLs, a
    # list's `next`); unset: the request's Host, checked against ALLOWED_HOSTS.
    public_base_url: str = Field("", max_length=250)
    replicate_timeout: float = Field(30.0, gt=0)
    download_timeout: float = Field(120.0, gt=0)
    download_max_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    # Hosts/networks allowed even though private (for local testing against a fake server).
    download_allow_private: bool = False
    # The most outputs a job keeps: a prediction that returns more fails the job (none kept).
    max_outputs_per_job: int = Field(16, ge=1, le=1000)
    # The largest output value a job keeps (text, numbers, lists, JSON; its JSON in bytes,
    # streamed chunks included): a prediction whose value is larger fails its job.
    max_output_value_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_retries: int = Field(3, ge=0, le=20)
    retry_delay: float = Field(60.0, ge=0)
    retry_max_delay: float = Field(900.0, ge=0)
    job_timeout: float = Field(3600.0, gt=0)
    # Seconds a job may wait to start (still pending) before it fails with `queue_timeout`,
    # unless the job, its key or its model says otherwise; 0: no limit.
    max_queue_seconds: int = Field(0, ge=0, le=MAX_QUEUE_SECONDS_LIMIT)
    # How many jobs of one model may run at once when the models file gives it no
    # `concurrency` (Cog models: their servers' slots); 0: no limit but the workers.
    model_concurrency: int = Field(0, ge=0, le=100_000)
    poll_interval: float = Field(2.0, gt=0)
    builtin_latency: float = Field(0.0, ge=0, le=3600)
    builtin_fault_injection: bool = False

    # --- cog ---------------------------------------------------------------------------------
    # Self-hosted Cog servers (models file entries with provider = "cog"; mediagen.providers.cog).
    # Signs the per-prediction token in the webhook URL each Cog server calls back; empty: one
    # made at random once and kept in Postgres, shared by every process.
    cog_webhook_secret: SecretStr = SecretStr("")
    # Token in the upload URL Cog servers are started with (`--upload-url
    # {PUBLIC_BASE_URL}/api/v1/uploads/cog/{COG_UPLOAD_TOKEN}/`); empty: uploads are refused and
    # outputs come inline, as data: URIs in the completion webhook. Each upload also needs its
    # prediction's own token, which the server got with the prediction (docs/providers.md, Cog).
    cog_upload_token: SecretStr = SecretStr("")
    # Seconds for one call to a Cog server (create or cancel), all of it.
    cog_timeout: float = Field(10.0, gt=0, le=300)
    # Send the trace context (`traceparent`) to the Cog servers: only if they are your own and
    # traced too. No other host ever gets it (see docs/operations.md "Tracing").
    cog_trace_context: bool = False
    # --- end cog -------------------------------------------------------------------------------

    # --- durability --------------------------------------------------------------------------
    lease_seconds: float = Field(120.0, gt=0)
    sweep_interval: float = Field(30.0, gt=0)
    dispatch_grace: float = Field(30.0, ge=0)

    # --- storage -----------------------------------------------------------------------------
    storage_type: Literal["local", "s3"] = "local"
    local_storage_path: Path = Path("./storage/media")
    aws_access_key_id: str = ""
    aws_secret_access_key: SecretStr = SecretStr("")
    s3_bucket_name: str = "media-generation-bucket"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_key_prefix: str = ""
    s3_presign_expiry: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # When set, result URLs are `{MEDIA_BASE_URL}/{key}` (public bucket or CDN), not presigned.
    media_base_url: str = ""
    # Local storage: result URLs under /media are signed and valid this long (seconds).
    media_url_ttl: int = Field(3600, ge=60, le=7 * 24 * 3600)
    # The key that signs them; empty: one made at random once and kept in Postgres.
    media_signing_key: SecretStr = SecretStr("")

    # --- API ---------------------------------------------------------------------------------
    # auto: keys are required as soon as one exists (a fresh local run needs none).
    auth_required: Literal["auto", "true", "false"] = "auto"
    # How long an API process keeps a key it looked up. A create or revoke reaches every process
    # at once over Redis pub/sub (mediagen.keys.cache); this is a backstop. 0: no cache.
    key_cache_seconds: float = Field(60.0, ge=0, le=3600)
    # Per API key (or for all anonymous callers together); 0 turns a limit off.
    rate_limit_per_minute: int = Field(6000, ge=0)
    max_jobs_in_flight: int = Field(2000, ge=0)
    # Reads (status, details, lists, event streams, webhook logs) per key per minute; 0: off.
    rate_limit_reads_per_minute: int = Field(12000, ge=0)
    # Live event streams open at once: per key (all API processes together), and per API
    # process (each holds a Redis connection while open).
    max_streams_per_key: int = Field(20, ge=1, le=10_000)
    max_streams: int = Field(1000, ge=1, le=100_000)
    # `Prefer: wait` answers held at once, counted as streams are (each holds a Redis
    # connection of a pool of its own); a create past either is answered without waiting.
    max_waits_per_key: int = Field(20, ge=1, le=10_000)
    max_waits: int = Field(500, ge=1, le=100_000)
    # Host names the request's Host may carry when PUBLIC_BASE_URL is unset, comma-separated:
    # `*` (any well-formed one), a name, or `.example.com` (it and every name under it).
    allowed_hosts: str = "*"
    # Origins allowed to call the API from a browser, comma-separated; empty: no CORS headers.
    cors_origins: str = ""
    cors_allow_credentials: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    # API processes (uvicorn workers) of `mediagen api` / `mediagen run`; `--workers` overrides.
    web_concurrency: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(65536, ge=1024)
    # Serve the common submit and status requests without FastAPI's generic machinery
    # (mediagen.jobs.fastpath); false sends every request through the documented routes.
    fast_paths: bool = True
    # --- behind a reverse proxy or load balancer (docs/deployment.md) -----------------------
    # Peers whose X-Forwarded-For and X-Forwarded-Proto are believed (comma-separated addresses
    # or networks, `*` for any): the client address of the access log and the scheme of the
    # URLs the API builds come from those headers only when the connection is from one of them.
    forwarded_allow_ips: str = "127.0.0.1"
    # The path prefix clients reach the API under (`/mediagen`), whether or not the proxy
    # strips it: the API, `/docs` and the web page answer and link under it. Empty: none.
    root_path: str = Field("", max_length=100)
    max_prompt_length: int = Field(2000, ge=1)
    min_dimension: int = Field(64, ge=8)
    max_dimension: int = Field(2048, ge=64)

    # --- client webhooks (`webhook` on POST /generate; see docs/api.md "Client webhooks") ---------
    # Signs webhooks of anonymous jobs (`whsec_` + base64); keyed jobs use their key's secret.
    webhook_secret: SecretStr = SecretStr("")
    # Hosts exempt from the private-address check, comma-separated (local testing only).
    webhook_allow_hosts: str = ""
    # Base of the retry schedule: base x (1, 6, 24, 120, 360, 720) seconds, then give up.
    webhook_retry_delay: float = Field(5.0, gt=0, le=60)
    # One attempt, all of it (connect, send, the answer), in seconds; then it counts as failed.
    webhook_timeout: float = Field(10.0, gt=0, le=60)
    # Attempts in progress at once per worker process (on its event loop, not in its threads).
    webhook_concurrency: int = Field(100, ge=1, le=10_000)
    # The most of those one key, and one receiver (host and port), may hold in a worker process
    # (never more than half of WEBHOOK_CONCURRENCY); their other deliveries wait their turn.
    webhook_concurrency_per_key: int = Field(10, ge=1, le=10_000)
    webhook_concurrency_per_host: int = Field(10, ge=1, le=10_000)
    # Consecutive failed attempts to one receiver (no answer in time, a network error, 408, 425,
    # 429, 5xx) after which it gets none for WEBHOOK_CIRCUIT_COOLDOWN seconds; 0: never.
    webhook_circuit_failures: int = Field(5, ge=0, le=1000)
    webhook_circuit_cooldown: float = Field(60.0, gt=0, le=3600)

    # --- job lifecycle (docs/lifecycle.md) -----------------------------------------------------
    # Input files (POST /api/v1/files): the largest accepted, and how long one is kept.
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    file_ttl: int = Field(24 * 3600, ge=60)
    # The bytes of input files one key (or all anonymous callers together) may keep at once;
    # past it, uploads answer 413 `storage_quota_exceeded` until files are deleted or expire.
    # 0: no quota.
    storage_quota_bytes: int = Field(1024 * 1024 * 1024, ge=0)
    # Job requests in one POST /api/v1/batches.
    max_batch: int = Field(100, ge=1, le=1000)
    # The highest priority a key may ask for unless `mediagen keys` gave it another ceiling
    # (and the ceiling of callers without a key).
    default_max_priority: Literal["low", "normal", "high"] = "normal"
    # A job's provider logs kept (the newest lines win past it), in bytes.
    job_logs_max_bytes: int = Field(64 * 1024, ge=1024, le=10 * 1024 * 1024)
    # How long a completed job's outputs are kept (a job's `retention` may only shorten it).
    result_ttl: int = Field(7 * 24 * 3600, ge=60)
    # How long a finished job's row (and its webhook deliveries) is kept after it finished.
    job_record_ttl: int = Field(30 * 24 * 3600, ge=3600)
    # Rows deleted per statement by the pruning (small, so the hot tables are never locked long).
    prune_batch: int = Field(500, ge=1, le=10_000)

    # --- worker ------------------------------------------------------------------------------
    worker_concurrency: int = Field(16, ge=1, le=1000)

    # --- observability (docs/operations.md) ------------------------------------------------
    debug: bool = False
    log_level: str = "INFO"
    # auto: readable lines on a terminal, JSON lines (one object per line) otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    # One line per API request: method, route, status, duration, request id.
    access_log: bool = True
    # Prompts and webhook URLs in log lines; off: they never appear.
    log_prompts: bool = False
    # GET /metrics on the API and the worker's exporter; false: neither, at no cost per request.
    metrics_enabled: bool = True
    # When set, /metrics (API and worker) needs `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: SecretStr = SecretStr("")
    # The worker's port (one per worker, for all its processes): its probes (/livez, /readyz)
    # and, unless METRICS_ENABLED is false, its /metrics; 0: none.
    worker_metrics_port: int = Field(9808, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Error tracking (docs/logs-and-metrics.md, "Error tracking"): the API's and the workers'
    # exceptions to this Sentry DSN, with the extra `mediagen[sentry]`; empty: off.
    sentry_dsn: str = ""
    # The environment events are filed under (`production`, `staging`); empty: Sentry's default.
    sentry_environment: str = ""
    # The share of requests and tasks also sent as performance traces; 0: errors only.
    sentry_traces_sample_rate: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value):
            raise ValueError("PUBLIC_BASE_URL must be an http(s) URL without query or fragment")
        return value

    @field_validator("root_path")
    @classmethod
    def _root_path(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not re.fullmatch(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+", value):
            raise ValueError("ROOT_PATH must be a path such as /mediagen (no query or fragment)")
        return value

    @field_validator(
        "database_url",
        "redis_url",
        "models_file",
        "secrets_dir",
        "redis_tls_ca_file",
        "redis_tls_cert_file",
        "redis_tls_key_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",") if e.strip()):
            _host_port(entry)
        return value

    @model_validator(mode="after")
    def _redis(self) -> Settings:
        if self.redis_sentinels.strip() and not self.redis_url:
            raise ValueError(
                "REDIS_SENTINELS needs REDIS_URL too: its password, database number and scheme "
                "(rediss:// for TLS) are used, not its host, e.g. redis://:PASSWORD@mymaster/0"
            )
        tls_files = self.redis_tls_ca_file or self.redis_tls_cert_file or self.redis_tls_key_file
        scheme = urlsplit(self.redis_url.get_secret_value()).scheme if self.redis_url else ""
        if tls_files and scheme != "rediss":
            raise ValueError("REDIS_TLS_* files are used only with a rediss:// REDIS_URL")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
        return self

    @model_validator(mode="after")
    def _prefix(self) -> Settings:
        """Relative URLs in answers start with ROOT_PATH, absolute ones with PUBLIC_BASE_URL:
        with both set they must name the same prefix."""
        if self.root_path and self.public_base_url:
            path = urlsplit(self.public_base_url).path.rstrip("/")
            if path != self.root_path:
                raise ValueError(
                    f"PUBLIC_BASE_URL's path ({path or '/'}) must be ROOT_PATH ({self.root_path})"
                )
        return self

    @model_validator(mode="after")
    def _cors(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.cors_origin_list:
            raise ValueError("CORS_ORIGINS cannot be '*' when CORS_ALLOW_CREDENTIALS is true")
        return self

    @property
    def embedded_env_file(self) -> Path:
        """The URLs of the embedded servers, written by `mediagen run` while it runs them."""
        return self.embedded_data_dir / EMBEDDED_ENV

    @property
    def max_input_pixels(self) -> int:
        """The most pixels an input image may have: 4 x MAX_DIMENSION² (4096 x 4096 at the
        default), checked on its header before anything decodes it (a 20 KB PNG can declare
        13000 x 13000). Uploads, data: URIs and fetched inputs over it are refused."""
        return 4 * self.max_dimension**2

    @property
    def redis_sentinel_list(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty: no Sentinel."""
        return [_host_port(e.strip()) for e in self.redis_sentinels.split(",") if e.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def allowed_model_patterns(self) -> list[str]:
        found = [p.strip() for p in self.allowed_models.split(",") if p.strip()]
        return found or [self.replicate_default_model]

    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def webhook_allow_host_list(self) -> list[str]:
        return [h.strip() for h in self.webhook_allow_hosts.split(",") if h.strip()]


# The secret settings: never shown, and each may come from a file (mediagen.secret_files).
SECRETS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretUrl, SecretUrl | None)
)


def _host_port(entry: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` too) as a pair; a clear error for anything else."""
    host, colon, port = entry.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536) or " " in host:
        raise ValueError(
            f"REDIS_SENTINELS: {entry!r} is not host:port "
            "(give them comma-separated, e.g. 10.0.0.1:26379,10.0.0.2:26379)"
        )
    return host, int(port)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. A `mediagen run` started with another
    EMBEDDED_DATA_DIR wrote its servers' addresses there: they are read from there too."""
    settings = Settings()
    found = settings.embedded_env_file
    if (not settings.database_url or not settings.redis_url) and found.is_file():
        settings = Settings(_env_file=(".env", str(found)))
    return settings

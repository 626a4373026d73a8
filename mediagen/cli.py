"""`mediagen`: run the whole service, or one part of it.

mediagen run       API + worker (+ sweeper), on an embedded Postgres/Redis when
                   DATABASE_URL / REDIS_URL are unset; migrations applied first
mediagen api       the API alone (uvicorn; --workers N processes, default WEB_CONCURRENCY)
mediagen worker    a Celery worker (with `--beat`, the sweeper schedule too)
mediagen beat      the sweeper schedule alone (Celery beat)
mediagen migrate   apply pending database migrations (safe to run from several replicas
                   at once: they take turns)
mediagen worker-check  exit 0 if a worker on this host is healthy (fresh heartbeat, broker
                   answers), else 1; one line says why (an exec probe)
mediagen keys      create | list | revoke | adopt | set-priority | set-max-queue | set-weight |
                   delete
mediagen models    pause | resume NAME
mediagen usage     jobs, run seconds and bytes stored per day, model or key (all keys)
mediagen flower    Flower, the Celery monitor (arguments go to flower: --port=5555 ...)
mediagen --version the installed version

mediagen generate  submit a prompt, show its progress, download the outputs (a client of a
                   running service: MEDIAGEN_URL, MEDIAGEN_API_KEY)
mediagen jobs      list | show | wait | download | cancel your jobs (the same client)

`pip install mediagen` is the client: generate and jobs. The service's commands need
`pip install "mediagen[server]"` (`mediagen[all]`: with the built-in generator, the embedded
Postgres/Redis and Flower).
"""

# Nothing of the server (nor asyncio) is imported before a server command is chosen: the
# server is an optional extra (`mediagen[server]`), so its modules are imported in the functions
# that need them, and the client's commands and every --help work where only the client is
# installed, and start quickly (so does the client: see `main`).

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from mediagen import __version__, extras, supervisor
from mediagen.errors import ConfigurationError, ServiceUnavailableError, StorageError

if TYPE_CHECKING:
    from mediagen.config import Settings
    from mediagen.preflight import Need

PRIORITIES = ("low", "normal", "high")  # mediagen.jobs.states.Priority, without importing it
# What each server command needs to answer before it starts (mediagen.preflight); `run` checks
# once its embedded servers (if any) are up, `worker-check` reports on its own.
NEEDS: dict[str, tuple[Need, ...]] = {
    "api": ("database", "schema", "redis", "storage"),
    "worker": ("database", "schema", "redis", "storage"),
    "beat": ("redis",),
    "flower": ("redis",),
    "migrate": ("database",),
    "keys": ("database", "schema"),
    "models": ("database", "schema", "redis"),
    "usage": ("database", "schema"),
}


def _migrate(settings: Settings) -> None:
    import asyncio

    from mediagen.db import migrate

    asyncio.run(migrate(settings))


def _settings(env_file: str | None = None) -> Settings:
    """The settings (`env_file`: read only that file, not a previous run's), or a
    ConfigurationError naming every bad one, on one line."""
    from pydantic import ValidationError

    from mediagen.config import Settings, get_settings

    try:
        return Settings(_env_file=env_file) if env_file else get_settings()
    except ValidationError as exc:
        found = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            found.append(message if not name or message.startswith(name) else f"{name}: {message}")
        raise ConfigurationError("bad configuration: " + "; ".join(found)) from None


def _preflight(settings: Settings, needs: tuple[Need, ...]) -> None:
    import asyncio

    from mediagen import preflight

    asyncio.run(preflight.check(settings, needs))


def _check_models(settings: Settings) -> set[str]:
    """The models file (MODELS_FILE) is readable and valid; the provider kinds it routes to."""
    from mediagen.catalog import CatalogError, load_catalog

    try:
        return load_catalog(settings).providers()
    except CatalogError as exc:
        raise ConfigurationError(str(exc)) from None


def _require_provider(settings: Settings, command: str) -> None:
    """The models file is valid, and the worker's generators are installed: Pillow when the
    built-in one runs any model."""
    if "builtin" not in _check_models(settings):
        return
    if settings.models_file:
        why, alternative = "MODELS_FILE routes models to it", "route no model to it"
    else:
        why, alternative = "REPLICATE_API_TOKEN is unset", "set REPLICATE_API_TOKEN"
    extras.require(
        "builtin", f"mediagen {command} with the built-in generator ({why})", alternative
    )


def _require_error_tracking(settings: Settings, command: str) -> None:
    """With SENTRY_DSN set, Sentry's SDK is installed: a service that would not report its
    errors refuses to start instead (started otherwise, it says so in its log and runs)."""
    if settings.sentry_dsn:
        extras.require(
            "sentry", f"mediagen {command} with SENTRY_DSN set", alternative="unset SENTRY_DSN"
        )


def cmd_run(_: argparse.Namespace) -> int:
    # Decide embedded-or-not from the real configuration only, not a previous run's file.
    settings = _settings(env_file=".env")
    _require_provider(settings, "run")
    _require_error_tracking(settings, "run")
    settings.embedded_data_dir.mkdir(parents=True, exist_ok=True)
    with supervisor.services(settings) as env:
        os.environ.update(env)
        settings = _settings(env_file=".env")
        _preflight(settings, ("database", "redis", "storage"))
        _migrate(settings)
        commands = [supervisor.api_cmd(settings), supervisor.worker_cmd(settings, beat=True)]
        envs = [
            {**os.environ, **supervisor.metrics_dir(settings, service)}
            for service in ("api", "worker")
        ]
        return supervisor.supervise(settings, commands, envs)


def _worker_check(settings: Settings) -> int:
    """An exec probe for a worker (`mediagen.heartbeat.check_host`): 0 healthy, 1 not."""
    from mediagen import heartbeat

    ok, reason = heartbeat.check_host(settings)
    print(
        f"mediagen worker-check: {'ok' if ok else 'not ready'}: {reason}",
        file=sys.stdout if ok else sys.stderr,
        flush=True,
    )
    return 0 if ok else 1


def _exec(cmd: list[str]) -> int:
    os.execv(cmd[0], cmd)  # noqa: S606


def _flower(args: list[str]) -> int:
    """`celery -A mediagen.worker flower ARGS`, or one line naming the extra it needs."""
    extras.require("flower", "mediagen flower")
    extras.require("server", "mediagen flower")
    _preflight(_settings(), NEEDS["flower"])
    return _exec([sys.executable, "-m", "celery", "-A", "mediagen.worker", "flower", *args])


MAX_WEIGHT = 1000


def _weight(given: str) -> int:
    """`keys set-weight`'s value: a whole number from 1 to MAX_WEIGHT."""
    if not given.isdigit() or not 1 <= int(given) <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"{given!r} is not a whole number from 1 to {MAX_WEIGHT}")
    return int(given)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # Listed for --help only: main() hands them on before parsing (their arguments are theirs).
    sub.add_parser("generate", help="submit a prompt, follow it, download the outputs")
    sub.add_parser("jobs", help="list, show, wait for, download or cancel your jobs")
    models = sub.add_parser(
        "models",
        help="the models the service runs (what --model takes); `models pause|resume NAME`: "
        "hold a model's jobs in its queue, or let them start",
    )
    model_actions = models.add_subparsers(dest="action", required=True)
    for action, what in (
        ("pause", "hold the model's jobs in its queue (they stay pending)"),
        ("resume", "let the model's queued jobs start again, in turn"),
    ):
        model_actions.add_parser(action, help=what).add_argument("name", help="the model's name")
    sub.add_parser("flower", help="Flower, the Celery monitor (every argument goes to flower)")
    sub.add_parser("run", help="API + worker + sweeper (embedded Postgres/Redis if unset)")
    api = sub.add_parser("api", help="the API alone")
    api.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="API processes (default: WEB_CONCURRENCY, 1); each keeps its own Postgres pool",
    )
    worker = sub.add_parser("worker", help="a Celery worker")
    worker.add_argument("--beat", action="store_true", help="also run the sweeper schedule")
    sub.add_parser("beat", help="the sweeper schedule alone")
    sub.add_parser("migrate", help="apply pending database migrations")
    sub.add_parser(
        "worker-check",
        help="exit 0 if a worker on this host has a fresh heartbeat and the broker answers, "
        "else 1 (a probe)",
    )
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("name", help="what the key is for")
    create.add_argument(
        "--max-priority",
        choices=PRIORITIES,
        help="the highest job priority the key may ask for (default: DEFAULT_MAX_PRIORITY)",
    )
    actions.add_parser(
        "list", help="list keys (prefix, name, created, revoked, max priority, max queue)"
    )
    set_priority = actions.add_parser(
        "set-priority", help="change the highest job priority a key may ask for"
    )
    set_priority.add_argument("key", help="the key's id or its `mg_...` prefix")
    set_priority.add_argument(
        "priority", choices=(*PRIORITIES, "default"), help="`default`: DEFAULT_MAX_PRIORITY"
    )
    set_max_queue = actions.add_parser(
        "set-max-queue",
        help="change how long the key's jobs may wait to start when they do not say "
        "(max_queue_seconds)",
    )
    set_max_queue.add_argument("key", help="the key's id or its `mg_...` prefix")
    set_max_queue.add_argument(
        "seconds",
        help="seconds (1 to 604800), or `default`: the model's default, else MAX_QUEUE_SECONDS",
    )
    set_weight = actions.add_parser(
        "set-weight",
        help="change the key's share of the starts when several keys have jobs waiting (default 1)",
    )
    set_weight.add_argument("key", help="the key's id or its `mg_...` prefix")
    set_weight.add_argument("weight", type=_weight, help="1 to 1000: turns to a weight-1 key's one")
    revoke = actions.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="the key's id or its `mg_...` prefix")
    adopt = actions.add_parser(
        "adopt",
        help="give every job made without a key (before keys were required) to this key",
    )
    adopt.add_argument("key", help="the key's id or its `mg_...` prefix")
    delete = actions.add_parser(
        "delete",
        help="revoke a key, then delete all its data (jobs, outputs, files, batches) and it",
    )
    delete.add_argument("key", help="the key's id or its `mg_...` prefix (revoked or not)")
    usage = sub.add_parser("usage", help="jobs, run seconds and bytes stored, across keys")
    usage.add_argument("--from", dest="start", metavar="DATE", help="ISO date or time (UTC)")
    usage.add_argument("--to", dest="end", metavar="DATE", help="ISO date or time (UTC)")
    usage.add_argument("--group-by", choices=("day", "model", "key"), default="day")
    return parser


def _server(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A server command: the server's modules are imported from here on. The configuration is
    checked first (exit 2), then what the command needs answers (exit 1), then it runs."""
    extras.require("server", f"mediagen {args.command}")
    if args.command == "run":
        return cmd_run(args)
    settings = _settings()
    if args.command == "api":
        if args.workers is not None and not 1 <= args.workers <= 64:
            parser.error("--workers must be between 1 and 64")
        _check_models(settings)
    if args.command == "worker":
        _require_provider(settings, "worker")
    _preflight(settings, NEEDS.get(args.command, ()))
    if args.command == "keys":
        from mediagen.keys import cli as keys_cli

        return keys_cli.run(args)
    if args.command == "models":
        from mediagen.jobs import operators

        return operators.run(args)
    if args.command == "usage":
        from mediagen.usage import cli as usage_cli

        return usage_cli.run(args)
    if args.command == "migrate":
        _migrate(settings)
        print("mediagen: migrations applied")
        return 0
    if args.command == "worker-check":
        return _worker_check(settings)
    if args.command in ("api", "worker", "beat"):
        _require_error_tracking(settings, args.command)
    if args.command == "api":
        os.environ.update(supervisor.metrics_dir(settings, "api"))
        return _exec(supervisor.api_cmd(settings, args.workers))
    if args.command == "worker":
        os.environ.update(supervisor.metrics_dir(settings, "worker"))
        return _exec(supervisor.worker_cmd(settings, beat=args.beat))
    if args.command == "beat":
        return _exec(supervisor.beat_cmd(settings))
    parser.error(f"unknown command {args.command}")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    operator = argv[:2] in (["models", "pause"], ["models", "resume"])
    if argv[:1] in (["generate"], ["jobs"], ["models"]) and not operator:
        # Here, not at the top: the client (httpx, rich, asyncio) takes 0.6 s to import, which
        # the server commands and --help, which never need it, must not pay.
        from mediagen.client import cli as client_cli

        return client_cli.main(argv)
    command = argv[0] if argv else ""
    try:
        if command == "flower":
            return _flower(argv[1:])
        parser = _parser()
        args = parser.parse_args(argv)
        return _server(parser, args)
    except extras.MissingExtraError as exc:
        print(exc, file=sys.stderr)
    except ConfigurationError as exc:
        print(f"mediagen: {exc}", file=sys.stderr)
    except (ServiceUnavailableError, StorageError) as exc:  # a dependency that does not answer
        print(f"mediagen: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an extra's package that MODULES does not name
        top = (exc.name or "").partition(".")[0]
        if not top or top == "mediagen":
            raise
        extra = extras.extra_of(top) or "server"
        print(extras.MissingExtraError(extra, f"mediagen {command}", [top]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""`mediagen keys create|list|revoke|adopt|set-priority|set-max-queue|set-weight|delete`.
Their arguments are defined in mediagen/cli.py, which parses every command without importing
the server."""

from __future__ import annotations

import argparse
import sys

from mediagen import preflight, redis_clients
from mediagen.config import MAX_QUEUE_SECONDS_LIMIT, Settings, get_settings
from mediagen.db import close_db, init_db
from mediagen.errors import NotFoundError
from mediagen.jobs.deletion import delete_key_data
from mediagen.jobs.repository import adopt_anonymous
from mediagen.keys import service
from mediagen.keys.cache import publish_change
from mediagen.scheduling.queues import WEIGHTS


async def _announce(settings: Settings) -> None:
    """Running API processes drop their cached keys at once (see mediagen.keys.cache)."""
    client = redis_clients.async_client(settings, "mediagen-cli", timeout=2)
    try:
        await publish_change(client)
    except Exception as exc:
        print(
            f"mediagen keys: could not tell running API processes ({exc}); "
            "they notice the change within KEY_CACHE_SECONDS"
        )
    finally:
        await client.aclose()


async def _tell_queues(settings: Settings, key_id: str, weight: int) -> None:
    """The key's jobs queued again (by the sweeper) take turns at its new weight too."""
    client = redis_clients.async_client(settings, "mediagen-cli", timeout=2)
    try:
        await client.hset(WEIGHTS, key_id, weight)
    except Exception as exc:
        print(f"mediagen keys: Redis not told ({exc}); new jobs take the weight all the same")
    finally:
        await client.aclose()


async def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    await init_db(settings, "mediagen-cli")
    try:
        if args.action == "create":
            key, secret = await service.create_key(args.name, args.max_priority)
            await _announce(settings)
            print(
                f"created key {key.id} ({key.name})\n{secret}\nStore it now: it is not shown again."
                f"\nwebhook secret (verifies this key's job webhooks): {key.webhook_secret}"
                f"\nmax priority: {_ceiling(key.max_priority, settings)}"
            )
        elif args.action == "list":
            for key in await service.list_keys():
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                print(
                    f"{key.id}  {key.prefix}...  {key.created_at:%Y-%m-%d %H:%M}  {state}  "
                    f"max-priority={_ceiling(key.max_priority, settings)}  "
                    f"max-queue={_max_queue(key.max_queue_seconds)}  weight={key.weight}  "
                    f"{key.name}"
                )
        elif args.action == "set-priority":
            ceiling = None if args.priority == "default" else args.priority
            try:
                key = await service.set_max_priority(args.key, ceiling)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            await _announce(settings)
            print(
                f"key {key.id} ({key.prefix}...) may now ask for priority up to "
                f"{_ceiling(key.max_priority, settings)}"
            )
        elif args.action == "set-max-queue":
            try:
                seconds = _queue_seconds(args.seconds)
            except ValueError as exc:
                print(f"mediagen keys: {exc}", file=sys.stderr)
                return 2
            try:
                key = await service.set_max_queue_seconds(args.key, seconds)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            await _announce(settings)
            wait = _max_queue(key.max_queue_seconds)
            if key.max_queue_seconds is None:
                wait += " (the model's, else MAX_QUEUE_SECONDS)"
            print(f"key {key.id} ({key.prefix}...): its jobs may wait to start {wait}")
        elif args.action == "set-weight":
            try:
                key = await service.set_weight(args.key, args.weight)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            await _announce(settings)
            await _tell_queues(settings, str(key.id), key.weight)
            print(
                f"key {key.id} ({key.prefix}...) now takes {key.weight} turn(s) to a "
                "weight-1 key's one when several keys have jobs waiting"
            )
        elif args.action == "delete":
            try:
                key = await service.revoke_for_deletion(args.key)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            await _announce(settings)  # no request of it is accepted from now on
            removed = await delete_key_data(key, settings)
            summary = ", ".join(f"{n} {kind}" for kind, n in removed.items())
            print(f"deleted key {key.id} ({key.prefix}...) and its data: {summary}")
        elif args.action == "adopt":
            try:
                key = await service.find_key(args.key)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            count = await adopt_anonymous(key.id)
            print(f"{count} job(s) made without a key now belong to key {key.id} ({key.prefix}...)")
        else:
            try:
                key = await service.revoke_key(args.key)
            except NotFoundError as exc:
                print(f"mediagen keys: {exc.message}")
                return 1
            await _announce(settings)
            print(f"revoked key {key.id} ({key.prefix}...)")
        return 0
    finally:
        await close_db()


def _ceiling(max_priority: str | None, settings: Settings) -> str:
    """A key's priority ceiling as listed: its own, or the setting's (marked as such)."""
    return max_priority or f"{settings.default_max_priority} (default)"


def _max_queue(seconds: int | None) -> str:
    """A key's default wait before a start, as listed."""
    return f"{seconds}s" if seconds is not None else "default"


def _queue_seconds(given: str) -> int | None:
    """`set-max-queue`'s value: seconds within the limit, or None for `default`."""
    if given == "default":
        return None
    if not given.isdigit() or not 1 <= int(given) <= MAX_QUEUE_SECONDS_LIMIT:
        raise ValueError(
            f"{given!r} is neither seconds from 1 to {MAX_QUEUE_SECONDS_LIMIT} nor `default`"
        )
    return int(given)


def run(args: argparse.Namespace) -> int:
    """The command (mediagen.preflight.run_command: one line if a store stops answering)."""
    return preflight.run_command(get_settings(), _run(args))

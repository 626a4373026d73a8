"""`mediagen models pause|resume NAME`: an operator holds a model's jobs in its queue, or lets
them start again (`mediagen.jobs.pausing`). Arguments are parsed in mediagen/cli.py."""

from __future__ import annotations

import argparse
import sys

from mediagen import preflight, redis_clients
from mediagen.broker import Outbox
from mediagen.catalog import CatalogError, ModelNotAllowedError, load_catalog
from mediagen.config import get_settings
from mediagen.db import close_db, init_db
from mediagen.jobs import pausing
from mediagen.scheduling import Queues


async def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        catalog = load_catalog(settings)
        name = catalog.route(args.name).name
    except (CatalogError, ModelNotAllowedError) as exc:
        print(f"mediagen models: {exc}", file=sys.stderr)
        return 2
    await init_db(settings, "mediagen-cli")
    client = redis_clients.async_client(settings, "mediagen-cli")
    outbox = Outbox(client)
    queues = Queues(settings, catalog, client)
    try:
        if args.action == "pause":
            fresh = await pausing.pause(queues, name)
            print(
                f"model {name} is paused: its jobs stay queued until `mediagen models resume "
                f"{name}`" + ("" if fresh else " (it already was)")
            )
        else:
            started = await pausing.resume(queues, outbox, name)
            if not await outbox.flush():
                print("mediagen models: Redis did not take the starts; the sweeper sends them")
            if started is None:
                print(f"model {name} was not paused")
            else:
                print(f"model {name} is resumed: {started} queued job(s) start in turn")
        return 0
    finally:
        await outbox.close()
        await client.aclose()
        await close_db()


def run(args: argparse.Namespace) -> int:
    """The command (mediagen.preflight.run_command: one line if a store stops answering)."""
    return preflight.run_command(get_settings(), _run(args))

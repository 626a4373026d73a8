"""The models file, read again while a process runs: on SIGHUP, and when the file changes.

Every MODELS_FILE_CHECK_SECONDS (0: only on SIGHUP) the process's event loop looks at the file's
stamp (inode, size, mtime: one `stat`, `mediagen.catalog.catalog.file_stamp`) and reads it
again when it changed, in a thread; the same round resolves the `discover = "dns"` names again
(`mediagen.catalog.discovery`). What comes out replaces the routes of the process's one
`Catalog` in place (`Catalog.replace`), so the API's routes, the pipeline, the Cog provider and
its slot accounting all see it at once:

- a Cog endpoint added gets work at its model's next start; one removed gets none from then on,
  while the predictions already on it finish (a job records where it runs: its webhook and
  poll need no endpoint, and a cancel finds it among `Catalog.known_endpoints`);
- a file that became invalid changes nothing: one error line names the file and what is wrong
  (`CatalogError`), and the process goes on with what it had. So does a first Cog model in a
  process that started without any: its slot accounting is made at start-up (restart it);
- a name that no longer resolves keeps its last addresses (one warning until it resolves
  again); one that never resolved gives its model no endpoints for now.

Each change is logged in one line (models and endpoints added and removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from mediagen.catalog.catalog import Catalog, load_catalog
from mediagen.catalog.discovery import Resolver, changes, expand, host_port, resolve
from mediagen.catalog.models_file import file_stamp
from mediagen.catalog.routes import CatalogError, Endpoint
from mediagen.config import Settings

log = logging.getLogger(__name__)
RESOLVE_DEADLINE = 5.0  # seconds for one name: a DNS server that does not answer


class CatalogWatcher:
    """Keeps one process's `catalog` (read from MODELS_FILE) up to date; `start` on the event
    loop it serves, `stop` when the process stops."""

    def __init__(self, catalog: Catalog, settings: Settings, resolver: Resolver = resolve) -> None:
        self.catalog = catalog
        self.settings = settings
        self._resolve = resolver
        # The file as read (discover entries unexpanded), and each entry's last addresses.
        self._spec = catalog.copy()
        self._stamp = catalog.stamp
        self._kinds = catalog.providers()  # what the process made its providers for
        self._addresses: dict[str, Sequence[str]] = {}
        self._failing: set[str] = set()  # names whose failure was logged
        self._skipped: set[str] = set()  # addresses left out, as logged
        # A name's question still out (a DNS server that does not answer holds a thread of
        # the loop's executor: never a second one for the same name).
        self._asking: dict[str, asyncio.Future[list[str]]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_signal = False

    async def start(self) -> None:
        """Resolve the DNS names once (a model's first addresses before the first job), then
        check every MODELS_FILE_CHECK_SECONDS and on `reload_soon`. Nothing without a file."""
        if self.catalog.source is None:
            return
        self._loop = asyncio.get_running_loop()
        await self.check()
        self._task = asyncio.create_task(self._run(), name="models-file")

    def reload_soon(self) -> None:
        """Read the file again now (SIGHUP); safe from any thread and from a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def on_sighup(self) -> bool:
        """Reload on SIGHUP, through this event loop (which must be the main thread's);
        whether it could. Not SIGINT or SIGTERM: those stay the server's."""
        if self._loop is None:
            return False
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self.reload_soon)
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread
            log.debug("SIGHUP not handled here (%s): the file check reloads", exc)
            return False
        self._on_signal = True
        return True

    async def stop(self) -> None:
        if self._on_signal and self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._on_signal = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for asking in self._asking.values():
            asking.cancel()
        self._asking.clear()

    async def _run(self) -> None:
        every = self.settings.models_file_check_seconds
        while True:
            if every > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), every)
            else:
                await self._wake.wait()
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.check(forced)
            except Exception:  # never the end of the loop, nor of the process
                log.exception("models file %s: check failed", self.catalog.source)

    async def check(self, forced: bool = False) -> None:
        """One round: read the file again if it changed (or `forced`), resolve the DNS names,
        and put what changed in place."""
        path = self.catalog.source
        if path is None:
            return
        stamp = file_stamp(path)
        read = forced or stamp != self._stamp
        if read:
            try:
                spec = self._fits(await asyncio.to_thread(load_catalog, self.settings))
            except CatalogError as exc:  # said once: the stamp is this file's now
                self._stamp = stamp
                log.error("%s; still running with the models it had", exc)
                read = False
            else:
                self._spec, self._stamp = spec, spec.stamp  # as it was when it was read
        await self._discover()
        found, skipped = expand(self._spec, self._addresses)
        for why in sorted(set(skipped) - self._skipped):
            log.warning("models file %s: %s: left out", path, why)
        self._skipped = set(skipped)
        said = changes(self.catalog, found)
        if read or said:
            self.catalog.replace(found)
            what = "; ".join(said) if said else "no change"
            log.info("models file %s %s: %s", path, "reloaded" if read else "new DNS answers", what)

    def _fits(self, spec: Catalog) -> Catalog:
        """`spec`, unless it needs what this process made only at start-up (Cog's slots)."""
        if "cog" in spec.providers() and "cog" not in self._kinds:
            first = next(route.name for route in spec.models() if route.provider == "cog")
            raise CatalogError(
                f'models file {spec.source}: models."{first}" runs on cog, which this process '
                "started without: restart it for its first Cog model"
            )
        return spec

    async def _discover(self) -> None:
        entries = {entry.url: entry for entry in self._spec.discovered()}
        for gone in self._addresses.keys() - entries.keys():
            del self._addresses[gone]
        for gone in self._asking.keys() - entries.keys():
            self._asking.pop(gone).cancel()
        urls = sorted(entries)
        found = await asyncio.gather(
            *(self._one(entries[url]) for url in urls), return_exceptions=True
        )
        for url, addresses in zip(urls, found, strict=True):
            host, _ = host_port(entries[url])
            if isinstance(addresses, BaseException) or not addresses:
                if url not in self._failing:
                    self._failing.add(url)
                    why = addresses if isinstance(addresses, BaseException) else "no address"
                    kept = self._addresses.get(url)
                    log.warning(
                        "models file %s: %s does not resolve (%s); %s",
                        self.catalog.source,
                        host,
                        _reason(why),
                        f"keeping its last addresses ({', '.join(kept)})"
                        if kept
                        else "its model has no endpoints from it for now",
                    )
                continue
            if url in self._failing:
                self._failing.discard(url)
                log.info("models file %s: %s resolves again", self.catalog.source, host)
            self._addresses[url] = addresses

    async def _one(self, entry: Endpoint) -> list[str]:
        asking = self._asking.get(entry.url)
        if asking is None or asking.done():
            asking = asyncio.ensure_future(self._resolve(*host_port(entry)))
            asking.add_done_callback(_seen)
            self._asking[entry.url] = asking
        return await asyncio.wait_for(asyncio.shield(asking), RESOLVE_DEADLINE)


def _seen(asking: asyncio.Future[list[str]]) -> None:
    """An answer that came after its round gave up is not an error of its own."""
    if not asking.cancelled():
        asking.exception()


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {RESOLVE_DEADLINE:g}s"
    return str(exc) or type(exc).__name__

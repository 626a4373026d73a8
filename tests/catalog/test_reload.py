"""The models file read again while a process runs (`mediagen.catalog.watch`): a change swaps the
routes of the one catalog in place, a bad file keeps the old one, and `discover = "dns"`
entries become one endpoint per address (`mediagen.catalog.discovery`), resolved again each
round. The resolver is the real one (`localhost`) or, for names with several addresses, one
given to the watcher; the processes themselves are tests/providers/test_cog_reload.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest

from mediagen.catalog import CatalogError, Endpoint, load_catalog, watch
from mediagen.catalog.discovery import address_url, changes, expand, resolve
from mediagen.catalog.watch import CatalogWatcher
from mediagen.config import Settings

FOX = '[models."acme/fox"]\nprovider = "cog"\n'


def settings(path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, models_file=path, **values)  # type: ignore[arg-type]


def endpoint(model: str, url: str, slots: int = 1, dns: bool = False) -> str:
    extra = 'discover = "dns"\n' if dns else ""
    return f'[[models."{model}".endpoints]]\nurl = "{url}"\nslots = {slots}\n{extra}'


def write(path: Path, text: str) -> Path:
    """Write the file anew, its mtime a second later than before (as a later edit has)."""
    before = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(text)
    if before is not None:
        os.utime(path, ns=(before + 10**9, before + 10**9))
    return path


class Names:
    """A resolver whose answers a test sets: host -> addresses, or an error."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers: dict[str, list[str] | OSError] = dict(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, OSError):
            raise answer
        return sorted(answer)


def urls(catalog: object, model: str = "acme/fox") -> list[str]:
    return [e.url for e in catalog.route(model).endpoints]  # type: ignore[attr-defined]


# --- the file ---------------------------------------------------------------------------------

def test_a_dns_entry_is_kept_apart_from_the_plain_endpoints(tmp_path: Path) -> None:
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://gpu-1:5000")
                 + endpoint("acme/fox", "http://fox.gpu.svc:5000/", slots=2, dns=True))
    fox = load_catalog(settings(path)).route("acme/fox")
    assert fox.endpoints == (Endpoint("http://gpu-1:5000", 1),)
    assert fox.discover == (Endpoint("http://fox.gpu.svc:5000", 2),)


@pytest.mark.parametrize(("entry", "problem"), [
    (endpoint("acme/fox", "http://10.0.0.7:5000", dns=True),
     "models.\"acme/fox\".endpoints[0]: 'http://10.0.0.7:5000': discover = \"dns\" needs a host name, not an address"),
    (endpoint("acme/fox", "http://[fd00::7]:5000", dns=True), "needs a host name, not an address"),
    ('[[models."acme/fox".endpoints]]\nurl = "http://fox:5000"\ndiscover = "srv"\n',
     "models.\"acme/fox\".endpoints[0].discover: Input should be 'dns'"),
    (endpoint("acme/fox", "http://fox:5000", dns=True) + endpoint("acme/fox", "http://fox:5000"),
     "endpoint http://fox:5000 is listed twice"),
])
def test_a_bad_dns_entry_says_what_is_wrong_in_one_line(tmp_path: Path, entry: str,
                                                        problem: str) -> None:
    path = write(tmp_path / "models.toml", FOX + entry)
    with pytest.raises(CatalogError) as bad:
        load_catalog(settings(path))
    message = str(bad.value)
    assert message.startswith(f"models file {path}: ") and "\n" not in message
    assert problem in message, message


def test_an_address_takes_the_host_s_place_in_the_url() -> None:
    assert address_url("http://fox.svc:5000", "10.1.2.3") == "http://10.1.2.3:5000"
    assert address_url("https://fox.svc/cog", "fd00::7") == "https://[fd00::7]/cog"
    assert address_url("http://fox.svc:5000", "fe80::1%eth0") == "http://[fe80::1%25eth0]:5000"


def test_expansion_gives_one_endpoint_per_address_after_the_plain_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://10.0.0.9:5000")
                 + endpoint("acme/fox", "http://fox.svc:5000", slots=2, dns=True)
                 + '[models."acme/owl"]\nprovider = "cog"\n'
                 + endpoint("acme/owl", "http://owl.svc:5000", dns=True))
    spec = load_catalog(settings(path))
    found, skipped = expand(spec, {"http://fox.svc:5000": ["10.0.0.7", "10.0.0.8", "10.0.0.9"],
                                   "http://owl.svc:5000": ["10.0.0.8"]})
    assert [(e.url, e.slots) for e in found.route("acme/fox").endpoints] == [
        ("http://10.0.0.9:5000", 1), ("http://10.0.0.7:5000", 2), ("http://10.0.0.8:5000", 2)]
    # An address already an endpoint is not counted twice, and says so.
    assert urls(found, "acme/owl") == []
    assert skipped == ["acme/fox: http://fox.svc:5000 gives http://10.0.0.9:5000, already an endpoint",
                       "acme/owl: http://owl.svc:5000 gives http://10.0.0.8:5000, already an endpoint"]
    assert urls(spec) == ["http://10.0.0.9:5000"]  # the file's catalog itself is left as it was


def test_changes_say_what_a_reload_adds_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    old = load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://a:1")
                                      + '[models."acme/owl"]\nprovider = "builtin"\n')))
    new = load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://b:1")
                                      + '[models."acme/elk"]\nprovider = "builtin"\n')))
    assert changes(old, new) == ["models added: acme/elk", "models removed: acme/owl",
                                 "endpoints added: acme/fox http://b:1",
                                 "endpoints removed: acme/fox http://a:1"]
    more = load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://a:1", slots=3)
                                       + '[models."acme/owl"]\nprovider = "builtin"\n')))
    assert changes(old, more) == ["models changed: acme/fox"]  # its slots
    assert changes(old, old) == []


# --- the catalog, replaced in place -----------------------------------------------------------

def test_replace_swaps_the_routes_and_remembers_the_endpoints_that_went(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    catalog = load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://a:1"))))
    held = catalog  # what every holder keeps
    catalog.replace(load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://b:1")))))
    assert urls(held) == ["http://b:1"]
    assert [e.url for e in held.known_endpoints()] == ["http://b:1", "http://a:1"]
    catalog.replace(load_catalog(settings(write(path, FOX + endpoint("acme/fox", "http://a:1")))))
    assert [e.url for e in held.known_endpoints()] == ["http://a:1", "http://b:1"]


async def test_an_edited_file_is_read_again_and_a_bad_one_keeps_the_old(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://a:1"))
    catalog = load_catalog(settings(path))
    watcher = CatalogWatcher(catalog, settings(path))
    caplog.set_level(logging.INFO, "mediagen.catalog.watch")
    await watcher.check()
    assert urls(catalog) == ["http://a:1"] and caplog.records == []  # unchanged: not read

    write(path, FOX + endpoint("acme/fox", "http://a:1") + endpoint("acme/fox", "http://b:1")
          + '[models."acme/owl"]\nprovider = "builtin"\n')
    await watcher.check()
    assert urls(catalog) == ["http://a:1", "http://b:1"]
    assert catalog.route("acme/owl").provider == "builtin"
    assert [r.getMessage() for r in caplog.records] == [
        f"models file {path} reloaded: models added: acme/owl; "
        "endpoints added: acme/fox http://b:1"]

    caplog.clear()
    write(path, FOX + endpoint("acme/fox", "http://b:1", slots=0))
    await watcher.check()
    await watcher.check()  # the same bad file: said once
    assert urls(catalog) == ["http://a:1", "http://b:1"]  # the old routes stay
    (bad,) = caplog.records
    assert bad.levelno == logging.ERROR and "\n" not in bad.getMessage()
    assert bad.getMessage() == (
        f'models file {path}: models."acme/fox".endpoints[0].slots: Input should be greater '
        "than or equal to 1; still running with the models it had")

    caplog.clear()
    write(path, FOX + endpoint("acme/fox", "http://b:1"))
    await watcher.check()
    assert urls(catalog) == ["http://b:1"]
    assert [r.getMessage() for r in caplog.records] == [
        f"models file {path} reloaded: models removed: acme/owl; "
        "endpoints removed: acme/fox http://a:1"]
    path.unlink()
    await watcher.check()  # a file that is gone is a bad file too
    assert urls(catalog) == ["http://b:1"]
    assert "cannot be read" in caplog.records[-1].getMessage()


async def test_a_first_cog_model_waits_for_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Cog slot accounting of a process is made at start-up, with its first Cog model."""
    path = write(tmp_path / "models.toml", '[models."acme/owl"]\nprovider = "builtin"\n')
    catalog = load_catalog(settings(path))
    watcher = CatalogWatcher(catalog, settings(path))
    write(path, '[models."acme/owl"]\nprovider = "builtin"\n' + FOX + endpoint("acme/fox", "http://a:1"))
    await watcher.check()
    assert [m.name for m in catalog.models()] == ["black-forest-labs/flux-schnell", "acme/owl"]
    assert [r.getMessage() for r in caplog.records] == [
        f'models file {path}: models."acme/fox" runs on cog, which this process started '
        "without: restart it for its first Cog model; still running with the models it had"]


async def test_the_running_watcher_reloads_on_its_own_and_on_request(tmp_path: Path) -> None:
    """The check loop (every 0.05 s here), and `reload_soon` (what SIGHUP calls) with the loop
    off: an edit whose stamp looks unchanged (same size and mtime) is read only on request."""
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://a:1"))
    catalog = load_catalog(settings(path))
    watcher = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0.05))
    await watcher.start()
    try:
        write(path, FOX + endpoint("acme/fox", "http://b:1"))
        await until(lambda: urls(catalog) == ["http://b:1"])
    finally:
        await watcher.stop()

    quiet = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0))
    await quiet.start()
    try:
        stat = path.stat()
        path.write_text(FOX + endpoint("acme/fox", "http://c:1"))  # same size
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        await quiet.check()
        assert urls(catalog) == ["http://b:1"]  # the stamp did not change
        quiet.reload_soon()
        await until(lambda: urls(catalog) == ["http://c:1"])
    finally:
        await quiet.stop()


async def until(check: object, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.01)


# --- DNS --------------------------------------------------------------------------------------

async def test_the_real_resolver_answers_for_localhost() -> None:
    assert "127.0.0.1" in await resolve("localhost", 5000)
    with pytest.raises(OSError):
        await resolve("no-such-host.invalid", 5000)


async def test_a_name_s_addresses_come_and_go_with_its_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://fox.svc:5000", 2, dns=True))
    catalog = load_catalog(settings(path))
    assert urls(catalog) == []  # nothing resolved yet
    names = Names(**{"fox.svc": ["10.0.0.7", "fd00::7"]})
    watcher = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0), names)
    caplog.set_level(logging.INFO, "mediagen.catalog.watch")
    await watcher.start()  # the first answer before anything runs
    try:
        assert names.asked == [("fox.svc", 5000)]
        assert [(e.url, e.slots) for e in catalog.route("acme/fox").endpoints] == [
            ("http://10.0.0.7:5000", 2), ("http://[fd00::7]:5000", 2)]
        assert [r.getMessage() for r in caplog.records] == [
            f"models file {path} new DNS answers: "
            "endpoints added: acme/fox http://10.0.0.7:5000, acme/fox http://[fd00::7]:5000"]

        names.answers["fox.svc"] = ["10.0.0.8", "fd00::7"]  # a pod replaced
        caplog.clear()
        await watcher.check()
        assert urls(catalog) == ["http://10.0.0.8:5000", "http://[fd00::7]:5000"]
        assert [r.getMessage() for r in caplog.records] == [
            f"models file {path} new DNS answers: endpoints added: acme/fox http://10.0.0.8:5000; "
            "endpoints removed: acme/fox http://10.0.0.7:5000"]
        assert "http://10.0.0.7:5000" in [e.url for e in catalog.known_endpoints()]

        names.answers["fox.svc"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
        caplog.clear()
        await watcher.check()
        await watcher.check()
        assert urls(catalog) == ["http://10.0.0.8:5000", "http://[fd00::7]:5000"]  # kept
        (warning,) = caplog.records  # once, until it resolves again
        assert warning.levelno == logging.WARNING
        assert warning.getMessage() == (
            f"models file {path}: fox.svc does not resolve ([Errno -3] Temporary failure); "
            "keeping its last addresses (10.0.0.8, fd00::7)")

        names.answers["fox.svc"] = ["10.0.0.8"]
        caplog.clear()
        await watcher.check()
        assert urls(catalog) == ["http://10.0.0.8:5000"]
        assert [r.getMessage() for r in caplog.records] == [
            f"models file {path}: fox.svc resolves again",
            f"models file {path} new DNS answers: endpoints removed: acme/fox http://[fd00::7]:5000"]
    finally:
        await watcher.stop()


async def test_a_name_that_never_resolved_leaves_its_model_without_endpoints_for_now(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://fox.svc", dns=True))
    catalog = load_catalog(settings(path))
    names = Names()
    watcher = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0), names)
    caplog.set_level(logging.INFO, "mediagen.catalog.watch")
    await watcher.start()
    try:
        assert names.asked == [("fox.svc", 80)]  # the scheme's port
        assert urls(catalog) == [] and catalog.for_job("cog", "acme/fox").endpoints == ()
        assert [r.getMessage() for r in caplog.records] == [
            f"models file {path}: fox.svc does not resolve ([Errno -2] Name or service not "
            "known); its model has no endpoints from it for now"]
        names.answers["fox.svc"] = ["10.0.0.7"]
        await watcher.check()
        assert urls(catalog) == ["http://10.0.0.7"]
    finally:
        await watcher.stop()


async def test_a_dns_server_that_does_not_answer_is_asked_once_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(watch, "RESOLVE_DEADLINE", 0.05)
    answer = asyncio.Event()
    asked: list[str] = []

    async def slow(host: str, port: int) -> list[str]:
        asked.append(host)
        await answer.wait()
        return ["10.0.0.7"]

    path = write(tmp_path / "models.toml", FOX + endpoint("acme/fox", "http://fox.svc", dns=True))
    catalog = load_catalog(settings(path))
    watcher = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0), slow)
    caplog.set_level(logging.INFO, "mediagen.catalog.watch")
    await watcher.start()
    try:
        await watcher.check()
        assert asked == ["fox.svc"] and urls(catalog) == []  # the same question, still out
        assert "fox.svc does not resolve (no answer within 0.05s)" in caplog.records[0].getMessage()
        answer.set()  # the late answer is dropped: the next round asks again, and is answered
        await watcher.check()
        assert asked == ["fox.svc", "fox.svc"] and urls(catalog) == ["http://10.0.0.7"]
    finally:
        await watcher.stop()


async def test_an_address_another_endpoint_has_is_left_out_saying_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "models.toml", '[models."acme/owl"]\nprovider = "cog"\n'
                 + endpoint("acme/owl", "http://10.0.0.7:5000")
                 + FOX + endpoint("acme/fox", "http://fox.svc:5000", dns=True))
    catalog = load_catalog(settings(path))
    names = Names(**{"fox.svc": ["10.0.0.7", "10.0.0.8"]})
    watcher = CatalogWatcher(catalog, settings(path, models_file_check_seconds=0), names)
    caplog.set_level(logging.WARNING, "mediagen.catalog.watch")
    await watcher.start()
    try:
        await watcher.check()
        assert urls(catalog) == ["http://10.0.0.8:5000"]
        assert urls(catalog, "acme/owl") == ["http://10.0.0.7:5000"]
        assert [r.getMessage() for r in caplog.records] == [
            f"models file {path}: acme/fox: http://fox.svc:5000 gives http://10.0.0.7:5000, "
            "already an endpoint: left out"]
    finally:
        await watcher.stop()

"""The web page at `/`, driven in Debian's Chromium by Playwright against the real stack (API,
worker, Postgres, Redis): submit and watch, gallery and infinite scroll, detail, cancel, API
keys, a phone-wide screen, accessibility basics, and not one request to another site.

Screenshots of these runs land in the test folder; `make screenshots` copies them to
docs/images/ (the README shows them)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect

from mediagen.jobs.retention import EXPIRED_NOTE
from mediagen.scheduling.queues import PAUSED
from tests.conftest import REDIS, TMP
from tests.stack import Stacks
from tests.support import wait_terminal

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium tries Google's hosts, which this network
# refuses; a test that counted requests would see them.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = TMP / "screenshots"
# `make screenshots` sets this: the runs' screenshots are copied to docs/images/.
PUBLISH = os.environ.get("MEDIAGEN_SCREENSHOTS")

if not Path(CHROMIUM).exists():
    if os.environ.get("CI", "") not in ("", "0", "false"):
        raise RuntimeError("chromium is missing: scripts/ensure-tools.sh installs it")
    pytest.skip("Debian's chromium is not installed (scripts/ensure-tools.sh)",
                allow_module_level=True)


IDLE_REDIS: list[str] = []  # the idle stack's Redis (its queues), once it is started


@pytest.fixture(scope="module")
def web(fresh_database: str, stacks: Stacks) -> dict[str, str]:
    """Three APIs and a worker of their own, on a database of their own (so the gallery holds
    only this module's jobs), started together:

    - `slow`: an API and a worker whose jobs take 1.5 s (long enough for the page to show them
      pending and processing);
    - `idle`: an API whose queue no worker consumes (its jobs stay pending);
    - `keyed`: keys required, its jobs run on the slow stack's worker;
    - `prefixed`: served under the path prefix /mg (ROOT_PATH), on the slow stack's worker."""
    slow = {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS.fresh(), "BUILTIN_LATENCY": "1.5"}
    idle = {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS.fresh()}
    keyed = {**slow, "AUTH_REQUIRED": "true"}  # the slow stack's queue
    prefixed = {**slow, "ROOT_PATH": "/mg"}
    IDLE_REDIS.append(idle["REDIS_URL"])
    running = stacks.many((slow, True, True, "web"), (idle, True, False, "web-idle"),
                          (keyed, True, False, "web-keyed"),
                          (prefixed, True, False, "web-prefixed"))
    return dict(zip(("slow", "idle", "keyed", "prefixed"), (stack.url for stack in running),
                    strict=True))


@pytest.fixture(scope="module")
def slow_stack(web: dict[str, str]) -> str:
    return web["slow"]


@pytest.fixture(scope="module")
def idle_api(web: dict[str, str]) -> str:
    return web["idle"]


@pytest.fixture(scope="module")
def keyed_api(web: dict[str, str]) -> str:
    return web["keyed"]


@pytest.fixture(scope="module")
def prefixed_api(web: dict[str, str]) -> str:
    return web["prefixed"]


def create_key(database: str, name: str) -> str:
    made = subprocess.run([sys.executable, "-m", "mediagen", "keys", "create", name],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DATABASE_URL": database})
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[1]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


class Visit:
    """A fresh browser context on one server, recording every request and page error."""

    def __init__(self, page: Page, base: str) -> None:
        self.page, self.base = page, base
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def foreign(self) -> list[str]:
        origin = urlsplit(self.base).netloc
        return [url for url in self.requests
                if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).netloc != origin]

    async def shot(self, name: str, full_page: bool = False) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"{name}.png", full_page=full_page)
        if PUBLISH:
            Path(PUBLISH).mkdir(parents=True, exist_ok=True)
            shutil.copy(SHOTS / f"{name}.png", Path(PUBLISH) / f"{name}.png")


async def visit(browser: Browser, base: str, width: int = 1280, height: int = 900,
                key: str | None = None) -> Visit:
    context = await browser.new_context(viewport={"width": width, "height": height})
    if key:
        await context.add_init_script(f"localStorage.setItem('mediagen.apiKey', {key!r})")
    page = await context.new_page()
    seen = Visit(page, base)
    await page.goto(base + "/")
    return seen


async def submit(page: Page, prompt: str) -> None:
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_label("Width").select_option("256")
    await page.get_by_label("Height").select_option("256")
    await page.get_by_role("button", name="Generate", exact=True).click()


async def live_job_id(page: Page) -> str:
    """The job the page is following (the newest card in the gallery is the same)."""
    live = page.locator("#live")
    await expect(live).to_have_attribute("data-job-id", re.compile(r"^[0-9a-f-]{36}$"))
    job_id = await live.get_attribute("data-job-id") or ""
    await expect(page.locator("#gallery li").first).to_have_attribute("data-job-id", job_id)
    return job_id


SCENES = ["a lighthouse on a cliff at night under the stars", "green hills and a lake at dawn",
          "a desert at noon", "a pine forest by a lake in autumn, orange sky",
          "moonlight over the sea"]


async def test_submit_see_progress_then_the_image_find_it_and_open_it(
    browser: Browser, slow_stack: str
) -> None:
    async with httpx.AsyncClient(base_url=slow_stack) as http:  # a gallery to look at
        for prompt in SCENES:
            body = {"prompt": prompt, "parameters": {"width": 256, "height": 256, "seed": 7}}
            assert (await http.post("/api/v1/generate", json=body)).status_code == 201
    seen = await visit(browser, slow_stack)
    page = seen.page
    await submit(page, "a red fox in the snow at sunset, mountains and pine trees")
    status = page.locator("#live-status")
    await expect(status).to_contain_text("processing", timeout=15_000)
    await expect(page.locator("#live-progress")).to_be_visible()
    await expect(page.locator("#live-cancel")).to_be_visible()
    await seen.shot("web-progress")

    image = page.locator("#live-outputs img")
    await expect(image).to_be_visible(timeout=20_000)
    await expect(status).to_have_text("Status: completed")
    await expect(page.locator("#live-cancel")).to_be_hidden()
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 256
    job_id = await live_job_id(page)
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "completed"
        stored = (TMP / "media" / f"{job_id}.png").read_bytes()
        # The page shows what storage holds, and its download link serves those bytes.
        link = page.locator("#live-outputs a.download")
        href = await link.get_attribute("href") or ""
        assert href.split("?")[0] == job["outputs"][0]["url"].split("?")[0]
        assert (await http.get(href)).content == stored
        assert await link.get_attribute("download") == f"{job_id}.png"

    # In the gallery, with its thumbnail and status; open it.
    card = page.locator(f'#gallery li[data-job-id="{job_id}"]')
    await expect(card.locator(".badge")).to_have_text("completed")
    await expect(card.locator("img")).to_be_visible()
    await page.get_by_role("button", name="Refresh").click()  # from the server, not the page
    await expect(card.locator("img")).to_be_visible()
    await page.mouse.move(0, 0)
    await expect(page.locator("#gallery img")).to_have_count(len(SCENES) + 1)
    # Every thumbnail loaded, none broken. (Polled from here: wait_for_function would evaluate
    # a string in the page, which its Content-Security-Policy rightly forbids.)
    loaded = "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)"
    for _ in range(100):
        if await page.evaluate(loaded):
            break
        await page.wait_for_timeout(100)
    else:
        raise AssertionError("gallery thumbnails did not all load")
    await seen.shot("web-page")
    await card.get_by_role("button").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#detail-status")).to_have_text("Status: completed")
    await expect(dialog.locator("#detail-outputs img")).to_be_visible()
    await expect(dialog.locator("#detail-facts")).to_contain_text(job_id)
    await expect(dialog.locator("#detail-cancel")).to_be_hidden()
    assert page.url.endswith(f"#job={job_id}")
    await seen.shot("web-detail")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page).not_to_have_url(re.compile("#job="))

    # A link to the detail opens it directly.
    await page.goto(f"{slow_stack}/#job={job_id}")
    await expect(page.get_by_role("dialog").locator("#detail-outputs img")).to_be_visible()
    assert seen.errors == []
    assert seen.foreign() == []


async def test_several_outputs_each_with_its_player_and_download(
    browser: Browser, slow_stack: str
) -> None:
    seen = await visit(browser, slow_stack)
    page = seen.page
    await page.get_by_text("More options").click()
    await page.get_by_label("Seed").fill("42")
    await page.get_by_label("Outputs").select_option("2")
    await page.get_by_label("Format").select_option("webp")
    await submit(page, "two lighthouses at night")
    await expect(page.locator("#live-outputs img")).to_have_count(2, timeout=20_000)
    job_id = await live_job_id(page)
    links = await page.locator("#live-outputs a.download").evaluate_all(
        "links => links.map(a => [a.getAttribute('href'), a.getAttribute('download')])")
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["parameters"]["seed"] == 42 and job["parameters"]["output_format"] == "webp"
    stored = [urlsplit(o["url"]).path for o in job["outputs"]]
    assert [urlsplit(href).path for href, _ in links] == stored
    assert [name for _, name in links] == [path.rsplit("/", 1)[1] for path in stored]
    assert len(set(stored)) == 2 and all(name.endswith(".webp") for _, name in links)
    assert [o["content_type"] for o in job["outputs"]] == ["image/webp", "image/webp"]


async def test_the_model_field_offers_the_server_s_models(browser: Browser, slow_stack: str) -> None:
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        models = (await http.get("/api/v1/models")).json()["data"]
    seen = await visit(browser, slow_stack)
    page = seen.page
    offered = page.locator("#model-list option")
    await expect(offered).to_have_count(len(models))
    assert await offered.evaluate_all("o => o.map(x => x.value)") == [m["name"] for m in models]
    default = next(m["name"] for m in models if m["default"])
    await expect(page.get_by_label("Model")).to_have_attribute("placeholder", f"{default} (default)")


async def test_a_bad_input_is_explained_next_to_the_form(
    browser: Browser, slow_stack: str
) -> None:
    seen = await visit(browser, slow_stack)
    page = seen.page
    await page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator("#form-error")
    await expect(error).to_have_text("Write a prompt first.")
    await expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    # The server's own validation: a model name it refuses.
    await page.get_by_text("More options").click()
    await page.get_by_label("Model").fill("not a model!")
    await submit(page, "a fox")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("model")
    assert "#live" not in page.url and await page.locator("#live").is_hidden()


async def test_an_expired_job_shows_as_finished(
    browser: Browser, slow_stack: str, fresh_database: str
) -> None:
    """A completed job whose outputs retention deleted: its card and detail say `expired` and
    why, with no cancel button or progress bar, and the page does not follow it."""
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        body = {"prompt": "a fox kept a minute", "parameters": {"width": 64, "height": 64},
                "retention": 60}
        job_id = (await http.post("/api/v1/generate", json=body)).json()["job_id"]
        for _ in range(200):
            if (await http.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        # What retention does to it (mediagen.jobs.retention), on this module's database.
        db = await asyncpg.connect(fresh_database)
        try:
            moved = await db.execute(
                "UPDATE jobs SET status = 'expired', outputs = '[]'::jsonb, result_key = NULL, "
                "error = $2, updated_at = now() WHERE id = $1 AND status = 'completed'",
                uuid.UUID(job_id), EXPIRED_NOTE)
        finally:
            await db.close()
        assert moved == "UPDATE 1"
        for path in (TMP / "media").glob(f"{job_id}*"):
            path.unlink()
        assert (await http.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "expired"

    seen = await visit(browser, slow_stack)
    page = seen.page
    card = page.locator(f'#gallery li[data-job-id="{job_id}"]')
    await expect(card.locator(".badge")).to_have_text("expired")
    await expect(card.locator(".placeholder")).to_have_text("□")  # finished: no "…"
    await card.get_by_role("button").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.locator("#detail-status")).to_have_text("Status: expired")
    await expect(dialog.locator("#detail-error")).to_have_text(EXPIRED_NOTE)
    await expect(dialog.locator("#detail-cancel")).to_be_hidden()
    await expect(dialog.locator("#detail-progress")).to_be_hidden()
    await expect(dialog.locator("#detail-outputs")).to_be_empty()
    await page.wait_for_timeout(1000)  # time enough to start following it, if it would
    assert [url for url in seen.requests if url.endswith(f"/jobs/{job_id}/events")] == []
    assert seen.errors == []


async def test_cancel_a_waiting_job(browser: Browser, idle_api: str) -> None:
    seen = await visit(browser, idle_api)
    page = seen.page
    await submit(page, "a job that will be canceled")
    status = page.locator("#live-status")
    await expect(status).to_contain_text("pending")
    job_id = await live_job_id(page)
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(status).to_contain_text("canceled")
    await expect(page.locator(f'#gallery li[data-job-id="{job_id}"] .badge')).to_have_text(
        "canceled")
    async with httpx.AsyncClient(base_url=idle_api) as http:
        assert (await http.get(f"/api/v1/status/{job_id}")).json()["status"] == "canceled"

    # From the detail view too.
    await submit(page, "another job to cancel")
    await expect(status).to_contain_text("pending")
    other = await live_job_id(page)
    assert other != job_id
    await page.locator(f'#gallery li[data-job-id="{other}"] button').click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.locator("#detail-status")).to_contain_text("pending")
    await dialog.get_by_role("button", name="Cancel job").click()
    await expect(dialog.locator("#detail-status")).to_contain_text("canceled")
    await expect(dialog.get_by_role("button", name="Cancel job")).to_be_hidden()
    async with httpx.AsyncClient(base_url=idle_api) as http:
        assert (await http.get(f"/api/v1/status/{other}")).json()["status"] == "canceled"
    assert seen.errors == []


async def test_a_waiting_job_shows_its_place_in_the_queue(browser: Browser, idle_api: str) -> None:
    """The page follows the queue position from the job's events (no polling): a job ahead
    leaving the queue moves it up."""
    async with httpx.AsyncClient(base_url=idle_api) as http:
        response = await http.post("/api/v1/generate", json={"prompt": "a job ahead"})
        ahead = response.json()["job_id"]
        seen = await visit(browser, idle_api)
        page = seen.page
        await submit(page, "a job in line")
        job_id = await live_job_id(page)
        status = page.locator("#live-status")
        await expect(status).to_contain_text(re.compile(r"pending \(\d+ ahead in the queue\)"))
        before = int((await status.text_content() or "").split("(")[1].split()[0])
        assert (await http.post(f"/api/v1/jobs/{ahead}/cancel")).status_code == 200
        after = f"({before - 1} ahead in the queue)" if before > 1 else "(next in line)"
        await expect(status).to_contain_text(f"pending {after}")
        await http.post(f"/api/v1/jobs/{job_id}/cancel")
    detail = f"/api/v1/jobs/{job_id}"
    assert [url for url in seen.requests if url.endswith(detail)] == [], seen.requests
    assert seen.errors == []


async def test_a_waiting_job_says_when_its_model_is_paused(
    browser: Browser, idle_api: str
) -> None:
    """A pause (as `mediagen models pause` leaves it in the queues; the idle stack runs no
    sweeper to undo it) reaches the page through the job's `queue` events, and so does the
    resume."""
    async with httpx.AsyncClient(base_url=idle_api) as http:
        models = (await http.get("/api/v1/models")).json()["data"]
    default = next(m["name"] for m in models if m["default"])
    queues = aioredis.from_url(IDLE_REDIS[0])
    seen = await visit(browser, idle_api)
    page = seen.page
    try:
        await submit(page, "a job whose model is paused")
        job_id = await live_job_id(page)
        status = page.locator("#live-status")
        await expect(status).to_contain_text(re.compile(r"pending \((\d+ ahead|next)"))
        await expect(status).not_to_contain_text("paused")
        await queues.sadd(PAUSED, default)
        await expect(status).to_contain_text("(its model is paused)")
        await queues.srem(PAUSED, default)
        await expect(status).not_to_contain_text("paused")
        await expect(status).to_contain_text("pending")
    finally:
        await queues.srem(PAUSED, default)
        await queues.aclose()
    async with httpx.AsyncClient(base_url=idle_api) as http:
        await http.post(f"/api/v1/jobs/{job_id}/cancel")
    assert seen.errors == []


async def test_the_gallery_scrolls_through_every_page(browser: Browser, idle_api: str) -> None:
    async with httpx.AsyncClient(base_url=idle_api) as http:
        listed = (await http.get("/api/v1/jobs", params={"limit": 100})).json()
        before = len(listed["data"])
        for n in range(30):
            created = await http.post(
                "/api/v1/generate",
                json={"prompt": f"gallery job {n}", "parameters": {"width": 64, "height": 64}},
            )
            assert created.status_code == 201
        total = before + 30
        assert total <= 100  # one page of the API holds them all for the comparison below
        expected = [j["job_id"] for j in
                    (await http.get("/api/v1/jobs", params={"limit": 100})).json()["data"]]
    seen = await visit(browser, idle_api, height=700)
    page = seen.page
    cards = page.locator("#gallery li")
    await expect(cards).to_have_count(24)  # the first page; the rest waits for a scroll
    await page.locator("#more").scroll_into_view_if_needed()
    await expect(cards).to_have_count(min(total, 48))
    while await cards.count() < total:
        await page.locator("#more").scroll_into_view_if_needed()
        await page.wait_for_timeout(100)
    await expect(page.locator("#gallery-status")).to_have_text("That is all of your jobs.")
    shown = await cards.evaluate_all("cards => cards.map(c => c.dataset.jobId)")
    assert shown == expected  # newest first, none twice, none missing
    assert seen.errors == []


async def test_a_key_protected_server_with_and_without_a_key(
    browser: Browser, keyed_api: str, fresh_database: str
) -> None:
    key = create_key(fresh_database, "web-page")
    seen = await visit(browser, keyed_api)
    page = seen.page
    dialog = page.get_by_role("dialog", name="API key")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("This server needs an API key.")
    await expect(page.get_by_label("Your API key")).to_be_focused()
    await seen.shot("web-key")
    await page.get_by_label("Your API key").fill("mg_not-a-real-key")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_contain_text("This key was not accepted")

    await page.get_by_label("Your API key").fill(key)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="API key ✓")).to_be_visible()
    await submit(page, "a fox behind a key")
    await expect(page.locator("#live-outputs img")).to_be_visible(timeout=20_000)
    job_id = await live_job_id(page)
    async with httpx.AsyncClient(base_url=keyed_api) as http:
        assert (await http.get(f"/api/v1/jobs/{job_id}")).status_code == 401
        mine = await http.get(f"/api/v1/jobs/{job_id}",
                              headers={"Authorization": f"Bearer {key}"})
        assert mine.json()["status"] == "completed"

    # Kept in the browser: a reload needs no key again; forgetting it asks again.
    await page.reload()
    await expect(page.locator(f'#gallery li[data-job-id="{job_id}"]')).to_be_visible()
    await expect(dialog).to_be_hidden()
    await page.get_by_role("button", name="API key ✓").click()
    await dialog.get_by_role("button", name="Forget key").click()
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("This server needs an API key.")
    assert await page.evaluate("localStorage.getItem('mediagen.apiKey')") is None
    assert seen.foreign() == []


async def test_a_phone_wide_screen(browser: Browser, slow_stack: str) -> None:
    seen = await visit(browser, slow_stack, width=390, height=844)
    page = seen.page
    await submit(page, "a small fox on a small screen")
    await expect(page.locator("#live-outputs img")).to_be_visible(timeout=20_000)
    # Nothing wider than the screen: no sideways scrolling.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    for control in ("Prompt", "Width", "Height", "Outputs", "Format"):
        box = await page.get_by_label(control, exact=True).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
        assert box["height"] >= 40, control  # big enough to tap
    image = await page.locator("#live-outputs img").bounding_box()
    assert image and image["width"] <= 390
    await page.evaluate("window.scrollTo(0, 0)")
    await seen.shot("web-phone")
    assert seen.errors == []


def _luminance(rgb: list[float]) -> float:
    def channel(value: float) -> float:
        value /= 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(fg: list[float], bg: list[float]) -> float:
    light, dark = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


COLOURS = """el => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  let node = el, bg = null;
  while (node && !bg) {
    const c = getComputedStyle(node).backgroundColor;
    if (rgb(c).length < 4 || rgb(c)[3] > 0) bg = c;
    node = node.parentElement;
  }
  return [rgb(getComputedStyle(el).color), rgb(bg || 'rgb(255,255,255)')];
}"""


async def test_labels_focus_and_contrast(browser: Browser, slow_stack: str) -> None:
    seen = await visit(browser, slow_stack)
    page = seen.page
    # The keyboard reaches the skip link first, then the form, with a visible focus ring.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to your jobs")).to_be_focused()
    for _ in range(3):
        await page.keyboard.press("Tab")
    await expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    ring = await page.get_by_label("Prompt", exact=True).evaluate(
        "el => getComputedStyle(el).outlineStyle")
    assert ring != "none"
    await page.get_by_text("More options").click()
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll(
        'input, select, textarea')].filter(c => !c.labels.length && !c.getAttribute('aria-label'))
        .map(c => c.id || c.name)""")
    assert unlabelled == []
    nameless = await page.evaluate("""() => [...document.querySelectorAll('button, a')]
        .filter(b => b.checkVisibility() && !(b.getAttribute('aria-label') || b.textContent.trim()))
        .map(b => b.outerHTML)""")
    assert nameless == []
    # Text against its background: WCAG AA (4.5:1) for every kind of text on the page.
    for selector in ("h1", "h2", "label", ".hint", "#submit", "#refresh", "summary",
                     "a[href='/docs']"):
        fg, bg = await page.locator(selector).first.evaluate(COLOURS)
        assert _contrast(fg, bg) >= 4.5, (selector, fg, bg)


async def test_the_page_loads_nothing_from_elsewhere(slow_stack: str) -> None:
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        page = await http.get("/")
        script = await http.get("/assets/app.js")
        icon = await http.get("/favicon.ico", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "http://" not in page.text and "https://" not in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "http://" not in script.text and "https://" not in script.text
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert '"maxPromptLength": 2000' in page.text  # the form's limits come from the settings


async def test_the_page_under_a_path_prefix(browser: Browser, prefixed_api: str) -> None:
    """Served under /mg (ROOT_PATH), as a load balancer routing that path would: the page loads
    its script and styles, calls the API, follows the job and shows its image, every request
    under the prefix."""
    seen = await visit(browser, f"{prefixed_api}/mg")
    page = seen.page
    await submit(page, "a red fox in the snow, served under a path prefix")
    image = page.locator("#live-outputs img")
    await expect(image).to_be_visible(timeout=20_000)
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 256
    await expect(page.locator("#gallery li").first.locator("img")).to_be_visible()
    paths = [urlsplit(url).path for url in seen.requests if url.startswith("http")]
    assert paths and all(path.startswith("/mg/") for path in paths), paths
    assert seen.errors == [] and seen.foreign() == []


async def test_the_gallery_shows_thumbnails_not_the_full_images(
    browser: Browser, slow_stack: str
) -> None:
    """Large images: each card loads its output's thumbnail (a small copy the worker made),
    never the full image."""
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        created = [
            (await http.post("/api/v1/generate", json={
                "prompt": prompt, "parameters": {"width": 1024, "height": 768}})).json()["job_id"]
            for prompt in ("a big harbour at dusk", "a big field of sunflowers")
        ]
        details = [await wait_terminal(http, job_id) for job_id in created]
    assert all(detail["status"] == "completed" for detail in details), details
    seen = await visit(browser, slow_stack)
    page = seen.page
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        for detail in details:
            job_id, [output] = detail["job_id"], detail["outputs"]
            image = page.locator(f'#gallery li[data-job-id="{job_id}"] img')
            await expect(image).to_be_visible()
            src = await image.get_attribute("src") or ""
            assert urlsplit(src).path == urlsplit(output["thumbnail_url"]).path
            assert urlsplit(src).path == f"/media/{job_id}.thumb.webp"
            for _ in range(100):
                if natural := await image.evaluate("img => img.complete && img.naturalWidth"):
                    break
                await page.wait_for_timeout(100)
            assert natural == 256
            fetched = await http.get(src)
            assert fetched.status_code == 200
            assert fetched.headers["content-type"] == "image/webp"
            with Image.open(io.BytesIO(fetched.content)) as small:
                assert small.size == (256, 192)
            assert len(fetched.content) < output["size"] / 4
            full = urlsplit(output["url"]).path
            assert [url for url in seen.requests if urlsplit(url).path == full] == []
    assert seen.errors == []


def _picture(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path, "PNG")
    return path


async def test_an_input_image_is_uploaded_and_given_to_the_job(
    browser: Browser, slow_stack: str, tmp_path: Path
) -> None:
    seen = await visit(browser, slow_stack)
    page = seen.page
    picked = _picture(tmp_path / "input.png")
    await page.get_by_label("Input image").set_input_files(picked)
    chosen = page.locator("#image-chosen")
    await expect(chosen.locator("#image-state")).to_have_text(re.compile(r"^input\.png \(\d"))
    assert await chosen.locator("img").evaluate("img => img.complete && img.naturalWidth") == 320
    await submit(page, "a fox from a picture")
    job_id = await live_job_id(page)
    async with httpx.AsyncClient(base_url=slow_stack) as http:
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        uri = job["parameters"]["image"]
        assert re.fullmatch(r"mediagen://files/[0-9a-f-]{36}", uri), uri
        uploaded = (await http.get(f"/api/v1/files/{uri.rsplit('/', 1)[1]}")).json()
        assert uploaded["filename"] == "input.png" and uploaded["content_type"] == "image/png"
        assert uploaded["size"] == picked.stat().st_size
        assert (await wait_terminal(http, job_id))["status"] == "completed"

        # Removed: the next job names none.
        await page.get_by_role("button", name="Remove image").click()
        await expect(chosen).to_be_hidden()
        await submit(page, "a fox without a picture")
        await expect(page.locator("#live")).not_to_have_attribute("data-job-id", job_id)
        other = await live_job_id(page)
        assert "image" not in (await http.get(f"/api/v1/jobs/{other}")).json()["parameters"]

    # Dropped on the form, as a file from the desktop would be.
    png = base64.b64encode(_picture(tmp_path / "dropped.png", (100, 80)).read_bytes()).decode()
    transfer = await page.evaluate_handle("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        return transfer;
    }""", png)
    await page.locator("#generate-form").dispatch_event("drop", {"dataTransfer": transfer})
    await expect(chosen.locator("#image-state")).to_have_text(re.compile(r"^dropped\.png \(\d"))

    # What the upload refuses is said where the form's errors are, and nothing stays chosen.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    await page.get_by_label("Input image").set_input_files(notes)
    error = page.locator("#form-error")
    await expect(error).to_contain_text("The image was not uploaded")
    await expect(chosen).to_be_hidden()
    assert seen.errors == []

"""The HTTP console end to end: a real wrennd under fcsim, its page driven in headless Chromium.

Debian's chromium and chromium-driver (deps/debian-packages.txt) run the page
through Selenium; assertions are on the DOM.  Screenshots go to
``build/test-artifacts/console/`` (or ``$WRENND_TEST_ARTIFACTS``).  /metrics
is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.sandbox.running_daemon import Daemon
from tests.polling import wait_for_blocking
from wrennd.rpc.client import Client
from wrennd_sim.fcsim.control import ControlClient

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get("WRENND_TEST_ARTIFACTS", Path(__file__).parents[3] / "build/test-artifacts")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Console:
    """A wrennd process with the console on a loopback port."""

    def __init__(self, place: Any) -> None:
        self.place = place
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = Daemon(place)
        self.log = self.daemon.log
        # The metrics test counts the engine's demand faults: serve them lazily (with
        # background fill an untouched guest's engine detaches at once).
        self.daemon.start(WRENND_HTTP_LISTEN=f"127.0.0.1:{self.port}", WRENND_UFFD_FILL="lazy")
        wait_for_blocking(self._healthy, timeout=30, what="the console to come up")
        self.token = (place.run_dir / "http.token").read_text().strip()

    def _healthy(self) -> bool:
        assert self.daemon.alive(), self.log.read_text()[-5000:]
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> str:
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.read().decode())

    def running(self) -> bool:
        return self.daemon.alive()

    def stop(self) -> int:
        return self.daemon.stop(signal.SIGTERM)


async def touch_memory(place: Any, sid: str) -> None:
    """fcsim's guests leave their memory alone: touch pages through its control socket,
    so the sandbox's UFFD engine serves faults."""
    c = await Client.connect(place.run_dir / "wrennd.sock")
    try:
        control = (await c.call("sandbox.get", {"id": sid}))["vmm"]["control_socket"]
    finally:
        await c.close()
    fcsim = ControlClient(Path(control))
    try:
        await fcsim.call("touch", count=4096, order="random", arg=1)
    finally:
        await fcsim.close()


@pytest.fixture
def console(place: Any) -> Iterator[Console]:
    c = Console(place)
    yield c
    if c.running():
        assert c.stop() == 0, c.log.read_text()[-3000:]
    assert not (place.run_dir / "http.token").exists()


async def test_metrics_after_create_pause_resume(console: Console, place: Any) -> None:
    c = await Client.connect(place.run_dir / "wrennd.sock")
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    await touch_memory(place, sid)
    with pytest.raises(Exception, match="Invalid params"):
        await c.call("sandbox.pause", {"id": "nope"})
    text = await asyncio.to_thread(console.get, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in families.values()}
    assert ("wrennd_sandboxes", {"state": "running"}, 1.0) in samples["wrennd_sandboxes"]
    stages = {
        (s.labels["operation"], s.labels["stage"])
        for s in families["wrennd_lifecycle_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert {("sandbox.pause", "snapshot"), ("sandbox.pause", "total")} <= stages
    assert {("sandbox.resume", "snapshot_load"), ("sandbox.create", "boot")} <= stages
    assert families["wrennd_uffd_fault_latency_seconds"].type == "histogram"
    pages = {s.labels["class"]: s.value for s in families["wrennd_uffd_pages"].samples}
    assert set(pages) == {"copied", "zeroed", "prefetched"} and sum(pages.values()) > 0
    faults = families["wrennd_uffd_fault_latency_seconds"].samples
    assert next(s.value for s in faults if s.name.endswith("_count")) > 0
    calls = {s.labels["method"]: s.value for s in families["wrennd_rpc_calls"].samples}
    assert calls["sandbox.pause"] == 2 and calls["sandbox.create"] == 1
    errors = families["wrennd_rpc_errors"].samples
    assert any(s.labels == {"method": "sandbox.pause", "code": "-32602"} for s in errors)
    assert "wrennd_rpc_duration_seconds" in families
    lag = {s.labels["quantile"] for s in families["wrennd_event_loop_lag_seconds"].samples}
    assert {"0.5", "0.99"} <= lag
    value = {n: families[n].samples[0].value for n in ("wrennd_images", "wrennd_templates")}
    assert value == {"wrennd_images": 1, "wrennd_templates": 0}
    assert families["wrennd_image_disk_bytes"].samples[0].value > 0
    assert "wrennd_template_disk_bytes" in families
    corrupt = {
        s.labels["kind"]: s.value for s in families["wrennd_scrub_corrupt_snapshots"].samples
    }
    assert corrupt == {"sandbox": 0, "template": 0}
    assert families["wrennd_scrub_passes"].type == "counter"
    assert "wrennd_scrub_checked_bytes" in families
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    # An open page (a WebSocket) does not hold the daemon's stop up.
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {console.token}"}) as http,
        http.ws_connect(f"{console.url}/rpc") as ws,
    ):
        await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "host.info"})
        assert "result" in await ws.receive_json()
        started = time.monotonic()
        assert await asyncio.to_thread(console.stop) == 0
        assert time.monotonic() - started < 10
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


# --- the page in a real browser ------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: make install (deps/)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(tmp_path), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_window_size(1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The console page, and waits on its DOM."""

    def __init__(self, driver: Any, shots: Path) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.by = By
        # The page keeps its rows and updates them in place; a stale element is still
        # possible when a row goes away, and the wait then simply looks again.
        self.wait = WebDriverWait(
            driver, 60, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        self.shots = shots

    def find(self, css: str) -> Any:
        return self.d.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return list(self.d.find_elements(self.by.CSS_SELECTOR, css))

    def until(self, css: str, text: str | None = None) -> Any:
        def found(_: Any) -> Any:
            for e in self.all(css):
                if text is None or text in e.text:
                    return e
            return False

        return self.wait.until(found, f"{css} {text or ''}")

    def gone(self, css: str) -> None:
        self.wait.until(lambda _: not self.all(css), f"{css} still there")

    def fill(self, css: str, value: str) -> None:
        e = self.find(css)
        e.clear()
        e.send_keys(value)

    def click(self, css: str) -> None:
        self.until(css).click()

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path


def test_console_page_drives_a_sandbox_lifecycle(
    console: Console, browser: Any, place: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    page = Page(browser, ARTIFACTS / "console")
    browser.get(f"{console.url}/test?token={console.token}")
    assert browser.current_url == f"{console.url}/test"  # the token left the address bar
    page.until("#link", "live")
    page.until("#create-source option[value='image:base']")
    Select(page.find("#create-source")).select_by_value("image:base")
    page.fill("#create-memory", "64")
    page.click("#create-btn")
    row = page.until("#sandboxes tbody tr[data-state='running']")
    sid = row.get_attribute("data-id")
    first = f"#sandboxes tr[data-id='{sid}']"
    page.click(f"{first} td")
    page.until("#detail-id", sid)

    page.fill("#exec-cmd", "for i in 1 2 3; do echo line$i; done; echo oops >&2; exit 3")
    page.click("#exec-run")
    page.until("#exec-status", "exit code 3")
    assert page.find("#exec-out").text.split() == ["line1", "line2", "line3", "oops"]

    upload = tmp_path / "hello.txt"
    upload.write_text("uploaded from the browser\n")
    page.find("#upload-file").send_keys(str(upload))
    page.fill("#upload-path", "/root/hello.txt")
    page.click("#upload-btn")
    page.until("#upload-status", "uploaded 26 bytes")
    page.fill("#download-path", "/root/hello.txt")
    page.click("#download-btn")
    page.until("#download-status", "26 bytes from /root/hello.txt")
    assert page.find("#download-preview").text == "uploaded from the browser"
    page.shot("console-running")

    page.click(f"{first} .act-pause")
    page.until(f"{first}[data-state='paused']")
    page.until("#activity[data-done='sandbox.pause']")
    stages = [li.get_attribute("data-stage") for li in page.all("#activity-stages li")]
    assert stages[0] == "prepare" and "snapshot" in stages and "ingest" in stages, stages
    bar = page.find("#activity-bar")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "7"  # a pause: 7 stages
    assert page.find(f"{first} .t-pause").text.endswith(("ms", "s"))

    page.click("#exec-run")  # a paused sandbox: the page shows the API's error message
    page.until("#error-text", "paused")
    page.click("#error-close")

    page.click(f"{first} .act-resume")
    page.until(f"{first}[data-state='running']")
    page.until("#activity[data-done='sandbox.resume']")
    shown = [li.get_attribute("data-stage") for li in page.all("#activity-stages li")]
    assert "snapshot_load" in shown
    asyncio.run(touch_memory(place, sid))
    page.wait.until(lambda _: page.find("#faults dd[data-fact='faults']").text not in ("", "0"))
    page.until("#fault-hist div")
    assert max(bar.size["height"] for bar in page.all("#fault-hist div")) > 20  # drawn, not flat
    page.click("#exec-run")  # the resumed sandbox runs commands again
    page.until("#exec-status", "exit code 3")
    assert "line3" in page.find("#exec-out").text
    page.shot("console-1280x800")

    page.fill("#template-name", "tpl-web")
    page.click("#template-btn")
    page.until("#templates tr[data-name='tpl-web']")
    page.click("#templates tr[data-name='tpl-web'] .act-clone")
    clone = page.until("#sandboxes tbody tr[data-state='running']", "template tpl-web")
    assert clone.get_attribute("data-id") != sid
    browser.set_window_size(430, 900)
    page.shot("console-narrow")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 430
    browser.set_window_size(1280, 800)

    for _ in range(2):
        page.click("#sandboxes tbody tr .act-destroy")
        page.until("#activity[data-done='sandbox.destroy']")
        browser.execute_script("document.getElementById('activity').dataset.done = ''")
    page.gone("#sandboxes tbody tr")
    page.click("#templates tr[data-name='tpl-web'] .act-delete")
    page.gone("#templates tr[data-name='tpl-web']")

    async def leftovers() -> tuple[Any, Any]:
        c = await Client.connect(place.run_dir / "wrennd.sock")
        try:
            return await c.call("sandbox.list"), await c.call("template.list")
        finally:
            await c.close()

    # No script error and no Content-Security-Policy violation on the way.
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    sandboxes, templates = asyncio.run(leftovers())
    assert sandboxes["sandboxes"] == [] and templates["templates"] == []

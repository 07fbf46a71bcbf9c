"""The Ray dashboard, in a real browser, shows a submitted run. A head with token auth on (Ray 2.60 turns
it on for every local ray.init, and for `ray start` wherever a token exists), a tiny PPO job running on
it, and headless Chromium driven over the DevTools protocol the way a person uses the page: it asks for
the token, the token is typed in and submitted, and then the Jobs page lists the job and the Actors page
the run's named actors, alive.

Slow, and needs a Chromium binary (Debian: `apt-get install chromium`); skipped without one. With
RLHF_RAY_SCREENSHOTS=DIR set it saves the login dialog, the Jobs page and the Actors page there
(docs/img/dashboard*.png are these).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from conftest import tiny_overrides
from rlhf_ray.roles.base import free_port
from test_job_submission import ROLES, ROOT, ray_head  # noqa: F401  (ray_head: the fixture)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
LOGIN_TITLE = "Authentication Token Required"  # the dashboard's dialog (ray/dashboard/client/build/static/js)
TOKEN_FIELD = 'input[placeholder="Enter your authentication token"]'


class Page:
    """One tab of a headless Chromium, over the DevTools protocol (no browser downloads: the distro's binary)."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:  # events and older replies are skipped
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def text(self) -> str:
        return await self.js("document.body ? document.body.innerText : ''") or ""

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def wait_for(self, *needles: str, timeout: float = 90) -> str:
        """The page's visible text once it holds every needle (the dashboard fetches and renders late)."""
        deadline = time.monotonic() + timeout
        while True:
            text = await self.text()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                return text
            await asyncio.sleep(1)

    async def until(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")
            await asyncio.sleep(0.5)

    @staticmethod
    def button(label: str) -> str:
        return f"[...document.querySelectorAll('button')].find(b => b.textContent.trim() === {json.dumps(label)})"

    async def click(self, label: str) -> None:
        """A real mouse click in the middle of the button labelled `label`, once it is enabled."""
        button = self.button(label)
        await self.until(f"{button} && !{button}.disabled")
        x, y = await self.js(f"(() => {{ const r = {button}.getBoundingClientRect(); "
                             f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", text=text)  # as typed: React sees its input events

    async def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"]))


def start_chromium(profile: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-crash-reporter",
                             "--disable-breakpad", f"--remote-debugging-port={port}",
                             f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                pytest.fail(f"{CHROMIUM} did not open its DevTools port within 60 s")
            time.sleep(0.5)


async def look_at_dashboard(dashboard: str, token: str, port: int, shots: Path) -> dict[str, str]:
    """Log in as a person does and read the Jobs and Actors pages; returns each page's visible text."""
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    seen = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.open(f"{dashboard}/#/jobs")
        seen["before login"] = await page.wait_for(LOGIN_TITLE)
        assert LOGIN_TITLE in seen["before login"], seen["before login"][-2000:]
        await page.type_into(TOKEN_FIELD, token)
        await page.until(f"!{page.button('Submit')}.disabled")  # the dialog took the typed token
        await asyncio.sleep(1)  # the button's colour transition, for the screenshot
        await page.screenshot(shots / "dashboard_login.png")
        await page.click("Submit")  # the dashboard checks it, keeps it in a cookie and reloads
        await asyncio.sleep(3)
        await page.open(f"{dashboard}/#/jobs")
        seen["jobs"] = await page.wait_for("dash-run", "RUNNING")
        await page.screenshot(shots / "dashboard_jobs.png")
        await page.open(f"{dashboard}/#/actors")
        seen["actors"] = await page.wait_for(*(f"{role}-0" for role in ROLES), "ALIVE")
        await page.screenshot(shots / "dashboard.png")
    return seen


def wait_for_run_actors(head, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        actors = head.run_actors()
        if all(actors.get(f"{role}-0", {}).get("state") == "ALIVE" for role in ROLES):
            return
        time.sleep(3)
    pytest.fail(f"the run's actors were not all alive after {timeout:.0f} s: {sorted(head.run_actors())}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_dashboard_shows_the_job_and_its_actors_after_token_login(ray_head, tiny_policy, tmp_path):  # noqa: F811
    # Enough steps to be still running while the browser looks; stopped once it has.
    overrides = tiny_overrides(tiny_policy, tmp_path / "run", "rollout.backend=hf", "trainer.total_steps=1000")
    submitted = ray_head.cli("submit", *overrides, "--address", ray_head.dashboard, "--working-dir", str(ROOT),
                             "--job-id", "dash-run")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "asks for the cluster's token" in submitted.stdout
    shots = Path(os.environ.get("RLHF_RAY_SCREENSHOTS") or tmp_path)
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))  # fresh: no cookie from an earlier login
    try:
        wait_for_run_actors(ray_head)
        browser, port = start_chromium(profile)
        try:
            seen = asyncio.run(asyncio.wait_for(look_at_dashboard(ray_head.dashboard, ray_head.token, port, shots),
                                                timeout=300))
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
    finally:
        ray_head.cli("jobs", "stop", "dash-run", "--address", ray_head.dashboard)
    # Without the token the page shows only the login dialog: the job list needs the token.
    assert "dash-run" not in seen["before login"], seen["before login"][-2000:]
    assert "dash-run" in seen["jobs"] and "RUNNING" in seen["jobs"], seen["jobs"][-2000:]
    for role in ROLES:
        assert f"{role}-0" in seen["actors"], seen["actors"][-3000:]
    assert "ALIVE" in seen["actors"] and LOGIN_TITLE not in seen["actors"]

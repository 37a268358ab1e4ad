"""A real headless Chromium, driven over the DevTools protocol on a pipe: no Python dependency, no port.

`open_page` starts the browser with ``--remote-debugging-pipe`` (it reads commands on fd 3 and writes
answers and events on fd 4, each a JSON message ended by a NUL byte), loads one page, and returns what a
test asserts on: the console errors and uncaught exceptions, every URL the page asked for, the page's
text and a screenshot. `find_browser` says which browser is installed (Debian's ``chromium`` package).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> Optional[str]:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)  # console.error calls, uncaught exceptions, failed loads
    requested: list[str] = field(default_factory=list)  # every URL the page asked for
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # PNG of the viewport


class DevTools:
    """One browser process and its protocol pipe."""

    def __init__(self, browser: str, width: int, height: int):
        self.profile = tempfile.mkdtemp(prefix="looks-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before exec: the protocol's fds
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=on_fds_3_and_4, pass_fds=(3, 4), start_new_session=True,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None, timeout_s: float = 60) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(timeout_s)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"the browser said nothing for {timeout_s} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its protocol pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def wait_for(self, method: str, timeout_s: float = 60) -> dict:
        """The first event ``method`` (already received or still to come)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.receive(max(deadline - time.monotonic(), 0.01))
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=10)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


def open_page(browser: str, file: Path, width: int = 1400, height: int = 2400) -> Page:
    """Load ``file`` in a fresh headless browser and read back what the page did."""
    tools = DevTools(browser, width, height)
    try:
        targets = tools.send("Target.getTargets")["targetInfos"]
        target = next(t["targetId"] for t in targets if t["type"] == "page")
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        tools.events.clear()  # about:blank's own
        tools.send("Page.navigate", {"url": file.resolve().as_uri()}, session)
        tools.wait_for("Page.loadEventFired")
        text = tools.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True}, session)
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session)
        page = Page(text=text["result"]["value"], screenshot=base64.b64decode(shot["data"]))
        for event in tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                page.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append("log: " + params["entry"]["text"])
            elif method == "Network.loadingFailed":
                page.errors.append("failed load: " + params.get("errorText", ""))
            elif method == "Network.requestWillBeSent":
                page.requested.append(params["request"]["url"])
        return page
    finally:
        tools.close()

"""A headless Chromium for tests, driven over the DevTools protocol (CDP) on 127.0.0.1.

The system's ``chromium`` (Debian's package; ``make browser`` installs it) is started with
``--remote-debugging-port=0`` and a throw-away profile; the port it picked is read from the
profile's ``DevToolsActivePort`` file, and one page is driven over a websocket. No browser
download (as Playwright's own would need) and no version coupling beyond CDP's stable core
(``Page.navigate``, ``Runtime.evaluate``, ``Page.captureScreenshot``).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    """The first Chromium on PATH, or None."""
    return next((p for p in map(shutil.which, BINARIES) if p), None)


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools call failed."""


class Browser:
    """One headless Chromium and one page in it. Use as a context manager."""

    def __init__(self, binary: str, width: int = 1200, height: int = 900, timeout_s: float = 30):
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="sale-ray-chromium-")
        self._log = Path(self._profile) / "chromium.log"  # a file: a full pipe would block it
        with open(self._log, "wb") as log:
            self._proc = self._start(binary, width, height, log)
        self._ids = itertools.count(1)
        self._ws = None
        try:
            self._ws = self._connect()
        except BaseException:
            self.close()
            raise

    def _start(self, binary: str, width: int, height: int, log: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # as root (CI) Chromium refuses to start with its sandbox
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def _connect(self) -> Any:
        from websockets.sync.client import connect

        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not port_file.is_file() or not port_file.read_text().strip():
            if self._proc.poll() is not None:
                err = self._log.read_text(errors="replace")[-2000:]
                raise BrowserError(f"chromium exited with {self._proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port in {self.timeout_s}s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("chromium has no page to drive")
        return connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; its result (events that arrive meanwhile are dropped)."""
        i = next(self._ids)
        self._ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str) -> None:
        """Navigate and wait until the page and all its images have loaded."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.evaluate(
            "new Promise(ok => { const done = () => ok(true);"
            " document.readyState === 'complete' ? done() : addEventListener('load', done); })"
        )

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise BrowserError(f"javascript failed: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def screenshot(
        self, path: Path, max_height: int = 12000, scale: float = 1.0
    ) -> tuple[int, int]:
        """A PNG of the whole page (cut at ``max_height`` CSS pixels, drawn at ``scale``); the
        page's (width, height) in CSS pixels."""
        w, h = self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        h = min(h, max_height)
        data = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": w, "height": h, "scale": scale},
        )["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return w, h

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

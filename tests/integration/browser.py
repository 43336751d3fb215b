"""A headless Chromium driven over the DevTools protocol, for the status page's tests.

Debian's `chromium` started with --remote-debugging-port=0 writes the port it took
into DevToolsActivePort in its profile directory; the page target's WebSocket
takes JSON commands ({"id", "method", "params"}) and answers with the same id,
between events this client ignores.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request

from websockets.sync.client import connect


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, profile_dir: str, width: int = 1400, height: int = 1000) -> None:
        exe = chromium()
        if exe is None:
            raise BrowserError("chromium is not installed")
        os.makedirs(profile_dir, exist_ok=True)
        self.log_path = os.path.join(profile_dir, "chromium.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={profile_dir}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        port_file = os.path.join(profile_dir, "DevToolsActivePort")
        end = time.monotonic() + 30
        port = None
        while time.monotonic() < end and port is None:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self.logs()}")
            try:
                with open(port_file) as f:
                    port = int(f.readline())
            except (OSError, ValueError):
                time.sleep(0.05)
        if port is None:
            self.close()
            raise BrowserError("chromium did not open its DevTools port within 30 s")
        self.devtools = f"http://127.0.0.1:{port}"
        target = None
        while time.monotonic() < end and target is None:
            with urllib.request.urlopen(f"{self.devtools}/json/list", timeout=5) as r:
                target = next((t for t in json.load(r) if t.get("type") == "page"), None)
            if target is None:
                time.sleep(0.05)
        if target is None:
            self.close()
            raise BrowserError("chromium has no page target")
        self._conn = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._conn.__enter__()
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def logs(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    def call(self, method: str, timeout: float = 10.0, **params) -> dict:
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, end - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll `expression` until it is truthy; returns its value, or raises
        TimeoutError with its last value."""
        end = time.monotonic() + timeout
        value = None
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{expression!r} still {value!r} after {timeout}s")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.__exit__(None, None, None)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

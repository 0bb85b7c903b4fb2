"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

Why a pipe and not WebDriver: it needs only Debian's ``chromium`` (no chromedriver, no Python
package), opens no port, and the browser dies with its pipe. The protocol on the pipe is JSON
messages ended by a NUL byte: the browser reads commands on its fd 3 and writes replies and
events on its fd 4. Commands for a page carry the ``sessionId`` of a flattened target session.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium with a fresh profile; use as a context manager (it always ends the
    browser and removes the profile, even when a test fails)."""

    def __init__(self, binary: str, timeout: float = 120.0) -> None:
        self.binary = binary
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = ""

    def __enter__(self) -> Chromium:
        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def place_fds() -> None:
            """In the child: the command pipe on fd 3, the reply pipe on fd 4 (what the browser
            expects). Copied out of the way first, in case a pipe end already sits on 3 or 4;
            dup2 makes 3 and 4 inheritable, everything else Python opened is close-on-exec."""
            commands, replies = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # close_fds would close 3 and 4 after place_fds set them up
            preexec_fn=place_fds,
            start_new_session=True,  # one process group: the browser and all its children
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(CdpError, OSError):
                    self.call("Browser.close", timeout=5)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, 9)
                    self.proc.wait(timeout=60)
            if self.proc is not None:
                # Renderer and zygote children share the session: make sure none outlive us.
                self._end_group(self.proc.pid)
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)

    @staticmethod
    def _end_group(pgid: int) -> None:
        """SIGKILL what is left of the browser's process group and wait until it is gone
        (helpers the zygote double-forked are reaped by init, so poll rather than wait)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 9)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise CdpError(f"browser process group {pgid} did not go away")

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _read_one(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError("timed out waiting for the browser")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise CdpError("the browser closed its pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one command and return its result; events met meanwhile go to ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_one(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str | None = None) -> dict[str, Any]:
        """Return the first event named ``method`` (already received, or the next to come)."""
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._read_one(deadline)
            if "method" in event:
                self.events.append(event)
                if event["method"] == method and event.get("sessionId") == session:
                    return event

    def open_page(self, url: str) -> str:
        """A new tab with logging on, navigated to ``url`` and loaded; returns its session."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (exceptions raise)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen on the page."""
        found = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                described = details.get("exception", {}).get("description")
                found.append(f"exception: {described or details.get('text')}")
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "assert",
                "warning",
            ):
                texts = [str(a.get("value", a.get("description"))) for a in params.get("args", [])]
                found.append(f"console.{params['type']}: {' '.join(texts)}")
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") in ("error", "warning"):
                    found.append(f"log {entry.get('level')}: {entry.get('text')}")
        return found

    def requests(self, session: str) -> list[str]:
        """Every URL the page asked the network stack for."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]

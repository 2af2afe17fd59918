"""Open a page in real headless Chromium and report its script errors, images and a screenshot.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4), so only the standard library is
needed. Errors are collected from uncaught exceptions (``Runtime.exceptionThrown``),
``console.error`` calls and the browser log (failed loads), from the first byte of the page on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Debian's package name is ``chromium``; other systems name the binary differently.
BINARIES = ("chromium", "chromium-browser", "google-chrome")

PAGE_SUMMARY = """(() => {
  const images = Array.from(document.images);
  return JSON.stringify({
    title: document.title,
    text: document.body ? document.body.innerText.slice(0, 20000) : "",
    images: images.length,
    loaded_images: images.filter(i => i.complete && i.naturalWidth > 0).length,
    canvases: document.querySelectorAll("canvas").length,
    svgs: document.querySelectorAll("svg").length,
  });
})()"""


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0
    ) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            message = self._read_message(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text", "")
            errors.append(f"uncaught: {description}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return errors


CLICK_TEXT = """((text) => {
  const all = Array.from(document.querySelectorAll("a, button, li, span, div, td, p"));
  const hits = all.filter(e => e.innerText && e.innerText.trim() === text);
  if (!hits.length) return false;
  hits.sort((a, b) => a.innerText.length - b.innerText.length
    || b.querySelectorAll("*").length - a.querySelectorAll("*").length);
  hits[hits.length - 1].click();
  return true;
})"""


#: What the page shows, read after two painted frames: it stops changing once the page's scripts
#: (plotly, React) have drawn it.
PAGE_STATE = """new Promise(done => requestAnimationFrame(() => requestAnimationFrame(
    () => done(JSON.stringify([
  document.readyState,
  document.getElementsByTagName("*").length,
  document.body ? document.body.innerText.length : 0,
  Array.from(document.images).filter(i => i.complete).length,
])))))"""


def _settle(pipe: _Pipe, session: str, quiet_seconds: float, timeout: float) -> None:
    """Wait until the page has loaded and its state has not changed for ``quiet_seconds``."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        state = pipe.call(
            "Runtime.evaluate",
            {"expression": PAGE_STATE, "awaitPromise": True, "returnByValue": True},
            session=session,
        )["result"]["value"]
        now = time.monotonic()
        if state != last:
            last, since = state, now
        elif now - since >= quiet_seconds and json.loads(state)[0] == "complete":
            return
        if now > deadline:
            raise TimeoutError(f"the page kept changing for {timeout:.0f} s: {state}")
        time.sleep(0.1)


def open_page(
    path: str | Path,
    *,
    quiet_seconds: float = 1.0,
    width: int = 1400,
    height: int = 1000,
    timeout: float = 120.0,
    clicks: tuple[str, ...] = (),
) -> PageResult:
    """Load ``path`` (a local file) in headless Chromium; collect errors, a summary, a screenshot.

    After the load and after each click the page is left to settle: until what it shows (its
    elements, text and loaded images, read after two painted frames) has not changed for
    ``quiet_seconds``.

    ``clicks``: texts of elements to click one after the other once the page has loaded (e.g. a
    report's menu entries); each must be found. The summary and screenshot are taken after them.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium binary (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()

        # The browser reads commands on fd 3 and writes answers on fd 4. Copy both ends first,
        # so that neither is overwritten when it happens to be fd 3 or 4 already.
        def wire_fds():
            commands, answers = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        command = [
            binary,
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--use-gl=swiftshader",
            "--enable-unsafe-swiftshader",
            "--no-first-run",
            "--disable-extensions",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        process = subprocess.Popen(
            command,
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        pipe = _Pipe(to_browser_write, from_browser_read)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            _settle(pipe, session, quiet_seconds, timeout)
            for step in clicks:
                # A step is an element's text, or "js:<expression>" that clicks and returns true.
                expression = step[3:] if step.startswith("js:") else f"{CLICK_TEXT}({json.dumps(step)})"
                found = pipe.call(
                    "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
                )
                if not found["result"].get("value"):
                    raise LookupError(f"{path}: nothing to click for {step!r}")
                _settle(pipe, session, quiet_seconds, timeout)
            summary = pipe.call(
                "Runtime.evaluate", {"expression": PAGE_SUMMARY, "returnByValue": True}, session=session
            )["result"]["value"]
            shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            # Drain what arrived meanwhile, then read the errors.
            pipe.call("Runtime.evaluate", {"expression": "1"}, session=session)
            return PageResult(
                errors=_errors(pipe.events), summary=json.loads(summary), screenshot=base64.b64decode(shot)
            )
        finally:
            try:
                pipe.send("Browser.close")
                process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            os.close(to_browser_write)
            os.close(from_browser_read)

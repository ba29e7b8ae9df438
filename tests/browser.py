"""A headless Chromium driven over the DevTools protocol, for tests that look at pages as a person does.

The browser is the one `make browser` unpacks into build/browser/
(scripts/fetch-browser.sh). It is driven over ``--remote-debugging-pipe``:
DevTools messages are NUL-terminated JSON on the child's file descriptors 3
(commands in) and 4 (answers and events out), so no WebSocket client and no
Playwright are needed. Input goes through the protocol's ``Input`` domain
(real mouse clicks and typed text, as a person would); what the page shows is
read back from the DOM (``innerText``), which is what the person reads.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "build" / "browser"
CHROMIUM = BROWSER_DIR / "chromium"


def unavailable() -> str | None:
    """Why no browser can run here (None: it can)."""
    if CHROMIUM.exists():
        return None
    reason = BROWSER_DIR / "UNAVAILABLE"
    if reason.exists():
        return f"no headless Chromium: {reason.read_text().strip()}"
    return "no headless Chromium in build/browser/: run `make browser` (scripts/fetch-browser.sh)"


class BrowserError(Exception):
    """The browser answered a command with an error, or went away."""


class Browser:
    """One headless Chromium with one page, closed with :meth:`close`."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 800) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # Chromium takes the pipe on its fds 3 and 4: the child's ends move above 9 first (either may
        # be 3 or 4 here), then bash (dash takes one-digit fds only) puts them in place for the exec;
        # no Python runs in the child after fork (no preexec_fn)
        high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        high_write = fcntl.fcntl(answers_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_read)
        os.close(answers_write)
        environment = {
            **os.environ,
            "FONTCONFIG_FILE": str(BROWSER_DIR / "fonts.conf"),
            "LD_LIBRARY_PATH": f"{BROWSER_DIR / 'lib'}:{BROWSER_DIR}",
        }
        self._stderr = (profile.parent / f"{profile.name}.log").open("wb")
        self.process = subprocess.Popen(
            [
                "/bin/bash", "-c", f'exec "$0" "$@" 3<&{high_read} 4>&{high_write} {high_read}<&- {high_write}>&-',
                str(CHROMIUM), "--headless", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", f"--window-size={width},{height}",
                # a test account runs it, often as root in CI: no setuid sandbox or zygote to set up
                "--no-sandbox", "--no-zygote", "--no-first-run", "--disable-gpu",
                "--font-render-hinting=none", "about:blank",
            ],
            pass_fds=(high_read, high_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=environment,
        )  # fmt: skip
        os.close(high_read)
        os.close(high_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        pages = [t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        attached = self._call("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)
        self._session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    # -- the protocol ------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("the browser did not answer in time")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise BrowserError("the browser went away")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def _call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self._events.append(answer)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command on the page."""
        return self._call(method, self._session, **params)

    def _wait_event(self, name: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            for index, event in enumerate(self._events):
                if event["method"] == name:
                    del self._events[: index + 1]
                    return
            self._events.clear()
            event = self._read_message(deadline)
            if "method" in event:
                self._events.append(event)

    # -- what a person does --------------------------------------------------------

    def open(self, url: str) -> None:
        """Go to ``url`` and wait until the page has loaded."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value (DevTools runs it: the page's CSP forbids page scripts)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def text(self, selector: str = "body") -> str:
        """What the page shows in the first element matching ``selector``."""
        value = self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")
        return str(value)

    def url(self) -> str:
        """Where the browser is."""
        return str(self.evaluate("location.href"))

    def _centre_of(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing on the page matches {selector}")
        return float(box[0]), float(box[1])

    def click(self, selector: str, *, navigates: bool = True) -> None:
        """Click the element with the mouse (and wait for the page it opens)."""
        x, y = self._centre_of(selector)
        self._events.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        if navigates:
            self._wait_event("Page.loadEventFired")

    def fill(self, selector: str, text: str) -> None:
        """Click into a field, clear it and type ``text``."""
        self.click(selector, navigates=False)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.call("Input.dispatchKeyEvent", type="keyDown", key="Backspace", code="Backspace",
                  windowsVirtualKeyCode=8)  # fmt: skip
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Backspace", code="Backspace",
                  windowsVirtualKeyCode=8)  # fmt: skip
        if text:
            self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """Close the browser (it exits when its command pipe closes) and wait for it."""
        try:
            os.close(self._commands)
        finally:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            os.close(self._answers)
            self._stderr.close()

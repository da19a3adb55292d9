"""Headless Chromium driven over the DevTools protocol, for pages a user must log in to.

``chromium --dump-dom`` renders a page but cannot type into it; the local server's UI
asks for a login first. This drives Debian's ``chromium`` through its DevTools
websocket (``websockets``, which Prefect already brings): open a page, type, click,
read the page's text, take a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


class Page:
    """One tab, spoken to with DevTools commands."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive between answers: skip them
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_for_text(self, wanted: str, timeout: float = 60) -> str:
        """The page's text once it shows ``wanted``."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if wanted in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{wanted!r} never showed; the page says:\n{text[-2000:]}")
            time.sleep(0.25)

    def type_into(self, selector: str, value: str) -> None:
        """Type ``value`` into the input ``selector`` as a user would (input events)."""
        self.evaluate(
            f"(() => {{ const field = document.querySelector({json.dumps(selector)});"
            "field.focus(); })()"
        )
        self.send("Input.insertText", text=value)

    def fill(self, selector: str, value: str) -> None:
        """Replace what the input ``selector`` holds with ``value``, typed, then leave
        the field (forms check a field when it loses focus)."""
        self.evaluate(
            f"(() => {{ const field = document.querySelector({json.dumps(selector)});"
            "field.focus(); field.select(); })()"
        )
        self.send("Input.insertText", text=value)
        self.evaluate("document.activeElement.blur()")

    def click(self, selector: str, text: str | None = None, timeout: float = 30) -> None:
        """Click the middle of the first visible element ``selector`` (that says ``text``,
        if given), with the mouse: a React button listens to the pointer, not to
        ``element.click()``."""
        find = (
            f"(() => {{ const found = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.getClientRects().length && ({json.dumps(text)} === null"
            f" || e.innerText.trim() === {json.dumps(text)})); if (!found) return null;"
            " found.scrollIntoView({block: 'center'}); const box = found.getBoundingClientRect();"
            " return [box.x + box.width / 2, box.y + box.height / 2]; })()"
        )
        deadline = time.monotonic() + timeout
        while (middle := self.evaluate(find)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing to click at {selector!r}")
            time.sleep(0.25)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=middle[0],
                y=middle[1],
                button="left",
                clickCount=1,
            )

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                text="\r" if kind == "keyDown" else "",
            )

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


@contextmanager
def chromium(executable: str, profile: Path) -> Iterator[Page]:
    """A headless Chromium with an empty profile, and its first tab."""
    process = subprocess.Popen(
        [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        endpoint = None
        while endpoint is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = found.group(1) if found else None
        assert endpoint, "chromium did not open its DevTools port"
        # its complaints go on: read them, or a full pipe would stall it
        threading.Thread(target=process.stderr.read, daemon=True).start()
        port = endpoint.split(":")[2].split("/")[0]
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            tab = next(t for t in json.loads(answer.read()) if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None) as socket:
            yield Page(socket)
    finally:
        process.kill()
        process.wait()

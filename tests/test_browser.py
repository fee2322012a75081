"""The chat demo in a real browser: headless Chromium (Debian's package) driven by playwright.

Two pages join the demo (``python -m trio_wshandler demo`` as a process), each sends a
message, both see both; one page loses its connection while the other chats, reconnects by
itself and shows the lines it missed, once each, in order (topic history); one page closes and
the other sees it leave; the browser negotiates permessage-deflate.  Screenshots of the pages
are saved under ``reports/browser/`` (test artefacts).  Skipped, saying why, without
playwright or a Chromium binary (``.ci/run`` installs Debian's ``chromium`` when it runs as
root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "reports" / "browser"
WAIT_MS = 10_000
#: as Debian's Chromium must be started here: no sandbox as root, no calls home
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


@pytest.fixture
def demo() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_wshandler", "demo", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the demo did not start") from None
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr and b"ERROR" not in stderr, stderr.decode()


def lines(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#log p", "ps => ps.map(p => p.textContent)"))


def wait_line(page: Any, text: str) -> None:
    page.wait_for_function(
        "t => [...document.querySelectorAll('#log p')].some(p => p.textContent.includes(t))",
        arg=text,
        timeout=WAIT_MS,
    )


def test_two_pages_chat_in_chromium(demo: str) -> None:
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium: install Debian's chromium (.ci/run does when run as root)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            a, b = browser.new_page(), browser.new_page()
            nicks = {}
            for name, page in (("A", a), ("B", b)):
                page.goto(demo, timeout=WAIT_MS)
                page.wait_for_function(
                    "document.getElementById('status').textContent === 'connected'",
                    timeout=WAIT_MS,
                )
                wait_line(page, "welcome, you are ")
                welcome = next(line for line in lines(page) if "welcome, you are" in line)
                nicks[name] = welcome.split("you are ")[1].split(" ")[0]
            wait_line(a, f"{nicks['B']} joined")
            # the browser offered permessage-deflate and the server accepted it
            for page in (a, b):
                extensions = page.evaluate("client.ws.extensions")
                assert extensions.startswith("permessage-deflate"), extensions
            long_text = "[" + ", ".join(f'{{"id": {i}, "price": {i}.5}}' for i in range(40)) + "]"
            a.fill("#text", "hello from A")
            a.press("#text", "Enter")
            b.fill("#text", long_text)  # compressed both ways (over the 128-byte threshold)
            b.press("#text", "Enter")
            for page in (a, b):
                wait_line(page, f"{nicks['A']}: hello from A")
                wait_line(page, f"{nicks['B']}: {long_text}")
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            for name, page in (("a", a), ("b", b)):
                page.screenshot(path=str(ARTEFACTS / f"page_{name}.png"))
            # A loses its connection (for a second at least); B chats meanwhile; A comes back
            # by itself and shows what it missed
            a.evaluate("client.minDelay = 2000; client.ws.close()")
            a.wait_for_function(
                "document.getElementById('status').textContent === 'disconnected'",
                timeout=WAIT_MS,
            )
            for text in ("while you were away 1", "while you were away 2"):
                b.fill("#text", text)
                b.press("#text", "Enter")
                wait_line(b, f"{nicks['B']}: {text}")
            assert not any("while you were away" in line for line in lines(a))
            wait_line(a, "reconnected: recovered ")
            for text in ("while you were away 1", "while you were away 2"):
                wait_line(a, f"{nicks['B']}: {text}")
            shown = lines(a)
            assert len(shown) == len(set(shown)), shown  # nothing shown twice
            assert shown.index(f"{nicks['B']}: while you were away 1") < shown.index(
                f"{nicks['B']}: while you were away 2"
            )
            a.screenshot(path=str(ARTEFACTS / "page_a_recovered.png"))
            b.close()
            wait_line(a, f"{nicks['B']} left")
            a.screenshot(path=str(ARTEFACTS / "page_a_after_b_left.png"))
        finally:
            browser.close()

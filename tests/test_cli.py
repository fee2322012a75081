"""``python -m trio_wshandler demo|echo`` as a user runs them: a real process on port 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from websockets.trio.client import connect

from .conftest import cli, raw_http


async def test_echo_server_process() -> None:
    async with cli("echo") as port, connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send("echo me")
        assert await ws.recv() == "echo me"


async def test_demo_chat_room_process() -> None:
    async with cli("demo") as port:
        status, headers, body = await raw_http(
            port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'src="pubsub.js"' in body and b"/ws" in body
        status, headers, script = await raw_http(
            port, b"GET /pubsub.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert b"new WebSocket" in script and b"class TrioPubSub" in script
        async with (
            connect(f"ws://127.0.0.1:{port}/ws") as alice,
            connect(f"ws://127.0.0.1:{port}/ws") as bob,
        ):
            welcome = json.loads(await alice.recv())
            assert welcome["type"] == "system" and "welcome" in welcome["text"]
            await bob.send("hi everyone")
            seen = []
            with trio.fail_after(10):
                while not any(m.get("type") == "chat" for m in seen):
                    seen.append(json.loads(await alice.recv()))
            chat = next(m for m in seen if m["type"] == "chat")
            assert chat["text"] == "hi everyone" and chat["from"].startswith("guest-")


async def test_readme_example_runs(tmp_path: Any) -> None:
    """The 20-line example in README.md works as printed (on port 0 instead of 8000)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"127.0.0.1", 8000' in code
    script = tmp_path / "example.py"
    script.write_text(code.replace('"127.0.0.1", 8000', '"127.0.0.1", 0'))
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            line = await process.stdout.receive_some(1024)
        url = line.decode().strip()
        async with connect(url) as a, connect(url) as b:
            assert (await a.recv()).startswith("welcome ")
            assert (await b.recv()).startswith("welcome ")
            await a.send("hello room")
            assert await a.recv() == "hello room"
            assert await b.recv() == "hello room"
    finally:
        process.kill()
        await process.wait()


async def test_the_demo_slows_a_flooding_member() -> None:
    """The demo's rate limit (20 lines a second after 50): 80 lines sent at once reach the
    room in about 1.5 s, not at once."""
    async with (
        cli("demo") as port,
        # (the flooder reads none of the room's lines: websockets' client, its queue full,
        # would not read our Close either, and its close() would wait much longer than its
        # close_timeout)
        connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as flooder,
        connect(f"ws://127.0.0.1:{port}/ws") as observer,
    ):
        welcome = json.loads(await observer.recv())  # sent as it subscribes to the room
        assert "welcome" in welcome["text"]
        sent = trio.current_time()
        for i in range(80):
            await flooder.send(f"line {i}")
        times = {}
        with trio.fail_after(10):
            while "line 79" not in times:
                message = json.loads(await observer.recv())
                if message.get("type") == "chat":
                    times[message["text"]] = trio.current_time()
        assert list(times) == [f"line {i}" for i in range(80)], list(times)
        # 30 lines after the burst, at 20/s: the last cannot reach the room sooner (from the
        # sending, not from line 0's arrival, which a busy observer may read late)
        assert times["line 79"] - sent >= 1.45, {k: round(t - sent, 3) for k, t in times.items()}

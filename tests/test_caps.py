"""Caps at the handshake (issue #20): connections and upgrade attempts per client address,
connections per user; 429 with Retry-After.  The rule on its own (sans-I/O), then over real
sockets from two loopback addresses (127.0.0.1 and 127.0.0.2), with a handshake storm from
another process."""

from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from trio_wshandler import ConnectionCaps, Response, TokenAuthenticator, WebSocketHandler
from trio_wshandler import _caps as caps_module
from trio_wshandler._caps import RESERVATION_TIMEOUT, CapsTable

from .conftest import TIMEOUT, wait_for, ws_url
from .conftest import running as serving

# ---------------------------------------------------------------- the rule


def test_addresses_are_grouped_ipv4_by_address_and_ipv6_by_64() -> None:
    table = CapsTable(ConnectionCaps())
    assert table.client_group("192.0.2.7", {}) == "192.0.2.7/32"
    a = table.client_group("2001:db8:1:2:aaaa::1", {})
    b = table.client_group("2001:db8:1:2:bbbb::9", {})
    c = table.client_group("2001:db8:1:3::1", {})
    assert a == b == "2001:db8:1:2::/64" and c != a
    wide = CapsTable(ConnectionCaps(ipv4_prefix=24, ipv6_prefix=128))
    assert wide.client_group("192.0.2.7", {}) == wide.client_group("192.0.2.200", {})
    assert wide.client_group("2001:db8::1", {}) != wide.client_group("2001:db8::2", {})


def test_the_forwarded_header_is_believed_only_from_a_trusted_proxy() -> None:
    table = CapsTable(ConnectionCaps(trusted_proxies=("10.0.0.0/8",)))
    header = {"x-forwarded-for": "198.51.100.9, 10.1.1.1"}  # client, then an inner proxy
    assert table.client_group("10.0.0.2", header) == "198.51.100.9/32"
    assert table.client_group("192.0.2.1", header) == "192.0.2.1/32"  # not a proxy of ours
    spoofed = {"x-forwarded-for": "203.0.113.5, 198.51.100.9"}  # the client wrote the first
    assert table.client_group("10.0.0.2", spoofed) == "198.51.100.9/32"
    assert table.client_group("10.0.0.2", {"x-forwarded-for": "junk"}) == "10.0.0.2/32"
    assert table.client_group("10.0.0.2", {}) == "10.0.0.2/32"
    nobody = CapsTable(ConnectionCaps())
    assert nobody.client_group("10.0.0.2", header) == "10.0.0.2/32"  # default: never believed
    with pytest.raises(ValueError):
        ConnectionCaps(trusted_proxies=("not a network",))
    with pytest.raises(ValueError):
        ConnectionCaps(max_per_address=0)
    with pytest.raises(TypeError):
        ConnectionCaps(max_per_address=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ConnectionCaps(per=None)  # type: ignore[arg-type]


def test_addresses_are_read_as_proxies_write_them() -> None:
    table = CapsTable(ConnectionCaps(trusted_proxies=("10.0.0.1",)))
    for written in ("198.51.100.9", "198.51.100.9:5555", "::ffff:198.51.100.9"):
        assert table.client_group("10.0.0.1", {"x-forwarded-for": written}) == "198.51.100.9/32"
    assert table.client_group("::ffff:192.0.2.7", {}) == "192.0.2.7/32"  # a dual-stack peer
    bracketed = table.client_group("10.0.0.1", {"x-forwarded-for": "[2001:db8::1]:443"})
    assert bracketed == "2001:db8::/64"


def test_a_flood_of_fresh_addresses_keeps_a_bounded_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps_module, "MAX_BUCKETS", 100)
    table = CapsTable(ConnectionCaps(max_attempts=1, per=60.0))
    assert table.admit("first", "g0", now=0.0) is None
    table.release("first")
    for i in range(1, 1000):
        assert table.admit(f"c{i}", f"g{i}", now=0.0) is None
        table.release(f"c{i}")
    assert len(table._buckets) <= 100  # the least recently seen went
    assert table.admit("again", "g999", now=0.0) is not None  # a recent one is remembered


def test_attempts_are_a_token_bucket() -> None:
    table = CapsTable(ConnectionCaps(max_attempts=3, per=3.0))
    for i in range(3):
        assert table.admit(f"c{i}", "g", now=0.0) is None
        table.release(f"c{i}")
    refusal = table.admit("c3", "g", now=0.0)
    assert refusal is not None and refusal.reason == "attempts" and refusal.retry_after == 1
    assert table.admit("c4", "other", now=0.0) is None  # another address is not touched
    assert table.admit("c5", "g", now=1.0) is None  # one token back after 1 s
    assert table.admit("c6", "g", now=1.0) is not None


def test_slots_are_reserved_started_released_and_expire() -> None:
    table = CapsTable(ConnectionCaps(max_per_address=2, max_per_user=1))
    assert table.admit("a", "g", now=0.0) is None
    assert table.admit("b", "g", now=0.0) is None
    refused = table.admit("c", "g", now=0.0)
    assert refused is not None and refused.reason == "address"
    assert table.admit_user("a", "alice") is None
    table.started("a")
    assert table.admit_user("b", "alice") is not None  # alice has a connection
    table.release("b")
    assert table.connections_of("g") == 1
    # a 101 whose connection never started frees its slot RESERVATION_TIMEOUT after the 101
    # (not after the request: an authenticator may take its time); a started one does not
    assert table.admit("d", "g", now=1.0) is None
    table.upgraded("d", now=40.0)
    assert table.admit("e", "g", now=40.0 + RESERVATION_TIMEOUT - 1) is not None
    assert table.admit("e", "g", now=40.0 + RESERVATION_TIMEOUT) is None
    assert table.connections_of("g") == 2  # a (started) and e
    table.release("a")
    table.release("a")  # twice is harmless
    assert table.admit_user("e", "alice") is None


# ---------------------------------------------------------------- over sockets


async def handshake(
    port: int, source: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], trio.SocketStream]:
    """An upgrade request from ``source``: the status, the headers and the open stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(4096)
            assert chunk, buf
            buf += chunk
    status_line, *header_lines = buf.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, stream


@asynccontextmanager
async def streams() -> AsyncIterator[list[trio.SocketStream]]:
    opened: list[trio.SocketStream] = []
    try:
        yield opened
    finally:
        for stream in opened:
            await trio.aclose_forcefully(stream)


async def test_200_connections_from_one_address_with_a_cap_of_20() -> None:
    handler = WebSocketHandler(caps=ConnectionCaps(max_per_address=20), heartbeat=None)
    async with serving(handler) as server, streams() as opened:
        answers = []
        for _ in range(200):
            status, fields, stream = await handshake(server.port)
            opened.append(stream)
            answers.append((status, fields.get("retry-after")))
        assert answers.count((101, None)) == 20
        assert answers.count((429, "5")) == 180
        status, _, stream = await handshake(server.port, source="127.0.0.2")
        opened.append(stream)
        assert status == 101  # another address is served
        await wait_for(lambda: len(handler) == 21)
        stats = handler.stats()
        assert dict(stats.cap_refusals) == {"address": 180} and stats.refused[429] == 180
        # connections that end free their slots
        for stream in opened[:5]:
            await trio.aclose_forcefully(stream)
        await wait_for(lambda: len(handler) == 16)
        for _ in range(5):
            status, _, stream = await handshake(server.port)
            opened.append(stream)
            assert status == 101
        status, _, stream = await handshake(server.port)
        opened.append(stream)
        assert status == 429


async def test_a_refused_upgrade_frees_its_slot() -> None:
    caps = ConnectionCaps(max_per_address=1)
    handler = WebSocketHandler(caps=caps, origins=["https://ok.example"], heartbeat=None)
    async with serving(handler) as server:
        for _ in range(3):  # refused after the caps: 403, never 429
            status, _, stream = await handshake(server.port, headers={"Origin": "https://evil"})
            await trio.aclose_forcefully(stream)
            assert status == 403
        for _ in range(3):  # no upgrade asked: 426
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(TIMEOUT):
                answer = await stream.receive_some()
            await trio.aclose_forcefully(stream)
            assert answer.startswith(b"HTTP/1.1 426")
        status, _, stream = await handshake(server.port, headers={"Origin": "https://ok.example"})
        await trio.aclose_forcefully(stream)
        assert status == 101  # the one slot was free
        assert dict(handler.stats().cap_refusals) == {}


def slots_of(handler: WebSocketHandler) -> int:
    """The cap slots 127.0.0.1 holds in ``handler`` (a test reads the table)."""
    table = handler._admission.caps
    assert table is not None
    return table.connections_of("127.0.0.1/32")


class RefusingAfterSuper(WebSocketHandler):
    """Refuses, after ``super()`` accepted, without closing the HTTP connection."""

    async def handle_request(self, cx: Any, hdr: Any, body: bytes) -> Any:
        await super().handle_request(cx, hdr, body)
        return Response(403, "not today")


class FailingConnection(WebSocketHandler):
    def get_connection(self, cx: Any, hdr: Any, cid: str) -> Any:
        raise RuntimeError("no connection for you")


async def test_slots_of_refusals_after_super_and_failed_connections_are_freed() -> None:
    for handler in (
        RefusingAfterSuper(caps=ConnectionCaps(max_per_address=1), heartbeat=None),
        FailingConnection(caps=ConnectionCaps(max_per_address=1), heartbeat=None),
    ):
        async with serving(handler) as server:
            for _ in range(3):  # each on a connection of its own
                status, _, stream = await handshake(server.port)
                await trio.aclose_forcefully(stream)
                assert status == (403 if isinstance(handler, RefusingAfterSuper) else 101)
            # and several on one kept-alive connection
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            if isinstance(handler, RefusingAfterSuper):
                request = (
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                    b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                answers = b""
                for _ in range(3):
                    await stream.send_all(request)
                    with trio.fail_after(TIMEOUT):
                        while answers.count(b"not today") < _ + 1:
                            answers += await stream.receive_some()
                assert answers.count(b"HTTP/1.1 403") == 3
            await trio.aclose_forcefully(stream)
            await wait_for(lambda h=handler: slots_of(h) == 0)


async def test_the_forwarded_address_counts_only_through_a_trusted_proxy() -> None:
    caps = ConnectionCaps(max_per_address=1, trusted_proxies=("127.0.0.1",))
    handler = WebSocketHandler(caps=caps, heartbeat=None)
    async with serving(handler) as server, streams() as opened:

        async def status(source: str, client: str) -> int:
            code, _, stream = await handshake(server.port, source, {"X-Forwarded-For": client})
            opened.append(stream)
            return code

        # through the trusted proxy (127.0.0.1): each forwarded client has its own cap
        assert await status("127.0.0.1", "198.51.100.1") == 101
        assert await status("127.0.0.1", "198.51.100.2") == 101
        assert await status("127.0.0.1", "198.51.100.1") == 429
        # 127.0.0.2 is no proxy of ours: its header is ignored, it is one address
        assert await status("127.0.0.2", "198.51.100.3") == 101
        assert await status("127.0.0.2", "198.51.100.4") == 429


async def test_connections_per_user() -> None:
    auth = TokenAuthenticator({"t1": "alice", "t2": "bob"})
    handler = WebSocketHandler(auth, caps=ConnectionCaps(max_per_user=2), heartbeat=None)
    async with serving(handler) as server:
        url = ws_url(server)
        async with connect(f"{url}?token=t1"), connect(f"{url}?token=t1"):
            with pytest.raises(Exception) as refused:
                async with connect(f"{url}?token=t1"):
                    pass
            assert "429" in str(refused.value)
            async with connect(f"{url}?token=t2"):  # bob is not alice
                pass
        await wait_for(lambda: len(handler) == 0)
        async with connect(f"{url}?token=t1"):  # alice's connections ended: room again
            pass
        assert dict(handler.stats().cap_refusals) == {"user": 1}


STORM = textwrap.dedent(
    """
    import socket, sys, time
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    request = (b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
               b"Connection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
               b"Sec-WebSocket-Version: 13\\r\\n\\r\\n")
    counts = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        status = s.recv(64).split(b" ")[1].decode()
        counts[status] = counts.get(status, 0) + 1
        s.close()
        time.sleep(0.001)
    print(counts)
    """
)


async def test_a_handshake_storm_is_refused_while_another_address_connects() -> None:
    caps = ConnectionCaps(max_attempts=20, per=1.0, max_per_address=50)
    handler = WebSocketHandler(caps=caps, heartbeat=None)
    async with serving(handler) as server:
        storm = await trio.lowlevel.open_process(
            [sys.executable, "-c", STORM, str(server.port), "2.0"],
            stdout=subprocess.PIPE,
        )
        await trio.sleep(0.3)
        served = 0
        with trio.fail_after(TIMEOUT):
            for _ in range(10):  # the second address, during the storm
                status, _, stream = await handshake(server.port, source="127.0.0.2")
                await trio.aclose_forcefully(stream)
                served += status == 101
                await trio.sleep(0.1)
        with trio.fail_after(TIMEOUT):
            assert storm.stdout is not None
            output = b""
            while chunk := await storm.stdout.receive_some():
                output += chunk
            await storm.wait()
        counts = ast.literal_eval(output.decode())  # the storm's counts: {"101": n, ...}
        assert served == 10
        attempts = sum(counts.values())
        assert attempts > 200  # it did storm (hundreds a second)
        # 20 at once, then 20 per second: at most about 60 in 2 s
        assert counts.get("101", 0) <= 20 + 2.5 * 20, counts
        assert counts["429"] >= attempts - 70
        assert handler.stats().cap_refusals["attempts"] == counts["429"]


async def test_simultaneous_handshakes_cannot_all_pass_the_cap() -> None:
    """The slot is reserved before the authenticator runs: 50 handshakes at once, each with a
    slow authenticator, against a cap of 10: exactly 10 upgrades."""

    async def slow_lookup(token: str) -> str | None:
        await trio.sleep(0.2)
        return "someone"

    handler = WebSocketHandler(
        TokenAuthenticator(slow_lookup), caps=ConnectionCaps(max_per_address=10), heartbeat=None
    )
    async with serving(handler) as server, streams() as opened:
        statuses: list[int] = []

        async def one() -> None:
            status, _, stream = await handshake(server.port, headers={"Authorization": "Bearer x"})
            opened.append(stream)
            statuses.append(status)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert sorted(statuses) == [101] * 10 + [429] * 40


async def test_the_serve_command_sets_the_caps() -> None:
    from .test_workers import serve_command

    with serve_command("--port", "0", "--max-per-address", "2", "--max-per-user", "1") as (_, port):
        async with connect(f"ws://127.0.0.1:{port}/"), connect(f"ws://127.0.0.1:{port}/"):
            status, fields, stream = await handshake(port)
            await trio.aclose_forcefully(stream)
            assert (status, fields["retry-after"]) == (429, "5")
            status, _, stream = await handshake(port, source="127.0.0.2")
            await trio.aclose_forcefully(stream)
            assert status == 101


def test_the_serve_command_checks_the_caps() -> None:
    for bad in (["--max-per-address", "0"], ["--trusted-proxy", "10.0.0.0/8"]):
        done = subprocess.run(
            [sys.executable, "-m", "trio_wshandler", "serve", "tests.workers_app:make", *bad],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and "serve:" in done.stderr, done.stderr

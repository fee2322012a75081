"""Test your handler: a WebSocket client for tests, over a real loopback socket.

``open_test_client(target)`` serves ``target`` (a :class:`~trio_wshandler.WebSocketHandler`,
on 127.0.0.1 port 0 in the caller's task, stopped after the block) or connects to a running
:class:`~trio_wshandler.Server`, upgrades, and yields a :class:`TestClient`::

    async def test_echo():
        async with open_test_client(EchoHandler()) as client:
            await client.send("hi")
            assert await client.receive() == "hi"

The client is wsproto's client side (a dependency already) on a plain socket: independent of
the server code it tests, which it reaches only through the network.  Nothing runs in the
background: what the server sends is read when the test asks (``receive``, ``receive_close``,
``ping``, ``close``), and Pings that arrive meanwhile are answered then.  Every wait is bounded
by the client's ``timeout`` (``trio.TooSlowError``; a caller's own ``trio.fail_after`` works
too).  A refused upgrade raises :class:`UpgradeRefused` with the response's status, headers
and body.

With pytest-trio, the ``ws_client`` fixture (installed with the package as a pytest plugin)
opens clients that are closed at the end of the test: ``client = await ws_client(handler)``.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from ._errors import WebSocketHandlerError

if TYPE_CHECKING:
    from ._handler import WebSocketHandler
    from ._server import Server

__all__ = ["TIMEOUT", "TestClient", "TestClientClosed", "UpgradeRefused", "open_test_client"]

#: Seconds any one wait of a test client may take, unless given (``timeout=``).
TIMEOUT = 10.0


class UpgradeRefused(WebSocketHandlerError):
    """The server answered the upgrade with another status than 101."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"upgrade refused: {status} {body[:200]!r}")
        #: the response's status code (401, 403, 429, 503...)
        self.status = status
        #: its headers (names in lower case)
        self.headers = dict(headers)
        #: its body
        self.body = body


class TestClientClosed(WebSocketHandlerError):
    """The server closed the connection while the test waited for a message or a Pong."""

    __test__ = False  # (not a test class, for pytest)

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed by the server: {code} {reason!r}")
        #: the server's close code (None: the connection ended without a Close)
        self.code = code
        self.reason = reason


class TestClient:
    """One upgraded connection (see the module's docstring)."""

    __test__ = False  # (not a test class, for pytest)

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, timeout: float) -> None:
        self._stream = stream
        self._ws = ws
        #: the bound of each wait, in seconds (``trio.TooSlowError`` beyond)
        self.timeout = timeout
        #: the 101's headers beyond the handshake's own (names in lower case), its
        #: subprotocol, and whether permessage-deflate was agreed
        self.headers: dict[str, str] = {}
        self.subprotocol: str | None = None
        self.compressed = False
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._parts: list[str | bytes] = []
        self._pongs = 0
        self._close: tuple[int | None, str] | None = None  # the server's, once read

    @property
    def closed(self) -> bool:
        """The server's Close was read (or the connection ended)."""
        return self._close is not None

    @property
    def close_code(self) -> int | None:
        """The server's close code, once its Close was read (else None)."""
        return None if self._close is None else self._close[0]

    async def send(self, data: str | bytes) -> None:
        """Send one message: ``str`` as Text, ``bytes`` as Binary."""
        message = TextMessage(data) if isinstance(data, str) else BytesMessage(bytes(data))
        await self._write(self._ws.send(message))

    async def receive(self) -> str | bytes:
        """The next message (``str`` for Text, ``bytes`` for Binary).

        :raises TestClientClosed: the server closed (or the connection ended) first.
        """
        with trio.fail_after(self.timeout):
            while not self._messages:
                if self._close is not None:
                    raise TestClientClosed(*self._close)
                await self._read()
        return self._messages.popleft()

    async def receive_close(self) -> tuple[int | None, str]:
        """Read until the server's Close and answer it: its (code, reason); code None if the
        connection ended without one.  Messages before it are left for :meth:`receive`."""
        with trio.fail_after(self.timeout):
            while self._close is None:
                await self._read()
        return self._close

    async def ping(self, payload: bytes = b"") -> float:
        """Send a Ping and wait for its Pong: the round trip in seconds."""
        start = trio.current_time()
        pongs = self._pongs
        await self._write(self._ws.send(Ping(payload)))
        with trio.fail_after(self.timeout):
            while self._pongs == pongs:
                if self._close is not None:
                    raise TestClientClosed(*self._close)
                await self._read()
        return trio.current_time() - start

    async def close(self, code: int = 1000, reason: str = "") -> tuple[int | None, str]:
        """Close the connection (our Close, then the server's answer): the server's (code,
        reason)."""
        if self._close is None:
            await self._write(self._ws.send(CloseConnection(code, reason)))
            await self.receive_close()
        await self._stream.aclose()
        assert self._close is not None
        return self._close

    # ---------------------------------------------------------------- I/O

    async def _write(self, data: bytes) -> None:
        if data:
            await self._stream.send_all(data)

    async def _read(self) -> None:
        try:
            data = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            if self._close is None:
                self._close = (None, "connection lost")
            return
        self._ws.receive_data(data)
        for event in self._ws.events():
            await self._event(event)

    async def _event(self, event: Event) -> None:
        if isinstance(event, TextMessage | BytesMessage):
            self._parts.append(
                event.data if not isinstance(event.data, bytearray) else bytes(event.data)
            )
            if event.message_finished:
                parts, self._parts = self._parts, []
                first = parts[0]
                joined = "".join(parts) if isinstance(first, str) else b"".join(parts)  # type: ignore[arg-type]
                self._messages.append(joined)
        elif isinstance(event, Ping):
            await self._write(self._ws.send(event.response()))
        elif isinstance(event, Pong):
            self._pongs += 1
        elif isinstance(event, CloseConnection):
            self._close = (event.code, event.reason or "")
            if self._ws.state is ConnectionState.REMOTE_CLOSING:  # the server began: answer
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._write(self._ws.send(event.response()))


async def _upgrade(
    stream: trio.SocketStream,
    host: str,
    path: str,
    headers: Mapping[str, str] | None,
    subprotocols: Iterable[str],
    compression: bool,
    timeout: float,  # noqa: ASYNC109 (open_test_client's, below)
) -> TestClient:
    ws = WSConnection(ConnectionType.CLIENT)
    extensions = [PerMessageDeflate()] if compression else []
    request = Request(
        host=host,
        target=path,
        extra_headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        subprotocols=list(subprotocols),
        extensions=extensions,
    )
    client = TestClient(stream, ws, timeout)
    await stream.send_all(ws.send(request))
    refused: RejectConnection | None = None
    body = b""
    with trio.fail_after(timeout):
        while True:
            data = await stream.receive_some(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    client.headers = _headers(event.extra_headers)
                    client.subprotocol = event.subprotocol
                    client.compressed = bool(event.extensions)
                    return client
                if isinstance(event, RejectConnection):
                    refused = event
                    if not event.has_body:
                        raise UpgradeRefused(event.status_code, _headers(event.headers), b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and refused is not None:
                        raise UpgradeRefused(refused.status_code, _headers(refused.headers), body)
            if not data:
                status = 0 if refused is None else refused.status_code
                raise UpgradeRefused(status, {}, body)


def _headers(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in pairs}


@asynccontextmanager
async def open_test_client(
    target: WebSocketHandler | Server | tuple[str, int],
    path: str = "/",
    *,
    headers: Mapping[str, str] | None = None,
    subprotocols: Iterable[str] = (),
    compression: bool = False,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 (a default bound on every wait: a test that
    # waits for a message that never comes fails in seconds; a caller's fail_after also works)
) -> AsyncIterator[TestClient]:
    """A client upgraded on ``target``: a handler (served for the block on 127.0.0.1, port 0,
    in a nursery of the caller's task), a running ``Server`` (its first listener), or the
    ``(host, port)`` of any server (e.g. Hypercorn serving :meth:`WebSocketHandler.asgi`).
    ``compression`` offers permessage-deflate.  The connection is closed (1000) at the end
    unless it already was.

    :raises UpgradeRefused: the server answered with another status than 101.
    """
    from ._server import Server, serve

    try:
        async with trio.open_nursery() as nursery:
            if isinstance(target, tuple):
                host, port = target
            else:
                server: Server = (
                    target
                    if isinstance(target, Server)
                    else await nursery.start(serve, target, "127.0.0.1", 0)
                )
                host, port = "127.0.0.1", server.port
            stream = await trio.open_tcp_stream(host, port)
            try:
                client = await _upgrade(
                    stream, host, path, headers, subprotocols, compression, timeout
                )
                yield client
                if not client.closed:
                    with trio.move_on_after(timeout):
                        await client.close()
            finally:
                await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the nursery (only there to serve a handler) wraps what the block or the upgrade
        # raised: a test expects the error itself (pytest.raises(UpgradeRefused))
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise

"""Where an HTTP request is read and answered, until a WebSocket upgrade (h11).

One accepted stream goes through :func:`serve_http`: requests are parsed by h11 (with a bound on
the size of the request head and on the number of headers), routed by path to a handler,
answered, and the connection is kept alive for the next request, until either a handler answers
101 (then :class:`Upgrade` is returned and the caller runs the WebSocket connection) or the
connection ends.  Every wait for the client is bounded by ``handshake_timeout``.

Error responses to input h11 cannot parse (a request that is not HTTP at all) are written as
fixed bytes: h11 can only answer a request it has parsed.  Error bodies are short fixed texts:
they never repeat what the client sent.  Every response carries the standard reason phrase; a
``HEAD`` request gets the headers a ``GET`` would get, without the body.  Plain HTTP sent to a
TLS listener is answered with a plain-text 400 (the TLS layer reports it as such); a TLS
handshake sent to a plain listener is closed.  Both are logged at debug level.
"""

from __future__ import annotations

import http
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio

from ._types import CallContext, Request, Response

if TYPE_CHECKING:
    from ._listener_tasks import ListenerTasks

__all__ = ["HttpHandler", "HttpLimits", "Service", "Upgrade", "UpgradeHandler", "serve_http"]


class HttpHandler(Protocol):
    """Anything that answers requests: a :class:`WebSocketHandler` or a plain HTTP handler."""

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response: ...


class Service(Protocol):
    """A task a handler needs running before it serves (its backplane)."""

    @property
    def running(self) -> bool: ...

    async def check(self) -> None:
        """Fail now, with a clear error, if it cannot run."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


@runtime_checkable
class UpgradeHandler(HttpHandler, Protocol):
    """A handler that takes over a stream after its 101 (a :class:`WebSocketHandler`): what
    the server needs of it."""

    @property
    def close_timeout(self) -> float: ...
    @property
    def backplane(self) -> Service | None: ...

    async def start(
        self,
        listener_id: str,
        cx: CallContext,
        hdr: Request,
        stream: trio.abc.Stream,
        *,
        initial_data: bytes = ...,
        stopping: str | None = ...,
        tasks: ListenerTasks | None = ...,
        extensions: str | None = ...,
    ) -> None:
        """Run the upgraded stream until the connection ends."""

    def stop_listener(self, listener_id: str) -> None:
        """Close the connections accepted by listener ``listener_id`` (1001)."""

    def response_sent(self, status: int, cid: str = "") -> None:
        """The server sent its answer to request ``cid`` (``cx.id``; 101: the upgrade went
        out)."""


@attrs.frozen
class HttpLimits:
    """Bounds on what a client may send before its connection is upgraded.

    ``handshake_timeout`` (10 s) bounds the wait for each request (slowloris); the request head
    may be at most ``max_header_bytes`` (16 KiB, else 431) with at most ``max_headers`` (100,
    else 431) headers; a request body at most ``max_body_bytes`` (64 KiB, else 413).
    """

    handshake_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 64 * 1024


@attrs.frozen
class Upgrade:
    """A request that a handler accepted with 101: run ``handler.start`` on the stream."""

    handler: UpgradeHandler
    request: Request
    cx: CallContext
    trailing: bytes
    #: the ``Sec-WebSocket-Extensions`` value of the 101 response (the extensions in force)
    extensions: str = ""


_EXTENSIONS = "sec-websocket-extensions"


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _PlainHttpOnTls(Exception):
    """The TLS layer saw an HTTP request where a ClientHello was due."""


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _plain_response(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` response as bytes (for input h11 could not parse)."""
    body = (message + "\n").encode("utf-8", "replace")
    return (
        f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


#: The body of an error answer to a request h11 refused, by status (never the request's bytes).
_PARSE_ERRORS = {
    400: "bad request: malformed HTTP/1.1 request",
    431: "request header fields too large",
}


def parse_request(event: h11.Request) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name = raw_name.decode("ascii").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    target = event.target.decode("ascii", "replace")
    parts = urlsplit(target)
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Request(
        method=event.method.decode("ascii"),
        path=unquote(parts.path) or "/",
        query=query,
        http_version=event.http_version.decode("ascii"),
        headers=headers,
        raw_target=target,
    )


async def _next_event(
    stream: trio.abc.ReceiveStream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        try:
            data = await stream.receive_some(16384)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError) and cause.reason == "HTTP_REQUEST":
                raise _PlainHttpOnTls from exc
            data = b""
        except trio.ClosedResourceError:
            data = b""
        conn.receive_data(bytes(data))


async def _read_request(
    stream: trio.abc.ReceiveStream, conn: h11.Connection, limits: HttpLimits
) -> tuple[Request, bytes] | None:
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        return None
    if not isinstance(event, h11.Request):
        raise _HttpError(400, f"unexpected {type(event).__name__}")
    if len(event.headers) > limits.max_headers:
        raise _HttpError(431, f"too many header fields (max {limits.max_headers})")
    # h11 bounds only a head that is still incomplete; one that arrived whole is measured here
    head_size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
    if head_size > limits.max_header_bytes:
        raise _HttpError(431, f"request head over {limits.max_header_bytes} bytes")
    request = parse_request(event)
    body = bytearray()
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limits.max_body_bytes:
                raise _HttpError(413, f"request body over {limits.max_body_bytes} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:  # ConnectionClosed mid-body
            return None


async def serve_http(
    stream: trio.abc.Stream,
    *,
    route: Callable[[str], HttpHandler | None],
    make_cx: Callable[[Request], CallContext],
    limits: HttpLimits,
    on_error: Callable[[str], None],
    on_debug: Callable[[str], None] = lambda message: None,
) -> Upgrade | None:
    """Answer requests on ``stream`` until one is upgraded (returned) or the connection ends
    (None; the caller closes the stream).  ``on_error`` logs a failure of ours (with the
    traceback), ``on_debug`` a refused client; an :class:`UpgradeHandler` is told the status of
    each answer it gave (``response_sent``; 101 once it is sent)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    while True:
        try:
            with trio.fail_after(limits.handshake_timeout):
                received = await _read_request(stream, conn, limits)
        except trio.TooSlowError:
            on_debug("request timed out (408)")
            await _send_quietly(stream, _plain_response(408, "request timed out"))
            return None
        except h11.RemoteProtocolError as exc:
            if conn.trailing_data[0].startswith(b"\x16\x03"):
                on_debug("a TLS handshake on a plain (ws://) listener; closed")
                return None
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            on_debug(f"refused with {status}: {exc!r}")
            message = _PARSE_ERRORS.get(status, _reason(status))
            await _send_quietly(stream, _plain_response(status, message))
            return None
        except _HttpError as exc:
            on_debug(f"refused with {exc.status}: {exc}")
            await _send_quietly(stream, _plain_response(exc.status, str(exc)))
            return None
        except _PlainHttpOnTls:
            on_debug("plain HTTP on a TLS (wss://) listener; answered 400")
            if isinstance(stream, trio.SSLStream):
                await _send_quietly(
                    stream.transport_stream,
                    _plain_response(400, "this port speaks TLS: use https:// or wss://"),
                )
            return None
        if received is None:
            return None
        request, body = received
        cx = make_cx(request)
        handler = route(request.path)
        response: Response
        if handler is None:
            response = Response(404, f"nothing is served at {request.path}")
        else:
            try:
                response = await handler.handle_request(cx, request, body)
            except Exception:
                on_error(f"handle_request failed for {request.method} {request.path}")
                response = Response(500, "internal server error", close=True)
        if response.code == 101 and not response.close:
            if not isinstance(handler, UpgradeHandler):
                on_error(f"handler for {request.path} answered 101 but cannot start a connection")
                response = Response(500, "internal server error", close=True)
            else:
                try:
                    data = conn.send(
                        h11.InformationalResponse(
                            status_code=101,
                            headers=list(response.headers.items()),
                            reason=b"Switching Protocols",
                        )
                    )
                except h11.LocalProtocolError:
                    on_error("cannot switch protocols")
                    response = Response(500, "internal server error", close=True)
                else:
                    assert data is not None
                    await stream.send_all(data)
                    handler.response_sent(101, cx.id)
                    extensions = next(
                        (v for k, v in response.headers.items() if k.lower() == _EXTENSIONS), ""
                    )
                    return Upgrade(handler, request, cx, conn.trailing_data[0], extensions)
        if response.code == 101:  # refused upgrade ("close" set)
            response = Response(
                403, response.body or "upgrade refused", response.headers, close=True
            )
        if isinstance(handler, UpgradeHandler):
            handler.response_sent(response.code, cx.id)
        if not await _send_response(stream, conn, response, request.method == "HEAD", on_error):
            return None
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return None
        conn.start_next_cycle()


async def _send_response(
    stream: trio.abc.SendStream,
    conn: h11.Connection,
    response: Response,
    head: bool,
    on_error: Callable[[str], None],
) -> bool:
    """Send ``response`` with h11 (to a HEAD request: its headers only, the Content-Length
    that of the body a GET would get); False when the connection must be closed afterwards."""
    body = response.body_bytes
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
    if not any(k.lower() == "content-type" for k, _ in headers) and body:
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    headers.append(("Content-Length", str(len(body))))
    if response.close:
        headers.append(("Connection", "close"))
    reason = _reason(response.code).encode("ascii")
    try:
        parts = [
            conn.send(h11.Response(status_code=response.code, headers=headers, reason=reason)),
            conn.send(h11.Data(data=body)) if body and not head else b"",
            conn.send(h11.EndOfMessage()),
        ]
    except h11.LocalProtocolError:
        on_error(f"cannot send a {response.code} response")
        await _send_quietly(stream, _plain_response(500, "internal server error"))
        return False
    await _send_quietly(stream, b"".join(p for p in parts if p))
    return not response.close and conn.our_state is h11.DONE


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> None:
    """Best-effort write of a final response: the client may already be gone."""
    try:
        with trio.move_on_after(5):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass

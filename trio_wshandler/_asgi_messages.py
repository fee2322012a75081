"""What crosses an ASGI server's boundary, both ways (sans-I/O): the scope of a WebSocket
request as the handler's ``CallContext`` and ``Request``, the handler's answer as
``websocket.accept`` or a refusal, and the frames queued for a connection back into the
messages an ASGI server frames itself.

Under ASGI (Hypercorn, Quart-Trio) the server parses and writes the frames: a connection's
send queue still holds encoded frames (so that ``send_all`` encodes a message once, and the
queue's bounds, the slow-consumer policy and the counters are the same as under ``serve()``),
and :class:`Unframer` turns them into ``websocket.send`` payloads.  Every recipient of one
broadcast gets the same frame object: :class:`LastDecoded` keeps the last one decoded so that
its text is decoded once, not once per client.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs

from ._ids import new_connection_id
from ._types import CallContext, Request, Response
from .codec import CloseCode, FrameError, Opcode

__all__ = [
    "CloseRequest",
    "LastDecoded",
    "Unframer",
    "accept_message",
    "refusal",
    "refusal_messages",
    "scope_request",
]

#: Headers of a 101 that the ASGI server writes itself (``websocket.accept`` may not carry
#: them: it negotiates the handshake, the subprotocol and its own extensions).
_HANDSHAKE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)

_unpack_h = struct.Struct("!H").unpack_from
_unpack_q = struct.Struct("!Q").unpack_from


def scope_request(scope: Mapping[str, Any], listener_id: str) -> tuple[CallContext, Request]:
    """The handler's view of a ``websocket`` scope: a new connection id, the client and server
    addresses, the request head (lower-case header names, repeated headers joined by ``", "``
    as ``serve()`` does) and the URL the client asked for."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin-1").lower()
        value = bytes(raw_value).decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query_string = bytes(scope.get("query_string", b"")).decode("latin-1")
    raw_path = scope.get("raw_path")
    path_text = (bytes(raw_path).decode("latin-1") if raw_path else scope.get("path", "/")) or "/"
    raw_target = f"{path_text}?{query_string}" if query_string else path_text
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        query.setdefault(key, value)
    client = scope.get("client") or ("", 0)
    server = scope.get("server") or ("", 0)
    local = (str(server[0]), int(server[1] or 0))
    scheme = scope.get("scheme", "ws")
    host = headers.get("host") or f"{local[0]}:{local[1]}"
    request = Request(
        method="GET",
        path=scope.get("path") or unquote(path_text),
        query=query,
        http_version=str(scope.get("http_version", "1.1")),
        headers=headers,
        raw_target=raw_target,
    )
    cx = CallContext(
        id=new_connection_id(),
        listener_id=listener_id,
        local=local,
        peer=(str(client[0]), int(client[1] or 0)),
        url=f"{scheme}://{host}{raw_target}",
        ssl=scheme == "wss",
    )
    return cx, request


def accept_message(response: Response, offered: Sequence[str]) -> dict[str, Any]:
    """The ``websocket.accept`` of a 101: the subprotocol spelled as the client offered it
    (the server compares exactly), and the headers a subclass added (``with_headers``)."""
    subprotocol: str | None = None
    chosen = ""
    extra: list[tuple[bytes, bytes]] = []
    for name, value in response.headers.items():
        lower = name.lower()
        if lower == "sec-websocket-protocol":
            chosen = value.strip().lower()
        elif lower not in _HANDSHAKE_HEADERS:
            extra.append((lower.encode("latin-1"), value.encode("latin-1")))
    if chosen:
        subprotocol = next((p for p in offered if p.lower() == chosen), None)
    return {"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra}


def refusal(response: Response) -> tuple[int, dict[str, str], bytes]:
    """A refused upgrade's status, headers and body as ``serve()`` sends them: a 101 marked
    ``close`` is a 403 "upgrade refused"; a body without a type is plain text."""
    code, body = response.code, response.body_bytes
    if code == 101:
        code, body = 403, body or b"upgrade refused"
    headers = {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "connection")
    }
    if body and "content-type" not in headers:
        headers["content-type"] = "text/plain; charset=utf-8"
    return code, headers, body


def refusal_messages(response: Response, http_response: bool) -> list[dict[str, Any]]:
    """What refuses an upgrade: the handler's status, headers and body (:func:`refusal`) when
    the server has the ``websocket.http.response`` extension, else ``websocket.close`` (the
    server answers 403)."""
    if not http_response:
        return [{"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION}]
    code, headers, body = refusal(response)
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode("ascii")))
    return [
        {"type": "websocket.http.response.start", "status": code, "headers": raw},
        {"type": "websocket.http.response.body", "body": body, "more_body": False},
    ]


@attrs.frozen
class CloseRequest:
    """A Close frame from the queue: ``websocket.close`` with this code and reason."""

    code: int
    reason: str


class LastDecoded:
    """The last whole single-frame message decoded, shared by the connections of a mount: a
    broadcast queues the same frame object on every client, so it is decoded once."""

    __slots__ = ("frame", "message")

    def __init__(self) -> None:
        self.frame: bytes | None = None
        self.message: str | bytes = b""


class Unframer:
    """One connection's queued frames back into whole messages (its own state: a fragmented
    message sent with ``send_frame`` is joined until its last frame).  Pings and Pongs are
    dropped: an ASGI application can send neither (the server answers Pings itself)."""

    __slots__ = ("_last", "_opcode", "_parts")

    def __init__(self, last: LastDecoded) -> None:
        self._last = last
        self._opcode = 0  # of the fragmented message being joined, else 0
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> list[str | bytes | CloseRequest]:
        """The messages that the frames in ``data`` complete (usually one frame, one message).

        :raises FrameError: a masked or compressed frame, or a continuation out of place (not
            a frame the package queues for an ASGI connection).
        """
        last = self._last
        if data is last.frame and not self._opcode:  # (not inside a fragmented message)
            return [last.message]
        out: list[str | bytes | CloseRequest] = []
        view = memoryview(data)
        offset, end = 0, len(data)
        frames = 0
        while offset < end:
            frames += 1
            b0, b1 = view[offset], view[offset + 1]
            if b1 & 0x80 or b0 & 0x70:
                raise FrameError("a masked or compressed frame cannot go through ASGI")
            length = b1 & 0x7F
            start = offset + 2
            if length == 126:
                (length,) = _unpack_h(view, start)
                start += 2
            elif length == 127:
                (length,) = _unpack_q(view, start)
                start += 8
            offset = start + length
            message = self._frame(b0 & 0x0F, bool(b0 & 0x80), view[start:offset])
            if message is not None:
                out.append(message)
        first = out[0] if len(out) == 1 else None
        whole = frames == 1 and data[0] & 0x8F in (0x81, 0x82)  # exactly one whole message
        if isinstance(first, str | bytes) and whole:
            last.frame, last.message = data, first  # one whole message: the next client's too
        return out

    def _frame(
        self, opcode: int, fin: bool, payload: memoryview
    ) -> str | bytes | CloseRequest | None:
        if opcode == Opcode.CLOSE:
            if len(payload) < 2:
                return CloseRequest(CloseCode.NORMAL_CLOSURE, "")
            code = int.from_bytes(payload[:2], "big")
            return CloseRequest(code, str(payload[2:], "utf-8", "replace"))
        if opcode in (Opcode.PING, Opcode.PONG):
            return None
        if opcode == Opcode.CONTINUATION:
            if not self._opcode:
                raise FrameError("a continuation frame with no message begun")
            self._parts.append(bytes(payload))
            if not fin:
                return None
            whole, opcode = b"".join(self._parts), self._opcode
            self._parts, self._opcode = [], 0
            return whole.decode("utf-8") if opcode == Opcode.TEXT else whole
        if self._opcode:
            raise FrameError("a new message began inside a fragmented one")
        if not fin:
            self._opcode = opcode
            self._parts = [bytes(payload)]
            return None
        return str(payload, "utf-8") if opcode == Opcode.TEXT else bytes(payload)

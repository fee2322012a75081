"""The sans-I/O side of the ASGI mount: scopes, answers, and queued frames back into messages."""

from __future__ import annotations

import pytest

from trio_wshandler import Response
from trio_wshandler._asgi_messages import (
    CloseRequest,
    LastDecoded,
    Unframer,
    accept_message,
    refusal_messages,
    scope_request,
)
from trio_wshandler.codec import CloseCode, FrameError, Opcode, encode_message


def test_a_scope_becomes_the_handlers_request() -> None:
    scope = {
        "type": "websocket",
        "scheme": "wss",
        "http_version": "1.1",
        "path": "/room/a b",
        "raw_path": b"/room/a%20b",
        "query_string": b"token=t&x=1&x=2",
        "headers": [(b"Host", b"chat.example"), (b"X-Tag", b"a"), (b"x-tag", b"b")],
        "client": ("10.0.0.7", 5555),
        "server": ("127.0.0.1", 8443),
        "subprotocols": ["chat"],
    }
    cx, hdr = scope_request(scope, "asgi")
    assert hdr.method == "GET" and hdr.path == "/room/a b"
    assert hdr.raw_target == "/room/a%20b?token=t&x=1&x=2"
    assert hdr.query == {"token": "t", "x": "1"}
    assert hdr.headers["x-tag"] == "a, b" and hdr.header("Host") == "chat.example"
    assert cx.peer == ("10.0.0.7", 5555) and cx.local == ("127.0.0.1", 8443)
    assert cx.url == "wss://chat.example/room/a%20b?token=t&x=1&x=2" and cx.ssl
    assert cx.listener_id == "asgi" and len(cx.id) == 26
    assert scope_request(scope, "asgi")[0].id != cx.id
    bare_cx, bare = scope_request({"type": "websocket", "path": "/"}, "m")
    assert bare.raw_target == "/" and bare_cx.peer == ("", 0)


def test_the_accept_keeps_the_clients_spelling_and_the_extra_headers() -> None:
    response = Response(
        101,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Accept": "x",
            "Sec-WebSocket-Extensions": "permessage-deflate",
            "Sec-WebSocket-Protocol": "Chat.V2",
            "X-Room": "7",
        },
    )
    message = accept_message(response, ["chat.v1", "chat.v2"])
    assert message == {
        "type": "websocket.accept",
        "subprotocol": "chat.v2",
        "headers": [(b"x-room", b"7")],
    }
    assert accept_message(Response(101), ["a"])["subprotocol"] is None


def test_refusals() -> None:
    refused = Response(429, "too many", {"Retry-After": "3", "Content-Length": "99"}, close=True)
    start, body = refusal_messages(refused, http_response=True)
    assert start["status"] == 429
    assert (b"retry-after", b"3") in start["headers"]
    assert (b"content-length", b"8") in start["headers"]
    assert (b"content-type", b"text/plain; charset=utf-8") in start["headers"]
    assert body == {"type": "websocket.http.response.body", "body": b"too many", "more_body": False}
    (close,) = refusal_messages(refused, http_response=False)  # the server answers 403
    assert close["type"] == "websocket.close"
    start, body = refusal_messages(Response(101, close=True), http_response=True)
    assert start["status"] == 403 and body["body"] == b"upgrade refused"


def test_frames_back_into_messages() -> None:
    unframer = Unframer(LastDecoded())
    assert unframer.feed(encode_message("héllo")) == ["héllo"]
    assert unframer.feed(encode_message(b"\x00" * 70000)) == [b"\x00" * 70000]
    assert unframer.feed(encode_message(b"x" * 300)) == [b"x" * 300]
    # fragments (send_frame) are joined; a text split inside a character too
    text = "añb".encode()
    assert unframer.feed(encode_message(text[:2], Opcode.TEXT, fin=False)) == []
    assert unframer.feed(encode_message(b"", Opcode.PING)) == []  # between fragments: dropped
    assert unframer.feed(encode_message(text[2:], Opcode.CONTINUATION)) == ["añb"]
    # several frames in one queued item; a Close with and without a code
    joined = encode_message("a") + encode_message(b"b") + encode_message(b"", Opcode.PONG)
    assert unframer.feed(joined) == ["a", b"b"]
    close = encode_message(CloseCode.GOING_AWAY.to_bytes(2, "big") + b"bye", Opcode.CLOSE)
    assert unframer.feed(close) == [CloseRequest(1001, "bye")]
    assert unframer.feed(encode_message(b"", Opcode.CLOSE)) == [CloseRequest(1000, "")]


def test_frames_an_asgi_server_cannot_take() -> None:
    unframer = Unframer(LastDecoded())
    with pytest.raises(FrameError):
        unframer.feed(encode_message("x", masked=True))
    with pytest.raises(FrameError):
        unframer.feed(encode_message(b"x", rsv1=True))
    with pytest.raises(FrameError):
        unframer.feed(encode_message(b"x", Opcode.CONTINUATION))
    unframer.feed(encode_message(b"x", Opcode.BINARY, fin=False))
    with pytest.raises(FrameError):
        unframer.feed(encode_message(b"y"))


def test_a_broadcast_frame_is_decoded_once_for_every_client() -> None:
    last = LastDecoded()
    first, second = Unframer(last), Unframer(last)
    frame = encode_message("ümlaut " * 20)
    (a,) = first.feed(frame)
    (b,) = second.feed(frame)
    assert a == "ümlaut " * 20 and b is a  # the same object: decoded once
    assert last.frame is frame
    other = encode_message("ümlaut " * 20)  # equal bytes, another frame: decoded again
    (c,) = second.feed(other)
    assert c == a and c is not a
    fragment = encode_message(b"part", Opcode.BINARY, fin=False)
    first.feed(fragment)
    assert last.frame is other  # a fragment is not a whole message: not kept


def test_the_shared_decoding_keeps_each_connections_fragments() -> None:
    last = LastDecoded()
    a, b = Unframer(last), Unframer(last)
    news = encode_message("news")
    assert a.feed(news) == ["news"]  # kept for the next client
    b.feed(encode_message(b"part", Opcode.BINARY, fin=False))
    with pytest.raises(FrameError):  # inside b's fragmented message: not taken from the cache
        b.feed(news)
    # a whole message and a fragment's start in one item: not kept (the start would be lost)
    joined = encode_message("whole") + encode_message(b"x", Opcode.BINARY, fin=False)
    c, d = Unframer(last), Unframer(last)
    assert c.feed(joined) == ["whole"]
    assert d.feed(joined) == ["whole"]
    assert d.feed(encode_message(b"y", Opcode.CONTINUATION)) == [b"xy"]

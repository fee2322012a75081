"""Where an upgrade request is checked against RFC 6455 section 4.2.1 (sans-I/O).

The handler (``_handler.py``) runs its own policy first (Origin, authentication, stopped, full)
and then :func:`check_upgrade`, which answers what is wrong with the request as a WebSocket
opening handshake, in the order a client can act on, or returns the ``Sec-WebSocket-Accept``
value for a valid one.
"""

from __future__ import annotations

import base64
import binascii

from ._types import Request, Response
from .codec import response_key

__all__ = ["check_upgrade", "switching_protocols"]


def check_upgrade(hdr: Request) -> Response | str:
    """The refusal of an invalid upgrade request, or the ``Sec-WebSocket-Accept`` value.

    405 unless GET (or HEAD); 400 unless HTTP/1.1; 426 (with ``Upgrade: websocket``) without
    ``Upgrade: websocket``, and to HEAD, which cannot upgrade; 400 without ``Connection:
    upgrade``; 426 (with ``Sec-WebSocket-Version: 13``) for another version; 400 for a missing
    or malformed ``Sec-WebSocket-Key``.
    """
    if hdr.method not in ("GET", "HEAD"):
        return Response(405, "a WebSocket upgrade must use GET", {"Allow": "GET, HEAD"})
    if hdr.http_version != "1.1":
        return Response(400, "a WebSocket upgrade needs HTTP/1.1", close=True)
    if hdr.method == "HEAD" or "websocket" not in hdr.header_tokens("upgrade"):
        return Response(
            426,
            "this is a WebSocket endpoint: send Upgrade: websocket",
            {"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    if "upgrade" not in hdr.header_tokens("connection"):
        return Response(400, "a WebSocket upgrade needs Connection: Upgrade")
    if hdr.header("sec-websocket-version").strip() != "13":
        return Response(
            426,
            "unsupported Sec-WebSocket-Version; this server supports 13",
            {"Sec-WebSocket-Version": "13"},
        )
    key = hdr.header("sec-websocket-key").strip()
    if not key:
        return Response(400, "missing Sec-WebSocket-Key header")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        return Response(400, "invalid Sec-WebSocket-Key: must be 16 bytes in base64")
    return response_key(key)


def switching_protocols(accept: str, subprotocol: str | None, extensions: str | None) -> Response:
    """The 101 that accepts an upgrade: its ``Sec-WebSocket-Accept`` value, the subprotocol
    and the extensions (``Sec-WebSocket-Extensions``) agreed, if any."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
    if subprotocol is not None:
        headers["Sec-WebSocket-Protocol"] = subprotocol
    if extensions is not None:
        headers["Sec-WebSocket-Extensions"] = extensions
    return Response(101, b"", headers)

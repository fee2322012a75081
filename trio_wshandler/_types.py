"""Value types that cross the boundary between the server and user code.

They follow the seed's hashes: :class:`CallContext` is ``cx``, :class:`Request` is ``hdr`` and
:class:`Response` is the hash ``handleRequest`` returns.  All are attrs classes with slots;
``Request`` and ``Response`` are frozen, ``CallContext`` is not, because an authenticator sets
``cx.user`` on it (as in the seed).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["CallContext", "Request", "Response"]


def _header_dict(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


@attrs.frozen
class Response:
    """What a request handler answers: ``code`` 101 accepts a WebSocket upgrade.

    ``body`` (str is sent as UTF-8) and ``headers`` go back to the client; ``close=True`` closes
    the HTTP connection after the response (with 101 it refuses the upgrade, as in the seed).
    Subclasses that add headers use :meth:`with_headers`.
    """

    code: int
    body: bytes | str = b""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_header_dict)
    close: bool = False

    def with_headers(self, **headers: str) -> Response:
        """A copy with ``headers`` added (``_`` in a name becomes ``-``: ``X_Room=``)."""
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        return attrs.evolve(self, headers={**self.headers, **extra})

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body


@attrs.frozen
class Request:
    """An HTTP request head (the seed's ``hdr``).

    ``headers`` has lower-case names; a header sent more than once has its values joined by
    ``", "``.  ``path`` is URL-decoded; ``query`` maps each parameter to its first value and
    ``raw_target`` is the request target exactly as received.
    """

    method: str
    path: str
    query: Mapping[str, str] = attrs.field(factory=dict)
    http_version: str = "1.1"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    raw_target: str = "/"

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (any case), or ``default``."""
        return self.headers.get(name.lower(), default)

    def header_tokens(self, name: str) -> list[str]:
        """A comma-separated header as lower-case tokens (``Connection: keep-alive, Upgrade``)."""
        return [t.strip().lower() for t in self.header(name).split(",") if t.strip()]


@attrs.define
class CallContext:
    """Where a request came from (the seed's ``cx``).

    ``id`` is unique across processes and restarts and is also the WebSocket connection id;
    ``local`` and ``peer`` are ``(host, port)``; ``url`` is the full URL the client asked for;
    ``user`` is set by the authenticator (``None`` when none ran or it allows anonymous access).
    """

    id: str
    listener_id: str
    local: tuple[str, int]
    peer: tuple[str, int]
    url: str
    ssl: bool = False
    user: str | None = None

"""Where the ``Origin`` of an upgrade request is checked (cross-site WebSocket hijacking).

A browser sends cookies and HTTP credentials with a WebSocket upgrade from any page, whatever
site it came from, and the same-origin policy does not apply to WebSockets: a page on
``https://evil.example`` can open ``wss://your.app/ws`` with the user's cookies.  The ``Origin``
header, which browsers always set and scripts cannot forge, is what tells them apart
(RFC 6455 section 10.2).  Non-browser clients usually send none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import attrs

__all__ = ["OriginCheck", "OriginsLike", "normalize_origin"]

OriginsLike = Iterable[str | Callable[[str], bool]] | Callable[[str], bool]

_HOST = re.compile(r"[a-z0-9._~\-]+|[0-9a-f:.]+")  # a name, or an IPv6 address (unbracketed)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, without a default port; None if not an origin.

    ``"null"`` (sandboxed frames, ``file:`` pages) stays ``"null"``.
    """
    value = value.strip()
    if value.lower() == "null":
        return "null"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if (
        not parts.scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if not _HOST.fullmatch(host):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@attrs.frozen
class OriginCheck:
    """Allowed origins: exact ``scheme://host[:port]`` values and/or predicates.

    Built from the handler's ``origins`` option: a callable, or an iterable of origin strings
    and callables (a request is allowed if its Origin is listed or any callable returns True).
    Listed values are normalized (case, default port) and must be origins, else ``ValueError``.
    """

    allowed: frozenset[str]
    predicates: tuple[Callable[[str], bool], ...]
    require: bool = False

    @classmethod
    def build(cls, origins: OriginsLike, require: bool) -> OriginCheck:
        if isinstance(origins, str | bytes):
            raise TypeError(
                f"origins must be a collection of origins or a callable, not a string: use"
                f" [{origins!r}]"
            )
        if callable(origins):
            return cls(frozenset(), (origins,), require)
        allowed: set[str] = set()
        predicates: list[Callable[[str], bool]] = []
        for item in origins:
            if isinstance(item, str):
                normal = normalize_origin(item)
                if normal is None:
                    raise ValueError(
                        f"origins: {item!r} is not an origin (scheme://host[:port], or 'null')"
                    )
                allowed.add(normal)
            elif callable(item):
                predicates.append(item)
            else:
                raise TypeError(f"origins: {item!r} is neither an origin string nor a callable")
        return cls(frozenset(allowed), tuple(predicates), require)

    def refusal(self, header: str | None) -> tuple[str, str] | None:
        """Why a request with this ``Origin`` header (None: none) is refused, or None.

        Returns the response body (a fixed text: error bodies never repeat what the client
        sent) and a detail for the log.  A predicate that raises propagates (the handler
        answers 500 and logs it).
        """
        if header is None:
            if self.require:
                return "an Origin header is required", "no Origin header"
            return None
        normal = normalize_origin(header)
        if normal is None:
            return "invalid Origin header", f"invalid Origin header {header[:100]!r}"
        if normal in self.allowed:
            return None
        for predicate in self.predicates:
            if predicate(normal):
                return None
        return "origin not allowed", f"origin {normal} is not allowed"

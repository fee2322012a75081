"""Where ``Sec-WebSocket-Extensions`` is parsed and permessage-deflate is negotiated (RFC 7692).

Sans-I/O: a header value goes in, an agreement (or none) comes out.  wsproto has an extension
negotiation (``wsproto.handshake.server_extensions_handshake`` with
``wsproto.extensions.PerMessageDeflate.accept``), but it is not usable as it stands for a
server that must follow RFC 7692 to the letter: it lets the *last* acceptable offer win instead
of the first, carries state from one offer to the next on the same object, accepts unknown and
duplicate parameters (section 7 says to decline such an offer), and raises ``ValueError`` out of
the handshake on ``client_max_window_bits=x``.  So the offers are parsed and judged here, and
wsproto's extension interface is used where it fits: for the frames (``_deflate.py``).

The server always answers with ``server_no_context_takeover`` (section 7.1.1.1 allows it
whatever the client offered): then the compressed bytes of a message depend only on the
server's window size, and :meth:`WebSocketHandler.send_all` compresses a message once per
window size in use, not once per client.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "DeflateAgreement",
    "DeflateOptions",
    "agreement_from_response",
    "negotiate_deflate",
    "parse_extensions",
]

EXTENSION_NAME = "permessage-deflate"

#: Most extension offers read from one ``Sec-WebSocket-Extensions`` value: a browser sends one
#: or two; a header of thousands of empty offers is declined as malformed, unparsed.
MAX_EXTENSIONS = 32

#: RFC 7230 token, and the optional whitespace and quoted-string of RFC 6455 section 9.1.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_OWS = r"[ \t]*"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t !-~])*"'
_PARAM = re.compile(rf"{_OWS};{_OWS}({_TOKEN})(?:{_OWS}={_OWS}({_TOKEN}|{_QUOTED}))?")
_NAME = re.compile(rf"{_OWS}({_TOKEN})")
_COMMA = re.compile(rf"{_OWS},")
_SEPARATOR = re.compile(rf"{_OWS}(?:,|$)")
_WINDOW_BITS = re.compile(r"8|9|1[0-5]")  # decimal 8-15, no leading zero (RFC 7692 7.1.2)


def _window_bits(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int from 8 to 15 or None, not {value!r}")
    if not 8 <= value <= 15:
        raise ValueError(f"{name} must be from 8 to 15, got {value}")
    return value


def _check_level(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 9:
        raise ValueError(f"level must be an int from -1 to 9, got {value!r}")


def _check_mem_level(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
        raise ValueError(f"mem_level must be an int from 1 to 9, got {value!r}")


def _check_threshold(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, got {value!r}")


def _server_bits(value: int) -> int:
    bits = _window_bits("server_max_window_bits", value)
    assert bits is not None
    return bits


def _client_bits(value: int | None) -> int | None:
    return _window_bits("client_max_window_bits", value)


@attrs.frozen
class DeflateOptions:
    """permessage-deflate settings of a :class:`WebSocketHandler` (``compression=``).

    ``threshold`` (128 bytes)
        messages shorter than this go out uncompressed: below it deflate saves a few bytes at
        best and costs CPU on both sides.  A message whose compressed form is not smaller than
        the original also goes out uncompressed.
    ``compress_limit`` (1 MiB)
        messages larger than this go out uncompressed: compression runs inside ``send()`` and
        ``send_all()``, which must not hold the event loop for long (about 12 ms per MiB of
        JSON at level 6, 26 ms for a MiB that does not compress: benchmarks/deflate_costs.py).
        Raise it knowing that cost.
    ``level`` (6, zlib's default; 1 fastest to 9 smallest, 0 none, -1 zlib's default)
        compression level of outgoing messages.  With compress-once broadcasting its CPU cost
        is paid once per message and window size, not per client.
    ``mem_level`` (8, zlib's default)
        zlib's memory level for the compressor; the handler keeps one compressor per window
        size in use (about 256 KiB for 15 bits), not one per connection.
    ``server_max_window_bits`` (15)
        largest LZ77 window of outgoing messages (8-15); a client may ask for less and then
        gets less.  Costs nothing per connection: see ``mem_level``.  (zlib cannot compress
        with an 8-bit window: a client that asks for 8 is sent Huffman-coded messages, which
        refer to no earlier bytes and so fit any window.)
    ``client_max_window_bits`` (None: as the client likes, up to 15)
        asked of clients that offer ``client_max_window_bits``: the largest window their
        messages may use, which bounds our inflater's window (2**bits bytes).
    ``client_context_takeover`` (False)
        False asks every client for ``client_no_context_takeover``: each incoming message is
        compressed on its own, and an idle connection holds no zlib state.  True lets clients
        keep their context between messages (better compression of small client messages) at
        the cost of one inflater per connection for as long as it lives: about 7 KiB plus a
        window of 2**``client_max_window_bits`` bytes (32 KiB at 15 bits).
    """

    threshold: int = attrs.field(default=128, validator=_check_threshold)
    compress_limit: int = attrs.field(default=1 << 20, validator=_check_threshold)
    level: int = attrs.field(default=6, validator=_check_level)
    mem_level: int = attrs.field(default=8, validator=_check_mem_level)
    server_max_window_bits: int = attrs.field(default=15, converter=_server_bits)
    client_max_window_bits: int | None = attrs.field(default=None, converter=_client_bits)
    client_context_takeover: bool = False


@attrs.frozen
class DeflateAgreement:
    """The permessage-deflate parameters in force on one connection (from the 101 response).

    The server side resets its compression context after every message (it always answers with
    ``server_no_context_takeover``), so only the window sizes and whether the *client* keeps its
    context matter.
    """

    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    client_no_context_takeover: bool = True

    def header(self, *, server_bits_in_response: bool, client_bits_in_response: bool) -> str:
        """The ``Sec-WebSocket-Extensions`` value that tells the client this agreement."""
        parts = [EXTENSION_NAME, "server_no_context_takeover"]
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if server_bits_in_response:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if client_bits_in_response:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


Params = list[tuple[str, str | None]]


def parse_extensions(value: str) -> list[tuple[str, Params]] | None:
    """Parse a ``Sec-WebSocket-Extensions`` value into ``[(name, [(param, value), ...]), ...]``.

    Names and parameter names are lower-cased, quoted values unquoted.  Returns None for a value
    that does not follow RFC 6455 section 9.1 (the caller then declines every extension: a
    malformed offer must not fail the handshake), or of more than ``MAX_EXTENSIONS``
    offers.  Empty list elements are allowed, as RFC 7230's ``#rule`` says.
    """
    result: list[tuple[str, Params]] = []
    pos, end = 0, len(value)
    while pos < end:
        comma = _COMMA.match(value, pos)
        if comma:  # an empty element
            pos = comma.end()
            continue
        name = _NAME.match(value, pos)
        if not name:
            return result if _SEPARATOR.match(value, pos) else None  # trailing whitespace
        pos = name.end()
        params: Params = []
        while (param := _PARAM.match(value, pos)) is not None:
            raw = param.group(2)
            if raw is not None and raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.append((param.group(1).lower(), raw))
            pos = param.end()
        result.append((name.group(1).lower(), params))
        if len(result) > MAX_EXTENSIONS:
            return None
        separator = _SEPARATOR.match(value, pos)  # a comma, or the end
        if separator is None:
            return None
        pos = separator.end()
    return result


def _accept(params: Params, options: DeflateOptions) -> tuple[DeflateAgreement, str] | None:
    """One permessage-deflate offer judged by RFC 7692 section 7: the agreement and the
    response header, or None to decline it."""
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name in seen:
            return None  # the same parameter twice
        seen[name] = value
    for name, value in seen.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            if value is None or not _WINDOW_BITS.fullmatch(value):
                return None
        elif name == "client_max_window_bits":
            if value is not None and not _WINDOW_BITS.fullmatch(value):
                return None
        else:
            return None  # a parameter RFC 7692 does not define for an offer
    requested = seen.get("server_max_window_bits")
    server_bits = options.server_max_window_bits
    if requested is not None:
        server_bits = min(server_bits, int(requested))
    # the client's window is 15 unless the response names one, which it may only do when the
    # offer has client_max_window_bits (7.1.2.2): then we echo the client's own value (no
    # larger inflater than it needs) or our limit, whichever is smaller
    client_bits = 15
    client_bits_in_response = False
    if "client_max_window_bits" in seen:
        offered = seen["client_max_window_bits"]
        limit = options.client_max_window_bits
        if offered is not None or limit is not None:
            client_bits = min(limit or 15, int(offered) if offered is not None else 15)
            client_bits_in_response = True
    no_takeover = not options.client_context_takeover or "client_no_context_takeover" in seen
    agreement = DeflateAgreement(server_bits, client_bits, no_takeover)
    header = agreement.header(
        server_bits_in_response=requested is not None or server_bits < 15,
        client_bits_in_response=client_bits_in_response,
    )
    return agreement, header


def negotiate_deflate(
    header: str, options: DeflateOptions | None
) -> tuple[DeflateAgreement, str] | None:
    """Pick the first permessage-deflate offer in ``header`` that we can accept.

    Returns the agreement and the ``Sec-WebSocket-Extensions`` value for the 101 response, or
    None (no offer, compression off, a malformed header, or no acceptable offer: the connection
    then runs uncompressed; other extensions are always declined).
    """
    if options is None or not header:
        return None
    offers = parse_extensions(header)
    for name, params in offers or ():
        if name == EXTENSION_NAME:
            accepted = _accept(params, options)
            if accepted is not None:
                return accepted
    return None


def agreement_from_response(header: str) -> DeflateAgreement | None:
    """The agreement a 101 response's ``Sec-WebSocket-Extensions`` value announces, or None.

    The response is what the client was told, so it is what the connection must follow (a
    subclass of the handler may have changed or removed the header)."""
    for name, params in parse_extensions(header) or ():
        if name != EXTENSION_NAME:
            continue
        values = dict(params)
        server_bits = values.get("server_max_window_bits")
        client_bits = values.get("client_max_window_bits")
        return DeflateAgreement(
            int(server_bits) if server_bits and _WINDOW_BITS.fullmatch(server_bits) else 15,
            int(client_bits) if client_bits and _WINDOW_BITS.fullmatch(client_bits) else 15,
            "client_no_context_takeover" in values,
        )
    return None

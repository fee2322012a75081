"""permessage-deflate negotiation (RFC 7692 section 7): offers judged, answers written."""

from __future__ import annotations

import pytest

from trio_wshandler import DeflateOptions, WebSocketHandler
from trio_wshandler._extensions import (
    DeflateAgreement,
    agreement_from_response,
    negotiate_deflate,
    parse_extensions,
)

from .conftest import raw_http, running, upgrade_request

BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", BASE),
        # what browsers and websockets offer: a window-size hint we need not answer
        ("permessage-deflate; client_max_window_bits", BASE),
        ("permessage-deflate; client_max_window_bits=10", BASE + "; client_max_window_bits=10"),
        ("permessage-deflate; server_max_window_bits=10", BASE + "; server_max_window_bits=10"),
        ('permessage-deflate; server_max_window_bits="9"', BASE + "; server_max_window_bits=9"),
        ("permessage-deflate; server_max_window_bits=8", BASE + "; server_max_window_bits=8"),
        ("permessage-deflate; server_no_context_takeover", BASE),
        ("permessage-deflate; client_no_context_takeover", BASE),
        ("Permessage-Deflate; Server_Max_Window_Bits=12", BASE + "; server_max_window_bits=12"),
        # several offers: the first acceptable one wins
        (
            "permessage-deflate; server_max_window_bits=9, permessage-deflate",
            BASE + "; server_max_window_bits=9",
        ),
        ("permessage-deflate; foo=1, permessage-deflate", BASE),
        (
            "permessage-deflate; server_max_window_bits, "
            "permessage-deflate; server_max_window_bits=11",
            BASE + "; server_max_window_bits=11",
        ),
        # other extensions are declined, and empty list elements allowed
        ("x-webkit-deflate-frame, permessage-deflate", BASE),
        (" , ,permessage-deflate ,", BASE),
        # offers to decline (section 7: unknown or duplicate parameters, invalid values)
        ("permessage-deflate; foo", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits=7", None),
        ("permessage-deflate; server_max_window_bits=08", None),
        ("permessage-deflate; server_max_window_bits=x", None),
        ("permessage-deflate; client_max_window_bits=16", None),
        ("permessage-deflate; client_max_window_bits=", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; server_max_window_bits=9; server_max_window_bits=10", None),
        # malformed headers: nothing is accepted (and nothing fails)
        ("permessage-deflate;;", None),
        ('permessage-deflate; server_max_window_bits="9', None),
        ("permessage-deflate server_no_context_takeover", None),
        ("permessage-deflate; =9", None),
        ("x-other, permessage-deflate; a b", None),
        ("", None),
        ("x-webkit-deflate-frame", None),
    ],
)
def test_offers(offer: str, answer: str | None) -> None:
    result = negotiate_deflate(offer, DeflateOptions())
    assert (result[1] if result else None) == answer


@pytest.mark.parametrize(
    ("options", "offer", "answer", "agreement"),
    [
        (
            DeflateOptions(server_max_window_bits=10),
            "permessage-deflate",
            BASE + "; server_max_window_bits=10",
            DeflateAgreement(10, 15, True),
        ),
        (
            DeflateOptions(server_max_window_bits=10),
            "permessage-deflate; server_max_window_bits=12",
            BASE + "; server_max_window_bits=10",
            DeflateAgreement(10, 15, True),
        ),
        (
            DeflateOptions(client_max_window_bits=9),
            "permessage-deflate; client_max_window_bits",
            BASE + "; client_max_window_bits=9",
            DeflateAgreement(15, 9, True),
        ),
        (
            DeflateOptions(client_max_window_bits=12),
            "permessage-deflate; client_max_window_bits=10",
            BASE + "; client_max_window_bits=10",
            DeflateAgreement(15, 10, True),
        ),
        # a client that does not offer client_max_window_bits cannot be limited (7.1.2.2)
        (
            DeflateOptions(client_max_window_bits=9),
            "permessage-deflate",
            BASE,
            DeflateAgreement(15, 15, True),
        ),
        (
            DeflateOptions(client_context_takeover=True),
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover",
            DeflateAgreement(15, 15, False),
        ),
        (
            DeflateOptions(client_context_takeover=True),
            "permessage-deflate; client_no_context_takeover",
            BASE,
            DeflateAgreement(15, 15, True),
        ),
    ],
)
def test_options_shape_the_answer(
    options: DeflateOptions, offer: str, answer: str, agreement: DeflateAgreement
) -> None:
    result = negotiate_deflate(offer, options)
    assert result is not None
    assert result == (agreement, answer)
    assert agreement_from_response(answer) == agreement  # what the connection then follows


def test_compression_off_declines() -> None:
    assert negotiate_deflate("permessage-deflate", None) is None


def test_parse_extensions() -> None:
    assert parse_extensions('a; b; c="d,e", f;g=1') == [
        ("a", [("b", None), ("c", "d,e")]),
        ("f", [("g", "1")]),
    ]
    assert parse_extensions('a; c="\\"x"') == [("a", [("c", '"x')])]
    assert parse_extensions("a b") is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"level": 10}, ValueError),
        ({"level": True}, ValueError),
        ({"mem_level": 0}, ValueError),
        ({"threshold": -1}, ValueError),
        ({"server_max_window_bits": 7}, ValueError),
        ({"server_max_window_bits": 16}, ValueError),
        ({"server_max_window_bits": "15"}, TypeError),
        ({"client_max_window_bits": 16}, ValueError),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        DeflateOptions(**kwargs)  # type: ignore[arg-type]


def test_handler_checks_compression_type() -> None:
    with pytest.raises(TypeError, match="compression"):
        WebSocketHandler(compression=True)  # type: ignore[arg-type]


async def test_handshake_over_the_wire() -> None:
    """The 101 answers an offer; a malformed or unacceptable one is declined, not failed."""
    handler = WebSocketHandler()
    async with running(handler) as server:
        status, headers, _ = await raw_http(
            server.port,
            upgrade_request(Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits"),
        )
        assert status == 101
        assert headers["sec-websocket-extensions"] == BASE
        for bad in ("permessage-deflate; foo", "permessage-deflate;;", "x-nothing"):
            status, headers, _ = await raw_http(
                server.port, upgrade_request(Sec_WebSocket_Extensions=bad)
            )
            assert status == 101
            assert "sec-websocket-extensions" not in headers
    off = WebSocketHandler(compression=None)
    async with running(off) as server:
        status, headers, _ = await raw_http(
            server.port, upgrade_request(Sec_WebSocket_Extensions="permessage-deflate")
        )
        assert status == 101
        assert "sec-websocket-extensions" not in headers

"""Origin checks (cross-site WebSocket hijacking): 403 before any authenticator runs."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_wshandler import AbstractAuthenticator, CallContext, Request, Response, WebSocketHandler
from trio_wshandler._origin import normalize_origin

from .conftest import raw_http, running, upgrade_request, ws_url


class CountingAuth(AbstractAuthenticator):
    def __init__(self) -> None:
        self.calls = 0

    async def authenticate_request(
        self, listener_id: str, hdr: Request, cx: CallContext
    ) -> Response | None:
        self.calls += 1
        return None


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("https://App.Example", "https://app.example"),
        ("https://app.example:443", "https://app.example"),
        ("http://app.example:80", "http://app.example"),
        ("http://app.example:8080", "http://app.example:8080"),
        ("https://app.example/", "https://app.example"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("null", "null"),
        ("https://app.example/path", None),
        ("https://user@app.example", None),
        ("app.example", None),
        ("https://app.example:99999", None),
        ("https://a.example, https://b.example", None),
        ("", None),
    ],
)
def test_normalize(value: str, normal: str | None) -> None:
    assert normalize_origin(value) == normal


async def upgrade_status(port: int, origin: str | None) -> tuple[int, bytes]:
    status, _, body = await raw_http(port, upgrade_request(Origin=origin))
    return status, body


async def test_allowed_refused_and_missing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", "trio_wshandler")
    auth = CountingAuth()
    handler = WebSocketHandler(auth, origins=["https://app.example", "http://localhost:8000"])
    async with running(handler) as server:
        assert (await upgrade_status(server.port, "https://app.example"))[0] == 101
        assert (await upgrade_status(server.port, "https://APP.example:443"))[0] == 101
        assert (await upgrade_status(server.port, "http://localhost:8000"))[0] == 101
        assert auth.calls == 3
        status, body = await upgrade_status(server.port, "https://evil.example")
        assert status == 403
        assert body == b"forbidden: origin not allowed"  # a fixed text: nothing echoed
        status, body = await upgrade_status(server.port, "http://app.example")  # other scheme
        assert status == 403
        status, body = await upgrade_status(server.port, "not an origin")
        assert (status, body) == (403, b"forbidden: invalid Origin header")
        assert auth.calls == 3  # the authenticator never saw the refused ones
        assert "origin https://evil.example is not allowed" in caplog.text  # the detail: logged
        # no Origin header: a non-browser client, allowed by default
        assert (await upgrade_status(server.port, None))[0] == 101


async def test_require_origin() -> None:
    handler = WebSocketHandler(origins=["https://app.example"], require_origin=True)
    async with running(handler) as server:
        status, body = await upgrade_status(server.port, None)
        assert (status, body) == (403, b"forbidden: an Origin header is required")
        assert (await upgrade_status(server.port, "https://app.example"))[0] == 101


async def test_callables_and_null() -> None:
    seen: list[str] = []

    def subdomain(origin: str) -> bool:
        seen.append(origin)
        return origin.endswith(".app.example")

    handler = WebSocketHandler(origins=["null", subdomain])
    async with running(handler) as server:
        assert (await upgrade_status(server.port, "https://eu.APP.example"))[0] == 101
        assert (await upgrade_status(server.port, "null"))[0] == 101
        assert (await upgrade_status(server.port, "https://app.example.evil"))[0] == 403
    assert seen == ["https://eu.app.example", "https://app.example.evil"]
    only = WebSocketHandler(origins=lambda origin: origin == "https://a.example")
    async with running(only) as server:
        assert (await upgrade_status(server.port, "https://a.example"))[0] == 101
        assert (await upgrade_status(server.port, "https://b.example"))[0] == 403


async def test_failing_callable_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken(origin: str) -> bool:
        raise RuntimeError("boom")

    handler = WebSocketHandler(origins=[broken])
    async with running(handler) as server:
        status, body = await upgrade_status(server.port, "https://a.example")
    assert (status, body) == (500, b"origin check failed: internal error")
    assert "origin check failed" in caplog.text


async def test_with_a_real_client() -> None:
    handler = WebSocketHandler(origins=["https://app.example"])
    async with running(handler) as server:
        async with connect(ws_url(server), origin="https://app.example") as ws:  # type: ignore[arg-type]
            await ws.ping()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(server), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("origins", "kwargs", "error"),
    [
        ("https://app.example", {}, TypeError),  # a bare string, not a collection
        (["https://app.example/path"], {}, ValueError),
        (["app.example"], {}, ValueError),
        ([42], {}, TypeError),
        (None, {"require_origin": True}, ValueError),
    ],
)
def test_bad_configuration(origins: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        WebSocketHandler(origins=origins, **kwargs)

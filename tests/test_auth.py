"""Authentication: Basic, bearer tokens (header or query), by IP, and crashing authenticators."""

from __future__ import annotations

import base64

import pytest
import trio_websocket
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_wshandler import (
    AbstractAuthenticator,
    AuthenticationError,
    BasicAuthenticator,
    TokenAuthenticator,
)

from .conftest import RecordingHandler, raw_http, running, upgrade_request, ws_url


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_no_authenticator_means_anonymous() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, connect(ws_url(server)):
        [conn] = await handler.wait_connections(1)
        assert conn.cx.user is None


async def test_basic_authentication() -> None:
    handler = RecordingHandler(BasicAuthenticator({"alice": "s3cret"}, realm="chat"))
    async with running(handler) as server:
        status, headers, _ = await raw_http(server.port, upgrade_request())
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="chat"'
        assert headers["connection"] == "close"
        for bad in (basic("alice", "wrong"), basic("bob", "s3cret"), "Basic !!!", "Digest x"):
            status, _, _ = await raw_http(server.port, upgrade_request(Authorization=bad))
            assert status == 401, bad
        async with connect(
            ws_url(server), additional_headers={"Authorization": basic("alice", "s3cret")}
        ):
            [conn] = await handler.wait_connections(1)
            assert conn.cx.user == "alice"


async def test_basic_with_check_function_and_trusted_ip() -> None:
    async def check(user: str, password: str) -> bool:
        return password == user[::-1]

    handler = RecordingHandler(BasicAuthenticator(check, trusted_ips={"127.0.0.1": "local-admin"}))
    async with running(handler) as server:
        async with connect(
            ws_url(server), additional_headers={"Authorization": basic("abc", "cba")}
        ):
            [conn] = await handler.wait_connections(1)
            assert conn.cx.user == "abc"
        async with connect(ws_url(server)):  # no credentials, but from a trusted address
            await handler.wait_connections(1)
            assert handler.connections[-1].cx.user == "local-admin"


async def test_token_in_header_or_query() -> None:
    handler = RecordingHandler(TokenAuthenticator({"tok-123": "carol"}))
    async with running(handler) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server)):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await raw_http(server.port, upgrade_request("/?token=nope"))
        assert status == 401
        async with connect(ws_url(server), additional_headers={"Authorization": "Bearer tok-123"}):
            [conn] = await handler.wait_connections(1)
            assert conn.cx.user == "carol"
        # browsers cannot set headers on a WebSocket: the query parameter works too
        async with trio_websocket.open_websocket_url(ws_url(server, "/?token=tok-123")):
            await handler.wait_connections(1)
            assert handler.connections[-1].cx.user == "carol"


class Crashing(AbstractAuthenticator):
    def requires_authentication(self) -> bool:
        return True

    async def authenticate(self, user: str, password: str) -> None:
        raise RuntimeError("database down")


class CrashingLookup(TokenAuthenticator):
    async def lookup(self, token: str) -> str | None:
        raise ConnectionError("token service down")


@pytest.mark.parametrize(
    ("auth", "header"),
    [(Crashing(), basic("a", "b")), (CrashingLookup({}), "Bearer x")],
)
async def test_crashing_authenticator_is_500_never_101_or_401(
    auth: AbstractAuthenticator, header: str
) -> None:
    handler = RecordingHandler(auth)
    async with running(handler) as server:
        status, _, _ = await raw_http(server.port, upgrade_request(Authorization=header))
    assert status == 500
    assert handler.connections == []


class ByIP(AbstractAuthenticator):
    def requires_authentication(self) -> bool:
        return True

    async def authenticate(self, user: str, password: str) -> None:
        raise AuthenticationError("never")

    async def authenticate_by_ip(self, ip: str) -> str | None:
        return f"user@{ip}"


async def test_authenticate_by_ip() -> None:
    handler = RecordingHandler(ByIP())
    async with running(handler) as server, connect(ws_url(server)):
        [conn] = await handler.wait_connections(1)
    assert conn.cx.user == "user@127.0.0.1"


def test_authenticator_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="users"):
        BasicAuthenticator(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tokens"):
        TokenAuthenticator(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AbstractAuthenticator"):
        RecordingHandler(object())  # type: ignore[arg-type]

"""Authentication of upgrade requests (the seed's ``HttpServer::AbstractAuthenticator``).

A handler calls :meth:`AbstractAuthenticator.authenticate_request` before it accepts an
upgrade.  ``None`` means "go on" (``cx.user`` may now be set); a :class:`Response` (normally a
401) is sent instead of the 101.  Bad credentials are signalled by raising
:class:`AuthenticationError`; anything else an authenticator raises is a bug in it, and the
handler answers 500, never 401 and never 101.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from ._errors import AuthenticationError
from ._types import CallContext, Request, Response

__all__ = ["AbstractAuthenticator", "BasicAuthenticator", "TokenAuthenticator"]


class AbstractAuthenticator:
    """Base class: by default no authentication is required.

    Override :meth:`requires_authentication` to return True and :meth:`authenticate` (and/or
    :meth:`authenticate_by_ip`) to check credentials; or override
    :meth:`authenticate_request` for a different scheme altogether.
    """

    def requires_authentication(self) -> bool:
        """Whether requests must be authenticated at all (default False)."""
        return False

    @property
    def realm(self) -> str:
        """The realm named in ``WWW-Authenticate``."""
        return "trio_wshandler"

    async def authenticate(self, user: str, password: str) -> None:
        """Check Basic credentials; raise :class:`AuthenticationError` when they are wrong."""
        raise AuthenticationError("no credentials are accepted")

    async def authenticate_by_ip(self, ip: str) -> str | None:
        """Return the user name for a peer address that needs no credentials, else None."""
        return None

    def auth_header(self) -> dict[str, str]:
        """The challenge sent with a 401 (the seed's ``getAuthHeader``)."""
        return {"WWW-Authenticate": f'Basic realm="{self.realm}"'}

    def do401(self, message: str = "authentication is required") -> Response:
        """A 401 response with the challenge header, closing the HTTP connection."""
        return Response(401, message, self.auth_header(), close=True)

    async def authenticate_request(
        self, listener_id: str, hdr: Request, cx: CallContext
    ) -> Response | None:
        """Authenticate one request: ``None`` to accept (``cx.user`` set), or a 401 response.

        Basic credentials from ``Authorization`` are checked with :meth:`authenticate`;
        without them, :meth:`authenticate_by_ip` may name a user for the peer address.
        """
        if not self.requires_authentication():
            return None
        authorization = hdr.header("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                return self.do401(f"unsupported authorization scheme {scheme!r}")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return self.do401("malformed Basic credentials")
            user, sep, password = decoded.partition(":")
            if not sep:
                return self.do401("malformed Basic credentials")
            try:
                await self.authenticate(user, password)
            except AuthenticationError as exc:
                return self.do401(f"authentication failed: {exc}")
            cx.user = user
            return None
        ip_user = await self.authenticate_by_ip(cx.peer[0])
        if ip_user is not None:
            cx.user = ip_user
            return None
        return self.do401()


PasswordCheck = Callable[[str, str], bool | Awaitable[bool]]


T = TypeVar("T")


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class BasicAuthenticator(AbstractAuthenticator):
    """HTTP Basic authentication against a ``{user: password}`` table or a check function.

    ``users`` may be a mapping (passwords compared in constant time) or a callable
    ``check(user, password) -> bool`` (sync or async).  ``trusted_ips`` maps peer addresses
    that may connect without credentials to the user name they get.
    """

    def __init__(
        self,
        users: Mapping[str, str] | PasswordCheck,
        *,
        realm: str = "trio_wshandler",
        trusted_ips: Mapping[str, str] | None = None,
    ) -> None:
        if not (isinstance(users, Mapping) or callable(users)):
            raise TypeError("users: a mapping {user: password} or a callable(user, password)")
        self._users = users
        self._realm = realm
        self._trusted_ips = dict(trusted_ips or {})

    def requires_authentication(self) -> bool:
        return True

    @property
    def realm(self) -> str:
        return self._realm

    async def authenticate(self, user: str, password: str) -> None:
        if isinstance(self._users, Mapping):
            expected = self._users.get(user)
            # compare even for unknown users so timing does not reveal which names exist
            ok = (
                hmac.compare_digest((expected or "\0invalid").encode(), password.encode())
                and expected is not None
            )
        else:
            ok = bool(await _maybe_await(self._users(user, password)))
        if not ok:
            raise AuthenticationError(f"bad user name or password for {user!r}")

    async def authenticate_by_ip(self, ip: str) -> str | None:
        return self._trusted_ips.get(ip)


TokenCheck = Callable[[str], Awaitable[str | None] | str | None]


class TokenAuthenticator(AbstractAuthenticator):
    """Bearer tokens, from ``Authorization: Bearer <token>`` or the ``?token=`` query parameter.

    Browsers cannot set headers on a WebSocket, so the query parameter is accepted too (name it
    with ``query_param``; ``None`` disables it).  ``tokens`` maps token -> user name, or is a
    callable ``lookup(token) -> user | None`` (sync or async).
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | TokenCheck,
        *,
        realm: str = "trio_wshandler",
        query_param: str | None = "token",
    ) -> None:
        if not (isinstance(tokens, Mapping) or callable(tokens)):
            raise TypeError("tokens: a mapping {token: user} or a callable(token) -> user")
        self._tokens = tokens
        self._realm = realm
        self._query_param = query_param

    def requires_authentication(self) -> bool:
        return True

    @property
    def realm(self) -> str:
        return self._realm

    def auth_header(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{self.realm}"'}

    async def lookup(self, token: str) -> str | None:
        """The user a token belongs to, or None."""
        if isinstance(self._tokens, Mapping):
            for known, user in self._tokens.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    return user
            return None
        return await _maybe_await(self._tokens(token))

    async def authenticate_request(
        self, listener_id: str, hdr: Request, cx: CallContext
    ) -> Response | None:
        token = None
        authorization = hdr.header("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return self.do401(f"unsupported authorization scheme {scheme!r}")
            token = value.strip()
        elif self._query_param is not None:
            token = hdr.query.get(self._query_param)
        if not token:
            return self.do401("a bearer token is required")
        user = await self.lookup(token)
        if user is None:
            return self.do401("invalid token")
        cx.user = user
        return None

"""Where the handshake's caps are decided: connections and upgrade attempts per client address,
and connections per authenticated user (issue #20).  Sans-I/O: the time is passed in.

One address may otherwise open every connection ``max_connections`` allows, or retry its
handshake as fast as it can; nginx's ``limit_conn``/``limit_req`` are what operators put in
front of servers that lack these.  Addresses are grouped: an IPv6 client usually holds a whole
/64, so its addresses count as one (``ipv6_prefix``).  Behind a reverse proxy every peer is the
proxy: the client's address is then read from ``forwarded_header`` (``X-Forwarded-For``), but
only when the peer is one of ``trusted_proxies`` (a header anyone can send is never believed
otherwise), from the right, skipping the trusted proxies' own addresses.

A handshake that passes the address caps *reserves* its slot before the authenticator runs, so
that 200 simultaneous handshakes from one address cannot all pass a cap of 20 before any of
them is registered; the slot is freed when the answer is not an upgrade, when the connection
ends, or, for a 101 that never started a connection, ``RESERVATION_TIMEOUT`` seconds after it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping

import attrs

from ._options import checked

__all__ = ["RESERVATION_TIMEOUT", "CapRefusal", "CapsTable", "ConnectionCaps"]

#: A slot reserved by a handshake whose connection never started is freed after this long.
RESERVATION_TIMEOUT = 30.0

#: Most addresses whose attempt buckets are kept; past it, the least recently seen goes (an
#: address forgotten gets a full bucket again: a flood of fresh addresses cannot grow memory).
MAX_BUCKETS = 100_000

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


_COUNT = checked(integer=True, allow_none=True)


@attrs.frozen
class ConnectionCaps:
    """What one client may open (``WebSocketHandler(caps=...)``); every cap is off by default.

    ``max_per_address``
        concurrent connections (and handshakes in progress) per client address group.
    ``max_attempts`` per ``per`` seconds (10.0)
        upgrade attempts per address group: a token bucket of ``max_attempts`` refilled over
        ``per`` seconds (an address may burst ``max_attempts`` at once).
    ``max_per_user``
        concurrent connections per authenticated user (``cx.user``; checked after the
        authenticator, the only cap that needs it).
    ``ipv4_prefix`` (32), ``ipv6_prefix`` (64)
        how addresses are grouped: one group per /32 (an IPv4 address) and per /64.
    ``trusted_proxies`` (none)
        networks (``"10.0.0.0/8"``, ``"127.0.0.1"``) whose ``forwarded_header`` is believed.
    ``forwarded_header`` ("X-Forwarded-For")
        where a trusted proxy puts the client's address.

    Refusals are ``429 Too Many Requests`` with ``Retry-After`` (seconds).
    """

    max_per_address: int | None = attrs.field(default=None, validator=_COUNT)
    max_attempts: int | None = attrs.field(default=None, validator=_COUNT)
    per: float = attrs.field(default=10.0, validator=checked())
    max_per_user: int | None = attrs.field(default=None, validator=_COUNT)
    ipv4_prefix: int = attrs.field(default=32, validator=attrs.validators.in_(range(0, 33)))
    ipv6_prefix: int = attrs.field(default=64, validator=attrs.validators.in_(range(0, 129)))
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    forwarded_header: str = "X-Forwarded-For"

    def __attrs_post_init__(self) -> None:
        _networks(self.trusted_proxies)  # a bad network fails here, not at the first request


@attrs.frozen
class CapRefusal:
    """Why a handshake is refused: ``reason`` ("address", "attempts" or "user"), the text of the
    429 answer, and the ``Retry-After`` seconds."""

    reason: str
    text: str
    retry_after: int


class CapsTable:
    """The live counts behind one handler's :class:`ConnectionCaps`."""

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self._trusted = _networks(caps.trusted_proxies)
        #: address group -> (tokens, time of the last refill)
        self._buckets: dict[str, tuple[float, float]] = {}
        #: connection id -> (group, user) of every reserved slot
        self._slots: dict[str, tuple[str, str | None]] = {}
        #: connection id -> deadline of the slots answered 101 whose connection has not
        #: started (a handshake still being answered has no deadline: it ends by itself)
        self._pending: dict[str, float] = {}
        self._per_group: dict[str, int] = {}
        self._per_user: dict[str, int] = {}

    # ---------------------------------------------------------------- addresses

    def client_group(self, peer: str, headers: Mapping[str, str]) -> str:
        """The address group of the client behind ``peer`` (a proxy's header only if trusted)."""
        address = _parse(peer)
        if address is None:
            return peer  # not an IP address (a Unix socket): one group per peer string
        if self._trusted and self._is_trusted(address):
            forwarded = headers.get(self.caps.forwarded_header.lower(), "")
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                hop_address = _parse(hop)
                if hop_address is None:
                    break  # a damaged header: keep the last address we can trust
                address = hop_address
                if not self._is_trusted(hop_address):
                    break
        prefix = self.caps.ipv4_prefix if address.version == 4 else self.caps.ipv6_prefix
        return str(ipaddress.ip_network((address, prefix), strict=False))

    def _is_trusted(self, address: _Address) -> bool:
        return any(address in network for network in self._trusted)

    # ---------------------------------------------------------------- the checks

    def admit(self, cid: str, group: str, now: float) -> CapRefusal | None:
        """Before authentication: the attempt and concurrency caps of ``group``; on success
        the connection's slot is reserved (free it with :meth:`release` if no upgrade
        follows)."""
        self._expire(now)
        self.release(cid)  # a second upgrade request on one connection (keep-alive)
        caps = self.caps
        if caps.max_attempts is not None:
            wait = self._take_token(group, now)
            if wait is not None:
                return CapRefusal(
                    "attempts",
                    f"too many upgrade attempts from {group}"
                    f" (max_attempts={caps.max_attempts} per {caps.per:g} s)",
                    max(1, math.ceil(wait)),
                )
        if caps.max_per_address is not None and (
            self._per_group.get(group, 0) >= caps.max_per_address
        ):
            return CapRefusal(
                "address",
                f"too many connections from {group} (max_per_address={caps.max_per_address})",
                5,
            )
        self._slots[cid] = (group, None)
        self._per_group[group] = self._per_group.get(group, 0) + 1
        return None

    def admit_user(self, cid: str, user: str | None) -> CapRefusal | None:
        """After authentication: the cap on ``user``'s connections (counted in the slot)."""
        limit = self.caps.max_per_user
        slot = self._slots.get(cid)
        if limit is None or user is None or slot is None:
            return None
        if self._per_user.get(user, 0) >= limit:
            return CapRefusal(
                "user", f"too many connections for this user (max_per_user={limit})", 5
            )
        self._slots[cid] = (slot[0], user)
        self._per_user[user] = self._per_user.get(user, 0) + 1
        return None

    def upgraded(self, cid: str, now: float) -> None:
        """The answer was a 101: the slot is kept for the connection it starts, or freed
        ``RESERVATION_TIMEOUT`` seconds from now if none does."""
        if cid in self._slots:
            self._pending[cid] = now + RESERVATION_TIMEOUT

    def started(self, cid: str) -> None:
        """The connection started: its slot lasts until :meth:`release`."""
        self._pending.pop(cid, None)

    def release(self, cid: str) -> None:
        """Free the slot of ``cid`` (refused, or ended); nothing if it has none."""
        self._pending.pop(cid, None)
        slot = self._slots.pop(cid, None)
        if slot is None:
            return
        group, user = slot
        _decrement(self._per_group, group)
        if user is not None:
            _decrement(self._per_user, user)

    def connections_of(self, group: str) -> int:
        """Slots held by ``group`` now (connections and handshakes in progress)."""
        return self._per_group.get(group, 0)

    # ---------------------------------------------------------------- inside

    def _take_token(self, group: str, now: float) -> float | None:
        """Take one attempt token of ``group``; None if taken, else seconds until one is."""
        caps = self.caps
        assert caps.max_attempts is not None
        rate = caps.max_attempts / caps.per
        buckets = self._buckets
        tokens, last = buckets.pop(group, (float(caps.max_attempts), now))  # moved to the end:
        tokens = min(float(caps.max_attempts), tokens + (now - last) * rate)  # least recent first
        if len(buckets) >= MAX_BUCKETS:  # the least recently seen address is forgotten (a
            del buckets[next(iter(buckets))]  # flood of fresh addresses cannot grow it)
        if tokens < 1.0:
            buckets[group] = (tokens, now)
            return (1.0 - tokens) / rate
        buckets[group] = (tokens - 1.0, now)
        return None

    def _expire(self, now: float) -> None:
        """Free the reservations of 101s that never started a connection (in deadline order:
        reservations are made in time order, with one timeout)."""
        pending = self._pending
        while pending:
            cid, deadline = next(iter(pending.items()))
            if deadline > now:
                break
            self.release(cid)


def _parse(text: str) -> _Address | None:
    """An address as a peer or a proxy writes it: ``1.2.3.4``, ``1.2.3.4:5555``, ``::1``,
    ``[::1]:443``; an IPv4-mapped IPv6 address is its IPv4 address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)

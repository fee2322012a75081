"""Which close codes the library sends, and whether a client should come back after each.

A client cannot tell from a bare code whether to reconnect: a restart and a permanent shutdown
both looked like 1001.  Now a restart is 1012 (come back at once), and 1001 says the server is
going away (a client comes back with backoff, as after a deploy).  Every code we send is listed
in :data:`CLOSE_CODES` with what it means and the action it asks of the client;
:func:`should_reconnect` is the rule our own clients follow (``static/pubsub.js`` has the
same), and the one a user's client may copy.

Application codes (3000-4999, sent with ``stop()``/``stop_one()``) follow a documented split,
as Centrifugo's do: 3000-3499 and 4000-4499 ask the client to reconnect, 3500-3999 and
4500-4999 not to.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["CLOSE_CODES", "RECONNECT", "TERMINAL", "CloseAdvice", "should_reconnect"]

#: the client should connect again (with backoff), and subscribe from its positions
RECONNECT = "reconnect"
#: the client should not connect again on its own (a user's action may)
TERMINAL = "terminal"


@attrs.frozen
class CloseAdvice:
    """One close code we send: its ``action`` (:data:`RECONNECT` or :data:`TERMINAL`) and when
    it is sent."""

    code: int
    action: str
    when: str


def _table(*rows: tuple[int, str, str]) -> Mapping[int, CloseAdvice]:
    return MappingProxyType({code: CloseAdvice(code, action, when) for code, action, when in rows})


#: Every close code the library sends on its own, with its action and its situations.
CLOSE_CODES: Mapping[int, CloseAdvice] = _table(
    (
        1000,
        TERMINAL,
        "a normal close asked for by the application (stop(1000), or got_raw_message"
        " returning BREAK)",
    ),
    (
        1001,
        RECONNECT,
        "stop() of the handler or listener (the server is going away: a deploy's SIGTERM brings"
        " another up), idle_timeout, or the peer shut its side without a Close",
    ),
    (1002, TERMINAL, "a protocol error (reconnecting would repeat it)"),
    (1007, TERMINAL, "invalid UTF-8 in a Text message or Close reason; invalid deflate data"),
    (1008, TERMINAL, "a policy the client broke"),
    (1009, TERMINAL, "a message over max_message_size or max_fragments"),
    (
        1011,
        RECONNECT,
        "an exception in a hook, or no Pong within pong_timeout (a fault here or on the way)",
    ),
    (1012, RECONNECT, "a restart: serve's SIGHUP or rolling restart, or stop(1012)"),
    (
        1013,
        RECONNECT,
        "try again later: a slow consumer, a send timeout, a replay of topic history that"
        " could not finish, a gap in a topic's history",
    ),
)


def should_reconnect(code: int | None) -> bool:
    """Whether a client closed with ``code`` should connect again on its own: the table's
    action for our codes; 3000-3499 and 4000-4499 yes, 3500-3999 and 4500-4999 no; no code
    at all (1005, 1006: the connection was lost) yes; anything else no."""
    if code is None or code in (1005, 1006):
        return True
    advice = CLOSE_CODES.get(code)
    if advice is not None:
        return advice.action == RECONNECT
    return 3000 <= code <= 3499 or 4000 <= code <= 4499

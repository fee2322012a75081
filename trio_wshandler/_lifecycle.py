"""Where a connection is registered, run and removed: the life of a connection's one task.

:func:`run_connection` is what :meth:`WebSocketHandler.start` awaits after the 101: it adds the
connection to the registry, hands its socket to the listener's flusher (or starts its TLS
writer), calls ``registered()``, runs the reader (``_reader.py``) until the peer is done, waits
within ``close_timeout`` for what is queued to be written, and then, whatever way it ended,
writes its last words if it can, closes the socket, runs ``deregister_connection`` and
``connection_closed`` once (shielded and bounded), adds what it wrote to the handler's totals
and removes it from the registry and its topics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._connection import _CLOSED, _NEW, _OPEN, _peer
from ._flusher import plain_socket_fd, write_last_words
from ._reader import linger, read
from ._writer import tls_writer
from .codec import CloseCode

if TYPE_CHECKING:
    from ._connection import WebSocketConnection
    from ._listener_tasks import ListenerTasks

__all__ = ["run_connection"]


async def run_connection(
    conn: WebSocketConnection, stream: trio.abc.Stream, initial_data: bytes, tasks: ListenerTasks
) -> None:
    """Run an upgraded connection in its one task until it has ended and its hooks have run."""
    handler = conn.handler
    registry = handler._registry
    registry.add(conn)
    if conn._state is _NEW:
        conn._state = _OPEN
    conn._last_received = conn._last_message = opened = trio.current_time()
    timers = conn._timers = tasks.timers
    queue = conn._queue
    try:
        with trio.CancelScope(deadline=conn._close_deadline) as conn._scope:
            if plain_socket_fd(stream) >= 0:
                assert isinstance(stream, trio.SocketStream)
                conn._sock = stream.socket
                conn._flusher = tasks.flusher
                if queue.in_channel:  # sent before the connection ran
                    conn._schedule()
            else:  # TLS: a writer task of its own, so that it never holds the flusher
                tasks.nursery.start_soon(tls_writer, conn, stream, name="trio_wshandler writer")
            if await _call_registered(conn):
                timers.add(conn)
            failed = await read(conn, stream, initial_data)
            # done reading: what is queued (our Close last) is written within close_timeout
            conn._set_deadline(handler.close_timeout)
            if conn._flusher is None:
                queue.close()  # the writer ends once it has written everything
            await queue.wait_written(queue.enqueued)
            if failed and not queue.finished:
                await linger(stream)
        if conn._scope.cancelled_caught and conn.close_code is None:
            conn.close_code, conn.close_reason = CloseCode.ABNORMAL_CLOSURE, "timed out"
    finally:
        timers.discard(conn)
        if conn._writer_scope is not None:
            conn._writer_scope.cancel()
        conn._state = _CLOSED
        queue.finish()
        # ended without the queue written (cancelled from outside, a deadline): what is
        # queued and a Close 1001, if the socket takes them at once
        last_close = conn._protocol.close(CloseCode.GOING_AWAY, "server is stopping")
        wrote = write_last_words(queue, stream, last_close)
        if wrote and last_close and conn.close_code is None:
            conn.close_code, conn.close_reason = CloseCode.GOING_AWAY, "server is stopping"
        if conn.close_code is None:
            conn.close_code = CloseCode.ABNORMAL_CLOSURE
        conn._sock = conn._flusher = None
        # shielded, so that cancellation of the server still runs the end hooks, and
        # bounded, so that a hook cannot hold the server's shutdown forever
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + handler.close_timeout
            await trio.aclose_forcefully(stream)
            try:
                await handler.deregister_connection(conn)
            except Exception:
                handler.log_error("deregister_connection(%s) failed", conn.id, exc_info=True)
            try:
                await conn.connection_closed()
            except Exception:
                handler.log_error(
                    "connection %s: connection_closed() failed", conn.id, exc_info=True
                )
        # what it wrote joins the handler's totals as it leaves the registry (no checkpoint
        # in between: a stats() snapshot counts it once, live or retired)
        handler._counters.retire(queue)
        registry.remove(conn)
        conn._leave_topics()
        conn._ended = True
        if conn._closed is not None:
            conn._closed.set()
        handler.log_info(
            "connection %s from %s closed: %s%s after %.1f s",
            conn.id,
            _peer(conn.cx),
            conn.close_code,
            f" {conn.close_reason}" if conn.close_reason else "",
            trio.current_time() - opened,
        )


async def _call_registered(conn: WebSocketConnection) -> bool:
    try:
        await conn.registered()
    except Exception:
        conn.handler.log_error(
            "connection %s: registered() failed; closing", conn.id, exc_info=True
        )
        conn._start_close(CloseCode.INTERNAL_SERVER_ERROR, "registered() failed")
        return False
    return True

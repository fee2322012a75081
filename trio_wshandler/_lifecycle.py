"""Where a connection is registered, run and removed: the life of a connection's one task.

:meth:`WebSocketHandler.start`, which the server awaits after the 101, makes the connection, has
:func:`prepare_connection` give it its request and its extensions, and awaits
:func:`run_connection` in the listener's shared tasks (or a pair of its own outside a
listener).  That adds it to the registry, hands its socket to the listener's flusher (or starts
its TLS writer), calls ``registered()``, runs the reader (``_reader.py``) until the peer is
done, waits within ``close_timeout`` for what is queued to be written, and then, whatever way
it ended, writes its last words if it can, closes the socket, runs ``deregister_connection``
and ``connection_closed`` once (shielded and bounded), adds what it wrote to the handler's
totals and removes it from the registry and its topics.

Every change to the connection's state is a method of its ``ConnectionCore``; this module says
in which order they happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._extensions import agreement_from_response, negotiate_deflate
from ._linger import linger
from ._listener_tasks import ListenerTasks, open_listener_tasks
from ._reader import Reader
from ._writer import tls_writer
from .codec import CloseCode, Opcode, encode_message

if TYPE_CHECKING:
    from ._admission import Admission
    from ._core import ConnectionCore
    from ._types import CallContext, Request

__all__ = [
    "call_registered",
    "prepare_connection",
    "refuse_after_101",
    "retire",
    "run_connection",
    "start_upgraded",
]


def peer_text(cx: CallContext) -> str:
    host, port = cx.peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def refuse_after_101(stream: trio.abc.Stream, close_timeout: float) -> None:
    """No connection could be made for an upgraded stream: the client has its 101 already, so
    tell it why it is dropped (1011), then close."""
    close = encode_message(
        CloseCode.INTERNAL_SERVER_ERROR.to_bytes(2, "big") + b"internal error", Opcode.CLOSE
    )
    with trio.move_on_after(close_timeout):
        await stream.send_all(close)
    await trio.aclose_forcefully(stream)


def prepare_connection(
    core: ConnectionCore[Any],
    cx: CallContext,
    hdr: Request,
    *,
    stopping: str | None,
    extensions: str | None,
) -> None:
    """Give a connection made for an upgrade its request and extensions, before it runs (see
    ``WebSocketHandler.start``; not a coroutine: each connection's task keeps the frames of
    what it awaits for its whole life)."""
    host = core.settings
    core.bind(cx, hdr, cx.id)
    if extensions is None:  # called from outside a listener: what handle_request would answer
        negotiated = negotiate_deflate(hdr.header("sec-websocket-extensions"), host.compression)
        agreement = negotiated[0] if negotiated is not None else None
    else:
        agreement = agreement_from_response(extensions) if extensions else None
    if agreement is not None:
        core.use_deflate(agreement, host.compression is not None)
    if host.stopped:  # the handler stopped while the 101 was on its way: its Close (1012 for
        core.stop(*host.stopping_with)  # a restart, so the client comes back)
    elif stopping is not None:
        core.stop(CloseCode.GOING_AWAY, stopping)
    host.log_info("connection %s from %s opened: %s", core.id, peer_text(cx), hdr.raw_target)


async def run_connection(
    core: ConnectionCore[Any],
    stream: trio.abc.Stream,
    initial_data: bytes,
    tasks: ListenerTasks,
) -> None:
    """Run an upgraded connection in its one task until it has ended and its hooks have run."""
    hub, host, queue = core.hub, core.settings, core.queue
    hub.registry.add(core)
    opened = core.open(tasks.timers)
    try:
        with core.cancel_scope() as scope:
            if not core.write_with(stream, tasks.flusher):
                # TLS: a writer task of its own, so that it never holds the flusher
                tasks.nursery.start_soon(tls_writer, core, stream, name="trio_wshandler writer")
            if await call_registered(core):
                tasks.timers.add(core)
            failed = await Reader(core, stream).run(initial_data)
            # done reading: what is queued (our Close last) is written within close_timeout
            core.set_deadline(host.close_timeout)
            if core.flusher is None:
                queue.close()  # the writer ends once it has written everything
            await queue.wait_written(queue.enqueued)
            if failed and not queue.finished:
                await linger(stream)
        if scope.cancelled_caught:
            core.timed_out()
    finally:
        core.end(stream)
        await retire(core, opened, partial(trio.aclose_forcefully, stream))


async def retire(
    core: ConnectionCore[Any], opened: float, closing: Callable[[], Awaitable[None]]
) -> None:
    """The end of a connection whose task is done: ``closing`` (close the stream), run
    its end hooks, add its counts to the handler's and remove it from the registry."""
    hub, host, queue = core.hub, core.settings, core.queue
    # shielded, so that cancellation of the server still runs the end hooks, and
    # bounded, so that a hook cannot hold the server's shutdown forever
    with trio.CancelScope(shield=True) as shield:
        shield.deadline = trio.current_time() + host.close_timeout
        await closing()
        try:
            await host.deregister_connection(core.connection)
        except Exception:
            host.log_error("deregister_connection(%s) failed", core.id, exc_info=True)
        try:
            await core.connection.connection_closed()
        except Exception:
            host.log_error("connection %s: connection_closed() failed", core.id, exc_info=True)
    # what it wrote joins the handler's totals as it leaves the registry (no checkpoint
    # in between: a stats() snapshot counts it once, live or retired)
    hub.counters.retire(queue)
    hub.registry.remove(core)
    core.leave()
    host.log_info(
        "connection %s from %s closed: %s%s after %.1f s",
        core.id,
        peer_text(core.cx),
        core.close_code,
        f" {core.close_reason}" if core.close_reason else "",
        trio.current_time() - opened,
    )


async def start_upgraded(
    core: ConnectionCore[Any],
    admission: Admission,
    stream: trio.abc.Stream,
    initial_data: bytes,
    tasks: ListenerTasks | None,
) -> None:
    """Run a prepared connection, holding its cap slot (``admission``) while it runs; without
    ``tasks`` (a call from outside a listener) with a flusher and a timer sweep of its own."""
    admission.started(core.id)
    try:
        if tasks is None:
            async with open_listener_tasks() as tasks:
                await run_connection(core, stream, initial_data, tasks)
        else:
            await run_connection(core, stream, initial_data, tasks)
    finally:
        admission.ended(core.id)


async def call_registered(core: ConnectionCore[Any]) -> bool:
    try:
        await core.connection.registered()
    except Exception:
        core.settings.log_error(
            "connection %s: registered() failed; closing", core.id, exc_info=True
        )
        core.start_close(CloseCode.INTERNAL_SERVER_ERROR, "registered() failed")
        return False
    return True

"""Where outgoing frames are queued: one bounded trio memory channel per connection.

Producers (``send``, ``send_all``, the reader's Pongs, the heartbeat) put already-encoded frames
with ``put_*`` methods that never block and never await the network.  The listener's flusher (or
a drain task, ``_flusher.py``) takes them out in batches, or, for TLS, the connection's writer
task (``_writer.py``).  The channel is made when the first frame is queued.

Bounds: ``max_frames`` frames and ``max_bytes`` bytes.  A single frame larger than
``max_bytes`` is still accepted when the queue is empty, or no message over the limit could ever
be sent.  Control frames have channel slots beyond ``max_frames``: ``MAX_PONGS_OWED`` for Pongs
and a reserve of ``CONTROL_RESERVE`` for Close and Ping, so a Close can always be queued behind
a full queue of data and Pongs.  At most ``MAX_PONGS_OWED`` Pongs wait unwritten at a time; a
Ping beyond that is not answered (RFC 6455 section 5.5.3 allows answering only the most recent
one), which bounds what a client that floods Pings without reading can make us hold.
"""

from __future__ import annotations

import math

import trio

__all__ = ["CONTROL_RESERVE", "MAX_PONGS_OWED", "SendQueue"]

#: Channel slots kept for Close and Ping frames beyond ``max_frames`` and the Pongs owed.
CONTROL_RESERVE = 8

#: Most Pongs queued and not yet written; Pings beyond that go unanswered until some are written.
MAX_PONGS_OWED = 16


class SendQueue:
    """A bounded FIFO of encoded frames with byte accounting and flush support."""

    __slots__ = (
        "_leftover",
        "_pongs",
        "_progress",
        "_receive",
        "_send",
        "bytes_written",
        "draining",
        "enqueued",
        "finished",
        "in_channel",
        "listed",
        "max_bytes",
        "max_frames",
        "queued_bytes",
        "send_late",
        "writes",
        "written",
    )

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # the channel is made on first use: an idle connection never queues anything
        self._send: trio.MemorySendChannel[bytes] | None = None
        self._receive: trio.MemoryReceiveChannel[bytes] | None = None
        #: bytes currently queued (data and control frames alike)
        self.queued_bytes = 0
        #: frames not yet taken by a writer (so that it never has to try)
        self.in_channel = 0
        #: frames ever queued / ever written; ``flush`` waits for written >= enqueued
        self.enqueued = 0
        self.written = 0
        #: batches written and their bytes (``handler.stats()`` adds them up: counted here, in
        #: two int fields, because a handler-wide counter costs more on this hot path)
        self.writes = 0
        self.bytes_written = 0
        #: set once the writer can write no more (the connection ended)
        self.finished = False
        #: the connection is on its flusher's list for the next round
        self.listed = False
        #: the socket is backed up: a drain task writes this queue (the flusher skips it)
        self.draining = False
        #: when the send under way is late, else 0 (a writer that awaits each message, under an
        #: ASGI server, sets it: the timer sweep ends a connection whose send is late)
        self.send_late = 0.0
        self._progress: trio.Event | None = None  # made only when somebody waits
        self._leftover: bytes | None = None  # see take()
        self._pongs: list[int] | None = None  # positions (``enqueued``) of unwritten Pongs

    def _open(self) -> trio.MemorySendChannel[bytes]:
        if self.finished:  # the connection has ended: nothing more is queued
            raise trio.ClosedResourceError
        # data frames use at most max_frames slots and Pongs MAX_PONGS_OWED, so that the
        # reserve always has room for a Close (and the one heartbeat Ping)
        self._send, self._receive = trio.open_memory_channel[bytes](
            self.max_frames + MAX_PONGS_OWED + CONTROL_RESERVE
        )
        return self._send

    @property
    def queued_frames(self) -> int:
        """Frames queued and not yet written (data and control frames alike)."""
        return self.enqueued - self.written

    def has_room(self, nbytes: int) -> bool:
        """Whether a data frame of ``nbytes`` fits within both bounds."""
        if self.queued_frames >= self.max_frames:
            return False
        return self.queued_bytes == 0 or self.queued_bytes + nbytes <= self.max_bytes

    def put_data(self, frame: bytes) -> bool:
        """Queue a data frame; False (nothing queued) when the bounds would be exceeded."""
        n = len(frame)
        queued = self.queued_bytes  # has_room(), inlined: this runs for every delivery
        frames = self.enqueued - self.written
        if frames >= self.max_frames or (queued and queued + n > self.max_bytes):
            return False
        try:
            (self._send or self._open()).send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self.queued_bytes += n
        self.enqueued += 1
        self.in_channel += 1
        return True

    def put_control(self, frame: bytes) -> bool:
        """Queue a control frame using the reserve; False when even the reserve is full."""
        try:
            (self._send or self._open()).send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self.queued_bytes += len(frame)
        self.enqueued += 1
        self.in_channel += 1
        return True

    def put_pong(self, frame: bytes) -> bool:
        """Queue a Pong unless ``MAX_PONGS_OWED`` are already waiting; False if not queued."""
        pongs = self._pongs
        if pongs is None:
            pongs = self._pongs = []
        written = self.written
        while pongs and pongs[0] <= written:
            del pongs[0]
        if len(pongs) >= MAX_PONGS_OWED or not self.put_control(frame):
            return False
        pongs.append(self.enqueued)
        return True

    def take_all(self) -> list[bytes]:
        """Every frame still queued, without waiting (for the last words)."""
        frames = [] if self._leftover is None else [self._leftover]
        self._leftover = None
        if self._receive is None:
            return frames
        while True:
            try:
                frames.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return frames

    async def wait_for_room(self, nbytes: int) -> None:
        """Wait until a data frame of ``nbytes`` fits (or the connection has ended)."""
        while not self.finished and not self.has_room(nbytes):
            await self.wait_progress()

    def over_half(self) -> bool:
        """More than half of either bound is in use (the reader stops reading its peer)."""
        return (
            self.enqueued - self.written
        ) * 2 > self.max_frames or self.queued_bytes * 2 > self.max_bytes

    async def wait_below_half(self) -> None:
        """Wait until no more than half of either bound is in use (or the connection ended)."""
        while not self.finished and self.over_half():
            await self.wait_progress()

    def close(self) -> None:
        """No more frames: the writer drains what is queued, then stops."""
        (self._send or self._open()).close()

    @property
    def receive_channel(self) -> trio.MemoryReceiveChannel[bytes]:
        """The writer's end: it awaits ``receive()`` only when ``in_channel`` is 0."""
        if self._receive is None:
            self._open()
        assert self._receive is not None
        return self._receive

    def take(self, limit: int, first: bytes | None = None) -> tuple[list[bytes], int]:
        """Take queued frames without waiting: ``first`` (already received) or the next one,
        then as many more as fit in ``limit`` bytes; returns them and their total size.

        A memory channel cannot give a frame back, so the first frame that does not fit is kept
        aside (and still counted in ``in_channel``) to be the first of the next batch.
        """
        left = self.in_channel
        receive = self._receive
        assert receive is not None  # in_channel > 0: something was queued
        if first is None:
            first, self._leftover = self._leftover, None
            if first is None:
                first = receive.receive_nowait()
        left -= 1
        batch = [first]
        size = len(first)
        while left > 0:
            frame = receive.receive_nowait()
            if size + len(frame) > limit:
                self._leftover = frame
                break
            batch.append(frame)
            size += len(frame)
            left -= 1
        self.in_channel = max(0, left)
        return batch, size

    def sending(self, late: float) -> None:
        """A send of one message began (under an ASGI server, whose send awaits), that should
        be done by ``late``."""
        self.send_late = late

    def wrote(self, frames: list[bytes], size: int) -> None:
        """Account for a written batch and wake ``flush`` and ``wait_for_room`` callers."""
        self.send_late = 0.0
        self.queued_bytes -= size
        self.written += len(frames)
        self.writes += 1
        self.bytes_written += size
        self.wake()

    def finish(self) -> None:
        """The connection ended: nothing more will be written; wake every waiter."""
        self.finished = True
        if self._send is not None:
            self._send.close()
        self.wake()

    def _progress_event(self) -> trio.Event:
        if self._progress is None:
            self._progress = trio.Event()
        return self._progress

    def wake(self) -> None:
        """Wake whoever waits for progress, to look again (after a write, at the end, or when
        what they wait for changed, e.g. a connection's deadline)."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def wait_written(self, target: int) -> bool:
        """Wait until ``target`` frames have been written: True, or False if the connection
        ended first."""
        while self.written < target:
            if self.finished:
                return False
            await self.wait_progress()
        return True

    async def wait_progress(self, deadline: float = math.inf) -> None:
        """Wait for the next write, the end, a ``wake()`` or ``deadline``, whichever is first."""
        with trio.move_on_at(deadline):
            await self._progress_event().wait()

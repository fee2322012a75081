"""Where a message is encoded, and compressed, for its recipients: ``send_all``, ``publish``
and each connection's ``send`` go through :class:`FanOut`.

A server frame is unmasked, so one encoding serves every client; with permessage-deflate, one
compression serves every client that negotiated the same server window (the server never keeps
its compression context, ``_extensions.py``).  :meth:`FanOut.send` therefore encodes a message
once, compresses it at most once per window size among the recipients, and queues the very
same ``bytes`` object on all of them: the cost of a broadcast is one encoding (and compression)
plus one queue append per client, never one encoding per client.

What fan-out needs of a recipient is :class:`Recipient` (a connection's state,
``_core.ConnectionCore``): the window it was agreed, and a way to queue a frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ._deflate import Deflater
from ._extensions import DeflateOptions
from ._stats import Counters
from .codec import DataLike, encode_data, encode_message, message_payload

__all__ = ["FanOut", "Recipient"]


class Recipient(Protocol):
    """What a message is fanned out to (a connection)."""

    @property
    def deflate_bits(self) -> int:
        """The server window of compressed messages to it (permessage-deflate); 0: none."""

    def enqueue(self, frame: bytes) -> bool:
        """Queue a data frame (never waiting); False if it was not queued (closing, or the
        slow-consumer policy refused it)."""


class FanOut:
    """Encodes (and compresses) messages for a handler's connections."""

    __slots__ = ("_counters", "_deflater", "_last")

    def __init__(self, compression: DeflateOptions | None, counters: Counters) -> None:
        self._counters = counters
        self._deflater = Deflater(compression) if compression is not None else None
        # the last message compressed by frame_for(): (message, window bits, frame)
        self._last: tuple[str | bytes, int, bytes] | None = None

    def send(self, connections: Iterable[Recipient], data: DataLike) -> int:
        """Queue ``data`` on every connection of ``connections``; how many took it.

        Iterated synchronously: nothing may add or remove a connection meanwhile.
        """
        payload, opcode = message_payload(data)
        return self.send_payload(connections, payload, opcode)

    def send_payload(self, connections: Iterable[Recipient], payload: bytes, opcode: int) -> int:
        """:meth:`send` for a message given as its payload bytes and opcode (Text: UTF-8)."""
        frame = encode_message(payload, opcode)
        queued = 0
        deflater = self._deflater
        if deflater is None or not deflater.worth_it(len(payload)):
            for connection in connections:
                if connection.enqueue(frame):
                    queued += 1
            self._counters.messages_sent += queued
            return queued
        frames = {0: frame}  # by server window bits; 0: uncompressed
        for connection in connections:
            bits = connection.deflate_bits
            framed = frames.get(bits)
            if framed is None:
                framed = frames[bits] = self._compressed(payload, opcode, bits, frame)
            if connection.enqueue(framed):
                queued += 1
        self._counters.messages_sent += queued
        return queued

    def frame_for(self, data: DataLike, bits: int) -> bytes:
        """The frame of a message for one connection (compressed for a window of ``bits``
        bits, or plain when ``bits`` is 0)."""
        if not bits:
            return encode_data(data)
        last = self._last
        if last is not None and last[0] is data and last[1] == bits:
            return last[2]  # the same message sent to one client after another: compress once
        payload, opcode = message_payload(data)
        deflater = self._deflater
        if deflater is None or not deflater.worth_it(len(payload)):
            return encode_message(payload, opcode)
        frame = self._compressed(payload, opcode, bits, None)
        if isinstance(data, str | bytes):  # immutable: the same object, the same message
            self._last = (data, bits, frame)
        return frame

    def _compressed(self, payload: bytes, opcode: int, bits: int, plain: bytes | None) -> bytes:
        """The compressed frame, or the plain one (``plain``, or encoded here) if deflate
        does not make the message smaller."""
        assert self._deflater is not None
        compressed = self._deflater.compress(payload, bits)
        if len(compressed) >= len(payload):  # incompressible: as it is
            return plain if plain is not None else encode_message(payload, opcode)
        return encode_message(compressed, opcode, rsv1=True)

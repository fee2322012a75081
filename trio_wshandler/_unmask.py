"""Where a client's masked payload is unmasked: compiled, or in pure Python.

Every byte a client sends in a frame's payload is XORed with the frame's 4-byte masking key
(RFC 6455 section 5.3).  ``_speedups.c`` does it 8 bytes at a time (tens of GB/s); it is built
when the package is installed with a C compiler at hand, and is optional: without one the
install still works, and this module's pure-Python functions are used (a one-line notice at
debug level says so).  They XOR long payloads with ``bytes.translate`` and one 256-byte table
per key byte, over every fourth byte at a time, which is what pure Python does fastest there
(about 1 GB/s; a big ``int`` XOR is slower), and short ones (at most ``SHORT`` bytes, the most
common messages) as one ``int`` XOR, which costs a third of the tables there.  The environment
variable ``TRIO_WSHANDLER_NO_SPEEDUPS=1`` makes the package use the pure-Python functions even
when the compiled ones exist (the test suite runs both ways).

* ``unmask(data, start, end, mask, phase) -> bytes``: ``data[start:end]`` unmasked, the key
  starting at ``mask[phase]`` (a frame's payload arrives in pieces: ``phase`` is where the
  previous piece left the key), without slicing ``data`` first: the one copy of a payload
  between the bytes read and the message delivered.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

__all__ = ["COMPILED", "unmask"]

Buffer = bytes | bytearray | memoryview


class _Unmask(Protocol):
    def __call__(self, data: Buffer, start: int, end: int, mask: bytes, phase: int, /) -> bytes: ...


_TABLES: list[bytes] = []  # _TABLES[k][b] == b ^ k, made on first use


def _tables(mask: bytes, phase: int) -> tuple[bytes, bytes, bytes, bytes]:
    if not _TABLES:
        _TABLES.extend(bytes(b ^ k for b in range(256)) for k in range(256))
    return (
        _TABLES[mask[phase]],
        _TABLES[mask[(phase + 1) & 3]],
        _TABLES[mask[(phase + 2) & 3]],
        _TABLES[mask[(phase + 3) & 3]],
    )


def _xor_in_place(buffer: bytearray, start: int, end: int, mask: bytes, phase: int) -> None:
    a, b, c, d = _tables(mask, phase)
    buffer[start:end:4] = buffer[start:end:4].translate(a)
    buffer[start + 1 : end : 4] = buffer[start + 1 : end : 4].translate(b)
    buffer[start + 2 : end : 4] = buffer[start + 2 : end : 4].translate(c)
    buffer[start + 3 : end : 4] = buffer[start + 3 : end : 4].translate(d)


def _check(data: Buffer, start: int, end: int, mask: bytes, phase: int) -> None:
    if not 0 <= start <= end <= len(data):
        raise ValueError("start and end are not within the data")
    if len(mask) != 4:
        raise ValueError("the mask is 4 bytes")
    if not 0 <= phase <= 3:
        raise ValueError("the phase is 0 to 3")


#: Payloads up to this many bytes are unmasked with an ``int`` XOR (faster than the tables there).
SHORT = 512


def python_unmask(data: Buffer, start: int, end: int, mask: bytes, phase: int, /) -> bytes:
    """``unmask`` in pure Python."""
    _check(data, start, end, mask, phase)
    n = end - start
    if n <= SHORT:
        if phase:
            mask = mask[phase:] + mask[:phase]
        key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
        return (int.from_bytes(data[start:end], "little") ^ key).to_bytes(n, "little")
    buffer = bytearray(memoryview(data)[start:end])
    _xor_in_place(buffer, 0, len(buffer), mask, phase)
    return bytes(buffer)


unmask: _Unmask = python_unmask
#: whether the compiled functions are in use
COMPILED = False

if os.environ.get("TRIO_WSHANDLER_NO_SPEEDUPS", "") not in ("", "0"):
    logging.getLogger("trio_wshandler").debug(
        "TRIO_WSHANDLER_NO_SPEEDUPS is set: unmasking in pure Python"
    )
else:
    try:
        from ._speedups import unmask
    except ImportError:
        logging.getLogger("trio_wshandler").debug(
            "trio_wshandler._speedups is not built (no C compiler at install?): unmasking in"
            " pure Python"
        )
    else:
        COMPILED = True

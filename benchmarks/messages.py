"""The text messages of the compressed-broadcast scenario, made by the servers and checked by the
fleet (``servers.py ... deflate``, ``fleet.py --deflate``).

A message is about SIZE bytes of JSON that compresses like real JSON (about 3:1 with deflate): a
header with the message number, the production time (``time.time_ns``, for delivery latency) and
the CRC-32 of the rest, then an array of objects with ids, names, prices, quantities and
timestamps, all varying with the message number, so no two messages are alike and a compressor
cannot reuse the previous one whole.  The fleet checks an inflated message without parsing the
array: the header in order (the number it expects next) and the CRC over the array's bytes, which
a wrong inflation (a wrong window, a context kept or dropped against the agreement) does not pass.
"""

from __future__ import annotations

import json
import time
import zlib

NAMES = (
    "apple",
    "banana",
    "cherry",
    "damson",
    "elder",
    "fig",
    "grape",
    "hazel",
    "kiwi",
    "lemon",
    "mango",
    "nectar",
    "olive",
    "peach",
    "quince",
    "rowan",
)
#: between the header and the array; what the fleet looks for
ITEMS = b',"items":'
#: about one object of the array, and the header, in bytes (14 objects for SIZE 1024)
ITEM_BYTES, HEADER_BYTES = 70, 60


def json_message(seq: int, size: int) -> str:
    """Message number ``seq``: about ``size`` bytes of JSON, stamped with the time now."""
    ts = time.time_ns()
    ms = ts // 1_000_000
    items = ",".join(
        f'{{"id":{seq * 14 + i},"name":"{NAMES[(seq + i) % 16]}-{(seq * 7 + i) % 100:02d}",'
        f'"price":{(seq * 7919 + i * 104729) % 100000 / 100},"qty":{(seq + 3 * i) % 50},'
        f'"ts":{ms + i}}}'
        for i in range(max(1, round((size - HEADER_BYTES) / ITEM_BYTES)))
    )
    items = f"[{items}]"
    return f'{{"seq":{seq},"ts":{ts},"crc":{zlib.crc32(items.encode())},"items":{items}}}'


def check_message(message: bytes | bytearray) -> tuple[int, int]:
    """(seq, production time in ns) of an inflated message; ValueError if it is not intact."""
    at = message.find(ITEMS)
    if at < 0 or message[-1:] != b"}":
        raise ValueError("not a benchmark message")
    head = json.loads(message[:at] + b"}")
    if zlib.crc32(message[at + len(ITEMS) : -1]) != head["crc"]:
        raise ValueError(f"message {head['seq']}: CRC mismatch")
    return head["seq"], head["ts"]

"""What permessage-deflate costs, piece by piece (the figures in docs/guide.md, "Compression").

    python benchmarks/deflate_costs.py [--size 1024] [--rounds 3000]

For a JSON-like text message of about ``--size`` bytes, by compression level: the compressed
size, the CPU time to compress it once with the handler's ``Deflater`` (one compressor per
window size, reset by a full flush after each message) against a new ``zlib.compressobj`` per
message, and the time to inflate it.  Then the time to compress a message of 1 MiB (what
``DeflateOptions.compress_limit`` bounds), and the memory zlib holds for an inflater kept
between messages (``client_context_takeover=True``) and for the handler's compressor,
measured with tracemalloc (zlib allocates through Python's raw allocator, which tracemalloc
sees).  Times are the best of 5 runs of ``--rounds`` calls (of 3 for 1 MiB).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
import zlib
from collections.abc import Callable

from trio_wshandler import DeflateOptions
from trio_wshandler._deflate import Deflater


def json_message(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    text = b"[]"
    while len(text) < size:
        rows.append(
            {
                "id": len(rows),
                "user": rng.choice(["alice", "bob", "carol", "dave"]),
                "price": round(rng.random() * 100, 2),
                "side": rng.choice(["buy", "sell"]),
                "ts": 1764160000 + len(rows),
            }
        )
        text = json.dumps(rows).encode()
    return text


def best_us(call: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def held_bytes(make: Callable[[], object]) -> int:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = make()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del obj
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    message = json_message(args.size)
    print(f"message: {len(message)} bytes of JSON text\n")
    print("| level | compressed | ratio | compress (Deflater) | new compressobj each | inflate |")
    print("|---|---|---|---|---|---|")
    for level in (1, 6, 9):
        deflater = Deflater(DeflateOptions(level=level))
        compressed = deflater.compress(message, 15)

        def fresh(level: int = level) -> bytes:
            c = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
            return c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)

        def inflate(compressed: bytes = compressed) -> bytes:
            return zlib.decompressobj(-15).decompress(compressed + b"\x00\x00\xff\xff")

        assert inflate() == message
        print(
            f"| {level} | {len(compressed)} B | {len(compressed) / len(message):.2f} |"
            f" {best_us(lambda d=deflater: d.compress(message, 15), args.rounds):.1f} us |"
            f" {best_us(fresh, args.rounds):.1f} us | {best_us(inflate, args.rounds):.1f} us |"
        )

    big_json = json_message(1 << 20)[: 1 << 20]
    noise = random.Random(2).randbytes(1 << 20)
    deflater = Deflater(DeflateOptions())
    print("\n| 1 MiB message, level 6 | compress | compressed |\n|---|---|---|")
    for name, data in (("JSON text", big_json), ("random bytes", noise)):
        took = best_us(lambda d=data: deflater.compress(d, 15), 3) / 1000
        size = len(deflater.compress(data, 15))
        print(f"| {name} | {took:.1f} ms | {size / len(data):.2f} |")

    def kept_inflater(bits: int) -> object:
        d = zlib.decompressobj(-bits)
        d.decompress(Deflater(DeflateOptions()).compress(message, bits) + b"\x00\x00\xff\xff")
        return d  # after one message: its window is allocated

    def compressor(bits: int) -> object:
        deflater = Deflater(DeflateOptions())
        deflater.compress(message, bits)
        return deflater

    print("\n| zlib state | 9 bits | 12 bits | 15 bits |\n|---|---|---|---|")
    for name, make in (
        ("inflater kept between messages (per connection)", kept_inflater),
        ("the handler's compressor (per window size in use)", compressor),
    ):
        sizes = [held_bytes(lambda b=bits, m=make: m(b)) / 1024 for bits in (9, 12, 15)]
        print(f"| {name} | " + " | ".join(f"{s:.1f} KiB" for s in sizes) + " |")


if __name__ == "__main__":
    main()

"""A hostile client, run in a process of its own: it upgrades on a raw socket, then floods.

``python -m tests.flooder PORT COUNT`` sends COUNT small Text messages ("0", "1", ...) in one
write, then reads until the server closes and prints the close code (or "eof").
``python -m tests.flooder PORT COUNT --seconds S`` sends batches of COUNT messages for S seconds
(as fast as the socket takes them, reading nothing), then prints how many it sent.

Independent of trio_wshandler (the standard library only): what a misbehaving peer would run.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import time


def frame(payload: bytes, opcode: int = 1) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    return head + key + masked


def upgrade(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(head.split(b"\r\n")[0].decode())
    return sock


def close_code(sock: socket.socket) -> str:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return "eof"
        if not chunk:
            return "eof"
        data += chunk
        while len(data) >= 2:
            length = data[1] & 0x7F
            start = 2 if length < 126 else 4
            if length == 126 and len(data) >= 4:
                length = struct.unpack("!H", data[2:4])[0]
            if len(data) < start + length:
                break
            if data[0] & 0x0F == 8:
                return str(struct.unpack("!H", data[start : start + 2])[0])
            data = data[start + length :]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args()
    sock = upgrade(args.port)
    burst = b"".join(frame(str(i).encode()) for i in range(args.count))
    if not args.seconds:
        sock.sendall(burst)
        print(close_code(sock), flush=True)
        return
    sent = 0
    stop = time.monotonic() + args.seconds
    sock.settimeout(max(1.0, args.seconds))
    while time.monotonic() < stop:
        try:
            sock.sendall(burst)
        except (OSError, TimeoutError):
            break
        sent += args.count
    print(sent, flush=True)
    sock.close()


if __name__ == "__main__":
    main()

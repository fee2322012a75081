"""The compiled unmask (``_speedups.c``); see ``_unmask.py``."""

def unmask(
    data: bytes | bytearray | memoryview, start: int, end: int, mask: bytes, phase: int, /
) -> bytes: ...

"""Where the handler's options are checked: a bad value raises ``TypeError``/``ValueError``
naming the option, at construction (or when a live setting is changed), never later."""

from __future__ import annotations

import math
from typing import Any

from .codec import MAX_CONTROL_PAYLOAD

__all__ = ["heartbeat_payload", "positive"]


def positive(name: str, value: Any, *, allow_none: bool = False, integer: bool = False) -> Any:
    kind = "an int" if integer else "a number"
    valid = f"{kind} > 0" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{name} must be {valid}, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return value


def heartbeat_payload(value: Any) -> bytes:
    if isinstance(value, str):
        payload = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray):
        payload = bytes(value)
    else:
        raise TypeError(f"heartbeat_message must be str or bytes, not {type(value).__name__}")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(
            f"heartbeat_message must be at most {MAX_CONTROL_PAYLOAD} bytes, got {len(payload)}"
        )
    return payload

"""Byte sizes as people write them ('4GB', '512 MiB') and as volseg prints them (1.5 MiB, 3.2 GiB)."""
from __future__ import annotations

import math
import re

from .errors import InputError

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_bytes(value: str | int | float, what: str = "size") -> int:
    """'4GB', '512MB', '2.5GiB', '100kb' or a number of bytes (binary units either way); refuses
    anything that is not a positive, finite size with an InputError naming ``what``."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a size such as 4GB or 512MB, got {value!r}")
    if isinstance(value, (int, float)):
        number, factor = float(value), 1
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise InputError(f"{what} must be a size such as 4GB or 512MB, got {value!r}")
        number = float(m.group(1))
        factor = _UNITS[m.group(2).upper()]
    if not math.isfinite(number) or number * factor < 1:
        raise InputError(f"{what} must be a positive, finite size such as 4GB, got {value!r}")
    return int(number * factor)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': the largest binary unit that keeps the number at 1 or more."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

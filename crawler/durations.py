"""Durations as people write them in settings: `90`, `"90s"`, `"15m"`, `"12h"`, `"7d"`, `"2w"`,
or combined (`"1d12h"`), turned into seconds.
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["parse_duration"]

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_WHOLE: Final = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[smhdw]\s*)+", re.IGNORECASE)


def parse_duration(value: object) -> float | None:
    """Return the seconds `value` stands for, or None when it is not a duration.

    A number (not a bool) is seconds; a string is a number of seconds (`"3600"`) or one or
    more number-unit pairs with units s, m, h, d, w (`"12h"`, `"1d12h"`, `"1.5h"`).
    Negative, infinite and NaN values are not durations.

    Example:
        ```python
        assert parse_duration("7d") == 7 * 86400
        assert parse_duration("1h30m") == 5400
        assert parse_duration("soon") is None
        ```
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.fullmatch(text):
                return None
            seconds = sum(float(n) * _UNITS[unit.lower()] for n, unit in _PART.findall(text))
    else:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds

"""Durations as rule files write them: "90s", "30m", "1h", "2d" or compounds such as "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Whole numbers only, units largest first, each at most once: "1h30m" yes, "30m1h" and "1.5h" no,
# so every duration has one spelling and "5x" or "10" (no unit: seconds? minutes?) is refused.
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """The timedelta a duration string means; ValueError for anything else (bare numbers too)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration (write a string such as '90s', '30m', '1h', '2d')")
    match = _DURATION_RE.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (write e.g. '90s', '30m', '1h30m', '2d')")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest string `parse_duration` reads back as `value` (whole seconds)."""
    total = int(value.total_seconds())
    if total != value.total_seconds() or total < 0:
        raise ValueError(f"{value!r} is not a whole, non-negative number of seconds")
    if total == 0:
        return "0s"
    parts = []
    for unit, size in reversed(_UNIT_S.items()):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_seconds(seconds: float) -> str:
    """A number of seconds as rule files write durations ("1h30m"); "12.5s" when not whole."""
    if seconds == int(seconds) and seconds >= 0:
        return format_duration(timedelta(seconds=int(seconds)))
    return f"{seconds:g}s"

"""UTC timestamps as text, for lines written many times a second (generation records, log lines)."""

from __future__ import annotations

import time


class SecondCachedTime:
    """`pattern` (strftime, UTC) formatted once per second, then `.` and `digits` digits of the fraction and
    `suffix`: every record and log line needs a timestamp, and strftime costs more than the rest of one."""

    __slots__ = ("pattern", "scale", "digits", "suffix", "second", "prefix")

    def __init__(self, pattern: str, digits: int, suffix: str = "") -> None:
        self.pattern, self.digits, self.suffix = pattern, digits, suffix
        self.scale = 10 ** digits
        self.second = -1
        self.prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.prefix = time.strftime(self.pattern, time.gmtime(second))
            self.second = second
        return f"{self.prefix}.{int((now - second) * self.scale):0{self.digits}d}{self.suffix}"

"""One byte range of an archive download (RFC 9110 ``Range: bytes=...``), pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.core.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """``first``-``last`` (inclusive; ``last`` None: to the end), or the last ``suffix`` bytes."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    @classmethod
    def parse(cls, header: str | None) -> ByteRange | None:
        """The range a ``Range`` header asks for; None for no header, or one this server does
        not take (another unit, several ranges, bad syntax): the whole archive is sent then,
        as RFC 9110 allows."""
        match = _SINGLE.match(header or "")
        if match is None:
            return None
        first, last = match.group(1), match.group(2)
        if not first and not last:
            return None
        if not first:
            return cls(suffix=int(last))
        if last and int(last) < int(first):
            return None
        return cls(first=int(first), last=int(last) if last else None)

    def resolve(self, size: int) -> tuple[int, int]:
        """(start, length) within an archive of ``size`` bytes; RangeNotSatisfiable when the
        range holds none of its bytes."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                raise RangeNotSatisfiable(
                    f"The range asks for the last {self.suffix} bytes of a {size}-byte archive.", size
                )
            length = min(self.suffix, size)
            return size - length, length
        first = self.first or 0
        if first >= size:
            raise RangeNotSatisfiable(
                f"The range starts at byte {first}, but the archive has {size} bytes (the last is {size - 1}).", size
            )
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return first, last - first + 1

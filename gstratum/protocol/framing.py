"""Sans-IO newline framer: bytes in, complete lines out, with a hard cap on line length.

A line longer than the cap is never buffered past the cap: the framer reports it once (as `LINE_TOO_LONG`) and
skips input until the next newline, so the caller can answer with an error and close, and memory stays bounded
whatever the peer sends.
"""
from __future__ import annotations

DEFAULT_MAX_LINE = 16 * 1024


class _LineTooLong:
    """Marker yielded in place of a line that exceeded the cap."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG = _LineTooLong()


class LineFramer:
    """Splits a byte stream on b"\\n"; strips a trailing b"\\r"; drops blank lines."""

    __slots__ = ("max_line", "_buffer", "_skipping")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline (never more than max_line)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list:
        """Add received bytes; return the complete lines (bytes) and LINE_TOO_LONG markers, in order."""
        out: list = []
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        start = 0
        size = len(data)
        while start < size:
            end = data.find(b"\n", start)
            if end < 0:
                rest = size - start
                if self._skipping:
                    break
                if rest > self.max_line:
                    out.append(LINE_TOO_LONG)
                    self._skipping = True
                    break
                self._buffer = data[start:]
                break
            if self._skipping:
                self._skipping = False
            elif end - start > self.max_line:
                out.append(LINE_TOO_LONG)
            else:
                line = data[start:end]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.strip():
                    out.append(line)
            start = end + 1
        return out

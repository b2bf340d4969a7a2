"""Small helpers for reporting exceptions (pure)."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type when it has no text: database errors carry multi-line details and a
    log line should stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

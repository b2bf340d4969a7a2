"""Logging set-up: one line per event, as text or JSON (`--log-format json`), with control characters from client
input escaped so a worker name cannot forge log lines or terminal escapes."""
from __future__ import annotations

import logging
import time

import ujson

_ESCAPES = {i: f"\\x{i:02x}" for i in range(32) if i not in (9,)}
_ESCAPES[0x7F] = "\\x7f"


def escape(text: str) -> str:
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        head, sep, tail = message.partition("\nTraceback")
        return escape(head) + (sep + tail if sep else "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return ujson.dumps(entry, ensure_ascii=True, escape_forward_slashes=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

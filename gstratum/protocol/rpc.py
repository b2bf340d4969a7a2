"""Sans-IO Stratum JSON-RPC codec: decode one line into a request, encode results, errors and notifications.

Stratum V1 errors are `[code, "message", null]`; codes follow the de-facto table used by pools and miners.
Decoding never raises anything but `StratumError`, so the one caller that turns exceptions into replies stays simple.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ujson

from gstratum.mining.shares import StratumCode

OTHER, JOB_NOT_FOUND, DUPLICATE_SHARE, LOW_DIFFICULTY, UNAUTHORIZED, NOT_SUBSCRIBED = StratumCode


class StratumError(Exception):
    """An error that becomes a `[code, message, null]` reply; `request_id` is echoed when known."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(code, message)
        self.code = int(code)
        self.message = message
        self.request_id = request_id

    def as_json(self) -> list:
        return [self.code, self.message, None]


@dataclass(frozen=True, slots=True)
class Request:
    """A call from the miner. `id` may repeat (cpuminer reuses ids for submits) and is only echoed back."""

    id: Any
    method: str
    params: list


@dataclass(frozen=True, slots=True)
class Response:
    """A miner's answer to a call we made (e.g. client.get_version); it needs no reply."""

    id: Any
    result: Any
    error: Any


_JSON_ERRORS = (ValueError, OverflowError, RecursionError, TypeError, UnicodeDecodeError)


def decode(line: bytes) -> Request | Response:
    """Parse one line. Raises StratumError(20) for anything that is not a well-formed request object."""
    try:
        message = ujson.loads(line)
    except _JSON_ERRORS as exc:
        raise StratumError(OTHER, f"Parse error: {str(exc)[:80]}") from None
    if not isinstance(message, dict):
        kind = "batch requests are not supported" if isinstance(message, list) else "request must be a JSON object"
        raise StratumError(OTHER, f"Invalid request: {kind}")
    request_id = message.get("id")
    if not _valid_id(request_id):
        raise StratumError(OTHER, "Invalid request: id must be a number, a string or null")
    method = message.get("method")
    if method is None and ("result" in message or "error" in message):
        return Response(request_id, message.get("result"), message.get("error"))
    if not isinstance(method, str):
        raise StratumError(OTHER, "Invalid request: method must be a string", request_id)
    params = message.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise StratumError(OTHER, "Invalid request: params must be an array", request_id)
    return Request(request_id, method, params)


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _json(obj: Any) -> bytes:
    """The one place the wire's JSON options live."""
    return ujson.dumps(obj, ensure_ascii=True, escape_forward_slashes=False).encode()


def _dump(obj: Any) -> bytes:
    return _json(obj) + b"\n"


def encode_result(request_id: Any, result: Any) -> bytes:
    return _dump({"id": request_id, "result": result, "error": None})


_ACCEPTED_TAIL = b',"result":true,"error":null}\n'


def encode_accepted(request_id: Any) -> bytes:
    """`encode_result(request_id, True)`, the reply to nearly every submit, without building a dict (and, for the
    integer ids every miner sends, without the JSON encoder)."""
    if type(request_id) is int:
        return b'{"id":%d' % request_id + _ACCEPTED_TAIL
    return b'{"id":' + _json(request_id) + _ACCEPTED_TAIL


def encode_error(request_id: Any, error: StratumError) -> bytes:
    return _dump({"id": request_id, "result": None, "error": error.as_json()})


def encode_notification(method: str, params: list) -> bytes:
    return _dump({"id": None, "method": method, "params": params})


def encode_request(request_id: Any, method: str, params: list) -> bytes:
    return _dump({"id": request_id, "method": method, "params": params})

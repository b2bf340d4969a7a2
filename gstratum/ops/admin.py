"""Operator actions (message, difficulty, disconnect, reconnect): recorded, published to every process of the pool,
and applied by each process to its own miners."""
from __future__ import annotations

import logging

import ujson

log = logging.getLogger(__name__)

ADMIN_CHANNEL = "admin"
ACTIONS = ("reconnect", "message", "difficulty", "disconnect")


class AdminActions:
    def __init__(self, server, bus, recorder) -> None:
        self.server = server
        self.bus = bus
        self.recorder = recorder
        bus.subscribe(ADMIN_CHANNEL, self._heard)

    def request(self, action: str, worker: str | None, params: dict, source: str) -> dict:
        """An action from the API: recorded, then published so every process applies it (applied here directly
        when the database cannot carry it)."""
        self.recorder.admin_action(action, worker, ujson.dumps(params), source)
        if self.bus.publish(ADMIN_CHANNEL, {"action": action, "worker": worker, "params": params}):
            return {"published": True}
        return {"published": False, "miners": self.server.admin(action, worker, params)}

    def _heard(self, message: dict) -> None:
        try:
            self.server.admin(message["action"], message.get("worker"), message.get("params") or {})
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a malformed admin message: %s", exc)

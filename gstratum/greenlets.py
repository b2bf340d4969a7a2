"""Spawning greenlets that never die silently: each one is linked to an exception logger."""
from __future__ import annotations

import logging

import gevent
import gevent.pool

log = logging.getLogger(__name__)


def _log_failure(greenlet: gevent.Greenlet) -> None:
    log.error("greenlet %s died: %r", getattr(greenlet, "name", greenlet), greenlet.exception,
              exc_info=(type(greenlet.exception), greenlet.exception, greenlet.exception.__traceback__))


def spawn_logged(func, *args, group: gevent.pool.Group | None = None, name: str | None = None) -> gevent.Greenlet:
    greenlet = (group.spawn if group is not None else gevent.spawn)(func, *args)
    if name:
        greenlet.name = name
    greenlet.link_exception(_log_failure)
    return greenlet


class LoggedPool(gevent.pool.Pool):
    """A Pool whose greenlets are linked to the exception logger (for StreamServer(spawn=...))."""

    def spawn(self, *args, **kwargs) -> gevent.Greenlet:
        greenlet = super().spawn(*args, **kwargs)
        greenlet.link_exception(_log_failure)
        return greenlet

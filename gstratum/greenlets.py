"""Spawning greenlets that never die silently: each one is linked to an exception logger."""
from __future__ import annotations

import logging
import time

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


def stop_greenlet(greenlet: gevent.Greenlet | None, timeout: float = 2.0) -> None:
    """Kill a background greenlet and wait (bounded) until it is dead. Killed inside a psycopg2 call, a greenlet
    sees GreenletExit turned into a psycopg2 error by psycogreen's wait callback, which its loop may catch and
    carry on; so we keep killing until it is dead or the time is up, never blocking shutdown for ever."""
    if greenlet is None:
        return
    deadline = time.monotonic() + timeout
    while not greenlet.dead and time.monotonic() < deadline:
        greenlet.kill(block=True, timeout=0.2)
    if not greenlet.dead:
        log.warning("greenlet %s did not stop within %.1fs", getattr(greenlet, "name", greenlet), timeout)


class LoggedPool(gevent.pool.Pool):
    """A Pool whose greenlets are linked to the exception logger (for StreamServer(spawn=...))."""

    def spawn(self, *args, **kwargs) -> gevent.Greenlet:
        greenlet = super().spawn(*args, **kwargs)
        greenlet.link_exception(_log_failure)
        return greenlet

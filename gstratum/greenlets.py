"""Greenlets that never die silently.

Long-lived loops (the writer, the job stream, the LISTEN connection, the sweeper...) run under `Loops`: a loop that
raises is logged with its traceback, counted, and started again after an exponential backoff; while it waits it is
*down*, which makes the process not ready (/readyz names it). We restart rather than exit: every loop keeps its
state on its owner object, so a fresh call carries on where the crashed one stopped, and exiting would drop every
miner of the process for the fault of one background task. A loop that returns has finished (its owner stopped it)
and is not restarted.

Short-lived greenlets (a connection, its outbox writer, a one-off notice) end with their task: `spawn_logged` links
them to an exception logger.
"""
from __future__ import annotations

import logging
import time

import gevent
import gevent.pool

from gstratum.errors import first_line

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5    # seconds before the first restart; doubled per crash up to MAX_BACKOFF
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 60.0   # a loop that ran this long before it crashed starts again from FIRST_BACKOFF


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


class Loop:
    """One supervised long-lived greenlet: `func(*args)` run again whenever it raises."""

    def __init__(self, name: str, func, args: tuple, first_backoff: float, max_backoff: float) -> None:
        self.name = name
        self.func = func
        self.args = args
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.restarts = 0
        self.down = False               # crashed, waiting for its restart
        self.last_error: str | None = None
        self.stopping = False
        self.greenlet = spawn_logged(self._run, name=name)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            started = time.monotonic()
            try:
                self.func(*self.args)
                return                  # finished by itself (its owner asked it to)
            except Exception as exc:    # anything: a background loop must come back, whatever went wrong
                if self.stopping:       # killed inside a query: psycogreen turned GreenletExit into an error
                    return
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {first_line(exc)}"[:300]
                ran = time.monotonic() - started
                if not backoff or ran > HEALTHY_AFTER:
                    backoff = self.first_backoff
                else:
                    backoff = min(backoff * 2, self.max_backoff)
                self.down = True
                log.error("loop %s crashed after %.1fs (%s); restart %d in %.1fs", self.name, ran,
                          self.last_error, self.restarts, backoff, exc_info=True)
            gevent.sleep(backoff)
            self.down = False
            log.warning("loop %s restarted", self.name)

    @property
    def dead(self) -> bool:
        return self.greenlet.dead

    def join(self, timeout: float | None = None) -> None:
        self.greenlet.join(timeout=timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop for good: no restart, even if the kill surfaces as an exception inside the loop."""
        self.stopping = True
        stop_greenlet(self.greenlet, timeout)
        self.down = False


class Loops:
    """The process's long-lived loops, for its readiness (which are down) and metrics (restarts per loop).
    Each component that runs a loop takes this registry in its constructor; without one it gets its own."""

    def __init__(self, first_backoff: float = FIRST_BACKOFF, max_backoff: float = MAX_BACKOFF) -> None:
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._loops: dict[str, Loop] = {}

    def spawn(self, name: str, func, *args) -> Loop:
        """Run `func(*args)` as the supervised loop `name` (a later loop of the same name replaces it here)."""
        loop = Loop(name, func, args, self.first_backoff, self.max_backoff)
        previous = self._loops.get(name)
        if previous is not None:
            loop.restarts = previous.restarts    # a counter never goes back
        self._loops[name] = loop
        return loop

    def down(self) -> list[Loop]:
        return [loop for loop in self._loops.values() if loop.down and not loop.stopping]

    def restarts(self) -> dict[str, int]:
        return {name: loop.restarts for name, loop in self._loops.items()}

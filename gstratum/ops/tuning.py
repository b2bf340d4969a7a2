"""Process limits and collector settings for holding tens of thousands of sockets."""
from __future__ import annotations

import gc
import logging
import resource
import time

log = logging.getLogger(__name__)


def tune_process() -> None:
    """Raise the open-files limit to the hard limit; make the GC run less often (handshake latency spikes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    log.info("open files limit %d", soft)
    gc.set_threshold(50_000, 50, 100)


def watch_gc(metrics) -> None:
    """Time every collection into `metrics.gc_pause` and keep the longest in `metrics.gc_longest` (the periodic
    stats line reports it). Nothing is logged from inside the callback: it runs in the middle of an allocation,
    possibly while the interpreter shuts down."""
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        metrics.gc_pause.observe(pause)
        if pause > metrics.gc_longest:
            metrics.gc_longest = pause

    gc.callbacks.append(on_gc)


LOOP_TICK = 0.005


def watch_loop(metrics, loops, tick: float = LOOP_TICK):
    """A loop (run by `loops`, a gstratum.greenlets.Loops) that wakes every `tick` seconds and records how late it
    woke (`metrics.loop_lag`): the event loop's stalls as miners feel them (a template being built, a GC pause, a
    long fan-out chunk)."""
    import gevent

    def run() -> None:
        while True:
            expected = time.perf_counter() + tick
            gevent.sleep(tick)
            metrics.loop_lag.observe(max(0.0, time.perf_counter() - expected))

    return loops.spawn("loop-lag", run)

"""Supervised loops come back after they raise (with backoff, counted, down meanwhile); bounded worker stats."""
from __future__ import annotations

import time

import gevent
import pytest

from gstratum.greenlets import Loops
from gstratum.ops.stats import PoolStats


def until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.005)
    return condition()


def test_a_loop_that_raises_is_restarted_with_backoff_and_counted(caplog):
    runs: list[float] = []

    def flaky():
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise OSError(28, "No space left on device")
        gevent.sleep(10)

    loops = Loops(first_backoff=0.05, max_backoff=1.0)
    loop = loops.spawn("flaky", flaky)
    assert until(lambda: len(runs) == 1)
    assert loop.down and [down.name for down in loops.down()] == ["flaky"]
    assert "No space left on device" in loop.last_error
    assert until(lambda: len(runs) == 2)
    assert loop.down                       # raised again at once: down until the next restart
    assert until(lambda: len(runs) == 3)
    assert not loop.down and loops.down() == []
    assert runs[1] - runs[0] >= 0.05 and runs[2] - runs[1] >= 0.1     # the wait doubles
    assert loops.restarts() == {"flaky": 2}
    crashes = [r for r in caplog.records if "loop flaky crashed" in r.getMessage()]
    assert len(crashes) == 2 and crashes[0].exc_info is not None     # logged with the traceback
    loop.stop()
    assert loop.dead and loops.down() == []


def test_a_stopped_loop_is_not_restarted_even_if_the_kill_surfaces_as_an_error():
    """psycogreen turns a GreenletExit delivered inside a query into a psycopg2 error: a loop may catch it, or
    raise something else; either way a stopped loop stays stopped."""
    runs = []

    def converts_the_kill():
        runs.append(1)
        try:
            gevent.sleep(10)
        except gevent.GreenletExit:
            raise RuntimeError("connection closed by the kill") from None

    loops = Loops(first_backoff=0.01)
    loop = loops.spawn("db", converts_the_kill)
    gevent.sleep(0)
    loop.stop()
    gevent.sleep(0.05)
    assert loop.dead and runs == [1] and loops.restarts() == {"db": 0} and loops.down() == []


def test_a_loop_that_returns_has_finished():
    loops = Loops(first_backoff=0.01)
    loop = loops.spawn("once", lambda: None)
    gevent.sleep(0.05)
    assert loop.dead and loops.restarts() == {"once": 0} and loops.down() == []


def test_worker_stats_forget_idle_workers_and_keep_at_most_the_cap():
    stats = PoolStats(max_workers=3, idle_expiry=100.0)
    for i, name in enumerate(["a", "b", "c"]):
        stats.share(name, True, 1.0, 1000.0 + i)
    stats.share("a", True, 1.0, 1010.0)        # a is now the most recently active
    stats.share("d", True, 1.0, 1011.0)        # past the cap: b (idle longest) is forgotten
    assert list(stats.workers) == ["c", "a", "d"] and stats.forgotten == 1
    assert "workers=2" in stats.summary(now=1105.0)     # c's last share (1002) is over 100 s old
    assert list(stats.workers) == ["a", "d"]
    assert stats.workers["a"].accepted == 2


@pytest.mark.parametrize("names", [10_000])
def test_worker_stats_stay_bounded_under_a_flood_of_names(names):
    stats = PoolStats(max_workers=1000)
    for i in range(names):
        stats.share(f"w{i}", False, 1.0, float(i))
    assert len(stats.workers) == 1000 and stats.forgotten == names - 1000

"""One job stream across processes: a leader by advisory lock, jobs by NOTIFY, failover when the leader dies."""
from __future__ import annotations

import signal
import time

from gstratum.client import StratumClient


def job_ids(client: StratumClient, count: int, timeout: float) -> list[str]:
    seen = [m["params"][0] for m in client.state.notifications if m["method"] == "mining.notify"]
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        try:
            message = client.read_message(max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        if message.get("method") == "mining.notify":
            seen.append(message["params"][0])
    return seen


def test_two_processes_share_one_job_stream_and_fail_over(start_server):
    a = start_server("--notify-interval", "1")
    b = start_server("--notify-interval", "1")
    assert "now the job leader" in a.log() and "now the job leader" not in b.log()
    with StratumClient(a.host, a.port) as on_a, StratumClient(b.host, b.port) as on_b:
        on_a.subscribe()
        on_b.subscribe()
        from_a = job_ids(on_a, 4, 10)
        from_b = job_ids(on_b, 4, 10)
        # after the first (which a late joiner takes from the table), both see the same ids in the same order
        common = [j for j in from_a if j in from_b]
        assert len(common) >= 2, (from_a, from_b)
        prefixes = {j[:8] for j in common}
        assert len(prefixes) == 1       # all made by one process: the leader
        # kill the leader outright: b takes the lock and the jobs keep coming within about one interval
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        killed_at = time.monotonic()
        before = len(on_b.state.notifications)
        new_ids = job_ids(on_b, len(from_b) + 3, 10)[len(from_b):]
        assert len(new_ids) >= 3, new_ids
        assert time.monotonic() - killed_at < 8
        assert "now the job leader" in b.log()
        assert {j[:8] for j in new_ids[-2:]} != prefixes   # b's own jobs now
        assert len(on_b.state.notifications) > before

"""Zero-downtime restart: SIGHUP starts a successor on the same socket; every miner moves over with its
extranonce1, and no connection attempt is refused."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

from gstratum.client import StratumClient

from .conftest import process_alive, wait_until


class ReconnectingMiner(threading.Thread):
    """Follows client.reconnect (or a closed connection) like real firmware, resuming its session."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.deadline = host, port, deadline
        self.extranonces: list[str] = []
        self.refused = 0
        self.reconnects_requested = 0
        self.session: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                try:
                    client = StratumClient(self.host, self.port, timeout=10)
                except ConnectionRefusedError:
                    self.refused += 1
                    time.sleep(0.1)
                    continue
                with client:
                    try:
                        sub = client.subscribe("reconnecting/1.0", self.session)
                    except (ConnectionError, OSError):
                        continue
                    self.session = sub.session_id
                    self.extranonces.append(sub.extranonce1)
                    self._follow(client)
        except BaseException as exc:
            self.error = exc

    def _follow(self, client: StratumClient) -> None:
        while time.monotonic() < self.deadline:
            try:
                message = client.read_message(1.0)
            except TimeoutError:
                continue
            except (ConnectionError, OSError):
                return
            if message.get("method") == "client.reconnect":
                self.reconnects_requested += 1
                return


def test_sighup_hands_every_miner_to_a_successor(start_server):
    server = start_server("--drain-period", "2", "--notify-interval", "30")
    deadline = time.monotonic() + 25
    miners = [ReconnectingMiner(server.host, server.port, deadline) for _ in range(60)]
    for m in miners:
        m.start()
    while sum(len(m.extranonces) for m in miners) < 60:
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.wait(20) == 0, server.log()   # the old process drained and exited
    successor = int(re.search(r"takeover: started successor pid (\d+)", server.log()).group(1))
    try:
        while time.monotonic() < deadline and any(len(m.extranonces) < 2 for m in miners):
            time.sleep(0.1)
        for m in miners:
            assert m.error is None, m.error
            assert len(m.extranonces) >= 2, m.extranonces
            assert len(set(m.extranonces)) == 1, m.extranonces      # resumed: same extranonce1
            assert m.refused == 0
        assert sum(m.reconnects_requested for m in miners) >= 50
        assert "asked pid" in server.log() and "draining 60 miners" in server.log()
    finally:
        os.kill(successor, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(successor, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        deadline = time.monotonic()  # stop the miner threads
        for m in miners:
            m.deadline = deadline
        for m in miners:
            m.join(5)


def test_takeover_under_the_load_tool(start_server, tmp_path):
    """The issue's scenario: the project's load tool keeps 300 miners (sharing) while SIGHUP swaps the process."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    server = start_server("--drain-period", "2", "--difficulty", "0.000001", "--clean-every", "1000")
    out = tmp_path / "load.json"
    load = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--port", str(server.port),
                             "--miners", "300", "--procs", "2", "--ramp", "600", "--duration", "12",
                             "--share-rate", "0.5", "--reconnect", "--json", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    successor = None
    try:
        time.sleep(4)
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.wait(30) == 0
        successor = int(re.search(r"takeover: started successor pid (\d+)", server.log()).group(1))
        assert load.wait(90) == 0
    finally:
        if successor:
            os.kill(successor, signal.SIGTERM)
            wait_until(lambda: process_alive(successor), lambda alive: not alive, timeout=30)
    report = json.loads(out.read_text())
    assert report["connect_failures"] == 0 and report["errors"] == 0
    assert report["reconnects_requested"] == 300 and report["drops"] == 0
    assert report["resumed_same_extranonce1"] == 300 and report["resumed_changed_extranonce1"] == 0
    assert report["subscribed"] == 300          # all back, on the successor
    assert report["shares_accepted"] > 0

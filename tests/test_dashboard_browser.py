"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright), while the client mines."""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from gstratum.client import StratumClient
from gstratum.mining import mine

from .conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (.ci/run installs it when it can)")


def test_worker_appears_with_hashrate(start_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2")
    stop = threading.Event()

    def mining() -> None:
        with StratumClient(server.host, server.port) as client:
            client.subscribe()
            client.authorize("dash.rig1")
            while not stop.is_set():
                mine(client, "dash.rig1", duration=1)

    miner = threading.Thread(target=mining, daemon=True)
    miner.start()
    try:
        with sync_api.sync_playwright() as p:   # Playwright gives the browser a fresh temporary profile
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server.http_port}/")
            deadline = time.monotonic() + 20
            rate = 0.0
            while time.monotonic() < deadline:
                cell = page.query_selector('#workers-table tr[data-worker="dash.rig1"] td.hashrate')
                if cell is not None:
                    rate = float(cell.get_attribute("data-value"))
                    if rate > 0:
                        break
                time.sleep(0.5)
            assert rate > 0, page.content()[:2000]
            assert int(page.inner_text("#miners-online")) >= 1
            assert "H/s" in page.inner_text("#pool-hashrate-10m")
            # the table sorts by a clicked column
            page.click('#workers-table th[data-key="name"]')
            assert "sorted" in page.get_attribute('#workers-table th[data-key="name"]', "class")
            try:
                page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
            except OSError:
                pass
            browser.close()
    finally:
        stop.set()
        miner.join(10)

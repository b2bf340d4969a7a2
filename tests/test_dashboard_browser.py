"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright), while the client mines."""
from __future__ import annotations

import json
import os
import threading
import time
from urllib.parse import urlencode

import pytest

from gstratum.client import StratumClient
from gstratum.client.work import mine

from .conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A worker name is client input: the page must show it as text, never run it as markup.
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><b id="injected">x</b>'

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium (/usr/bin/chromium) is not installed; "
                                       ".ci/run installs it when it can")


def wait_until(check, timeout: float, interval: float = 0.3):
    """Poll `check()` until it returns something truthy; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def worker_rate(page, name: str) -> float:
    cell = page.query_selector(f'#workers-table tr[data-worker="{name}"] td.hashrate')
    return float(cell.get_attribute("data-value")) if cell is not None else 0.0


def test_worker_appears_with_hashrate(start_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2")
    stop = threading.Event()
    errors: list[BaseException] = []
    outcomes: dict = {}   # True (accepted) or the rejection code -> count

    def stop_when_asked(share, outcome) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if stop.is_set():
            raise _Stopped

    def mining() -> None:
        # One mine() call: each call starts its extranonce2 counter afresh, so a loop of short calls would
        # resubmit shares the server has already seen (duplicates).
        try:
            with StratumClient(server.host, server.port) as client:
                client.subscribe()
                client.authorize("dash.rig1")
                mine(client, "dash.rig1", duration=60, on_result=stop_when_asked)
        except _Stopped:
            pass
        except BaseException as exc:  # reported by the test, not lost in the thread
            if not stop.is_set():
                errors.append(exc)

    miner = threading.Thread(target=mining, daemon=True)
    miner.start()
    hostile = server.miner(HOSTILE)
    try:
        with sync_api.sync_playwright() as p:   # launch() gives the browser a fresh temporary profile
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server.http_port}/")

            rate = wait_until(lambda: worker_rate(page, "dash.rig1"), timeout=20)
            assert not errors, errors
            assert rate > 0, page.inner_text("body")[:3000]
            assert outcomes.get(True, 0) > 0 and 22 not in outcomes, outcomes   # 22: duplicate share
            cell_text = page.inner_text('#workers-table tr[data-worker="dash.rig1"] td.hashrate')
            assert cell_text.endswith("H/s"), cell_text
            assert int(page.inner_text("#miners-online")) >= 1
            assert "H/s" in page.inner_text("#pool-hashrate-10m")
            assert page.inner_text("#last-update") != "never"
            assert page.query_selector("#hashrate-chart path") is not None
            assert page.is_hidden("#error")

            # the hostile name is shown as text: no element injected, no handler run
            names = page.eval_on_selector_all("#workers-table tbody tr", "rows => rows.map(r => r.dataset.worker)")
            assert HOSTILE in names
            assert page.query_selector("#injected") is None
            assert page.title() != "pwned"

            screenshot = os.environ.get("GSTRATUM_DASHBOARD_SCREENSHOT")   # e.g. docs/dashboard.png
            if screenshot:   # sorted by hashrate, the mining worker is on top
                (ROOT / screenshot).write_bytes(page.screenshot())

            # any column header sorts: first click descending, second ascending
            def column(key: str) -> list[str]:
                return page.eval_on_selector_all(
                    "#workers-table tbody tr", f"rows => rows.map(r => r.cells[{_COLUMNS.index(key)}].textContent)")

            page.click('#workers-table th[data-key="name"]')
            descending = column("name")
            page.click('#workers-table th[data-key="name"]')
            assert column("name") == descending[::-1] and len(descending) >= 2   # names are unique
            assert "asc" in page.get_attribute('#workers-table th[data-key="name"]', "class")
            page.click('#workers-table th[data-key="accepted"]')
            accepted = [int(v) for v in column("accepted")]
            assert accepted == sorted(accepted, reverse=True)
            page.click('#workers-table th[data-key="accepted"]')
            accepted = [int(v) for v in column("accepted")]
            assert accepted == sorted(accepted)

            # the server goes away: the banner shows, and the page keeps retrying
            stop.set()
            hostile.close()
            server.stop()
            assert wait_until(lambda: page.is_visible("#error"), timeout=10), page.inner_text("body")[:2000]
            assert "retrying" in page.inner_text("#error")
            browser.close()
    finally:
        stop.set()
        hostile.close()
        miner.join(10)


class _Stopped(Exception):
    pass


_COLUMNS = ["name", "connections", "accepted", "rejected", "difficulty", "hashrate", "last_share"]


def test_pplns_sections_and_a_miners_page(start_server, db):
    """With PPLNS rows in the tables: the current window, the next block's split (outputs, who is carried), the
    balances and a block's split (expanded on click) render; an address links to its miner page, which shows what
    it is owed and why; an address that is client input is shown as text."""
    from .conftest import new_cluster_name
    from .test_api_pplns import A, B, C, D, POOL, SPLIT, UNKNOWN, block_hash, insert_block

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    cluster = new_cluster_name()
    older = block_hash("browser")
    with db.cursor() as cur:
        insert_block(cur, cluster, older, 800_000, "2020-01-01 10:00:00.25+00", "confirmed",
                     ("2020-01-01 09:00:00+00", "2020-01-01 09:59:59.999999+00", "3.5", 7),
                     [(A, False, "2.5", 217_633_928, 0, 217_633_928, 0), (B, False, "1", 87_053_571, 0, 0, None),
                      (POOL, True, "0", 0, 0, 94_866_072, 1)])
        for address, balance in ((B, 87_053_571), (D, 123_456_789), (HOSTILE, 7)):
            cur.execute("INSERT INTO balances (cluster, address, balance, updated_at) VALUES (%s, %s, %s, now())",
                        (cluster, address, balance))
        cur.execute("INSERT INTO pplns_current (cluster, job_id, created_at, split) VALUES (%s, '6a1', now(), %s)",
                    (cluster, json.dumps(SPLIT)))
    server = start_server("--notify-interval", "30", cluster=cluster)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(f"http://127.0.0.1:{server.http_port}/")

        def addresses(table: str) -> list[str]:
            return page.eval_on_selector_all(f"#{table} > tbody > tr", "rows => rows.map(r => r.dataset.address)")

        assert wait_until(lambda: addresses("window-table") == [A, C], timeout=20), page.inner_text("body")[:3000]
        assert page.inner_text(f'#window-table tr[data-address="{A}"]').split("\t")[1:] == ["3", "75.00 %"]
        assert "8 shares submitted" in page.inner_text("#window-summary")
        assert addresses("next-outputs") == [A, D, POOL]
        assert page.get_attribute("#next-outputs tbody tr:last-child", "class") == "fee"
        assert page.eval_on_selector_all("#next-outputs td.amount", "cells => cells.map(c => c.dataset.sats)") == \
            ["228515625", "76176875", "7807500"]
        assert addresses("next-carried") == [D, C]           # due above paid: carried to the balance
        assert page.get_attribute(f'#next-carried tr[data-address="{C}"] td:last-child', "data-sats") == "76176875"
        assert addresses("balances") == [D, B, HOSTILE]
        assert page.inner_text(f'#balances tr[data-address="{D}"] td.amount') == "1.23456789 BTC"
        assert page.query_selector("#injected") is None and page.title() != "pwned"

        page.click(f'#blocks tr[data-block="{older}"] button.toggle')    # the block's split, expanded
        detail = f'#blocks tr[data-detail="{older}"]'
        assert wait_until(lambda: page.query_selector_all(f"{detail} table.split tbody tr"), timeout=10)
        assert page.eval_on_selector_all(f"{detail} table.split tbody tr", "rows => rows.map(r => r.dataset.address)") \
            == [A, POOL, B]
        assert page.get_attribute(f'{detail} tr[data-address="{B}"] td:last-child', "data-sats") == "87053571"
        page.wait_for_timeout(3500)                          # a refresh keeps it open
        assert page.query_selector(detail) is not None and page.is_hidden("#error")

        page.click(f'#window-table tr[data-address="{A}"] a.address')    # the miner's page
        page.wait_for_url("**/miner.html?address=*")
        assert wait_until(lambda: page.get_attribute("#next-paid", "data-sats") == "228515625", timeout=10), \
            page.inner_text("body")[:3000]
        assert page.inner_text("#address") == A and page.get_attribute("#balance", "data-sats") == "0"
        assert page.inner_text("#window-share") == "75.00 %"
        assert "weigh 3 of 4" in page.inner_text("#why") and "pay all of it" in page.inner_text("#why")
        assert page.eval_on_selector_all("#payouts tbody tr", "rows => rows.map(r => r.dataset.block)") == [older]
        assert page.get_attribute(f'#payouts tr[data-block="{older}"] td:nth-child(7)', "data-sats") == "217633928"

        page.goto(f"http://127.0.0.1:{server.http_port}/miner.html?address={D}")     # owed more than it is paid
        assert wait_until(lambda: page.get_attribute("#balance", "data-sats") == "123456789", timeout=10)
        assert "carry 0.47279914 BTC" in page.inner_text("#why")
        assert page.get_attribute('#next-block tr[data-key="carried"] td.amount', "data-sats") == "47279914"

        page.goto(f"http://127.0.0.1:{server.http_port}/miner.html?" + urlencode({"address": HOSTILE}))
        assert wait_until(lambda: page.get_attribute("#balance", "data-sats") == "7", timeout=10)
        assert page.inner_text("#address") == HOSTILE and page.query_selector("#injected") is None
        assert page.title() != "pwned"

        page.goto(f"http://127.0.0.1:{server.http_port}/miner.html?address={UNKNOWN}")    # nothing known: a 404
        assert wait_until(lambda: page.is_visible("#error"), timeout=10)
        assert "Nothing is known of this address" in page.inner_text("#error")
        browser.close()

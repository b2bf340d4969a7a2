"""Real mining over real sockets: every honest share accepted, every bad one refused with its code, all recorded."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gstratum.mining import bitcoin
from gstratum.client import StratumClient, StratumRejected
from gstratum.client.work import bad_share_checks, mine

from .conftest import ROOT, query, wait_rows


def test_client_mines_at_tiny_difficulty_and_every_share_is_accepted(start_server, db):
    server = start_server("--difficulty", "0.00002", "--fake-txs", "3", "--notify-interval", "1",
                          "--clean-every", "1000")
    worker = f"miner-{time.time_ns()}"
    with server.miner(worker) as client:
        report = mine(client, worker, duration=120, max_shares=5)   # five shares, however fast this machine hashes
    assert report.accepted == 5, report
    assert report.rejected_total == 0, report.rejected
    rows = wait_rows(db, "SELECT accepted, error_code, count(*) FROM shares WHERE worker = %s GROUP BY 1, 2",
                      worker, expect=[(True, None, report.accepted)])
    assert rows == [(True, None, report.accepted)]
    achieved = query(db, "SELECT min(achieved), min(difficulty) FROM shares WHERE worker = %s", worker)[0]
    assert achieved[0] >= achieved[1] == 0.00002


def test_each_bad_share_gets_its_code_and_a_row(start_server, db):
    server = start_server("--difficulty", "0.0001", "--notify-interval", "30")
    worker = f"bad-{time.time_ns()}"
    with server.miner(worker) as client:
        results = bad_share_checks(client, worker, server.host, server.port)
    assert len(results) == 11
    for kind, (expected, got) in results.items():
        assert expected == got, f"{kind}: expected {expected}, got {got}"
    # a row per submit of an authorized worker; shares nobody authorized (24, 25) are counted, never stored
    rows = wait_rows(db, "SELECT count(*) FROM shares WHERE worker = %s", worker, expect=[(9,)])
    assert rows == [(9,)]
    codes = dict(query(db, "SELECT coalesce(error_code, 0), count(*) FROM shares WHERE worker = %s GROUP BY 1",
                       worker))
    assert codes == {0: 1, 20: 5, 21: 1, 22: 1, 23: 1}
    assert query(db, "SELECT error_code FROM shares WHERE worker = %s", "not-" + worker) == []
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    assert 'gstratum_shares_total{result="unauthorized"} 1.0' in metrics
    assert 'gstratum_shares_total{result="not_subscribed"} 1.0' in metrics


def test_share_on_job_sent_before_retarget_is_judged_at_old_difficulty(start_server, db):
    """A miner keeps hashing the job it has after set_difficulty: those shares are honest at the old difficulty."""
    server = start_server("--difficulty", "0.0001", "--vardiff", "0", "--notify-interval", "30")
    worker = f"retarget-{time.time_ns()}"
    with server.miner(worker) as client:
        client.wait_for("mining.notify")
        old_job = client.state.job
        from gstratum.client.work import JobWork

        work = JobWork(client)
        work.refresh()
        share = None
        while share is None:
            share, _ = work.search(bitcoin.target_from_difficulty(0.0001), 100_000)
        # now the difficulty goes up a million-fold; the server re-sends the job (new id) so it applies from there
        client.call("mining.suggest_difficulty", [100.0])
        assert client.wait_for("mining.set_difficulty", after=1)["params"] == [100.0]
        renotified = client.wait_for("mining.notify", after=1)
        assert renotified["params"][0] != old_job[0] and renotified["params"][8] is False
        assert renotified["params"][1:8] == old_job[1:8]
        # the share found for the job as first sent is judged at 0.0001: accepted ...
        assert client.submit(worker, share.job_id, share.extranonce2, share.ntime, share.nonce) is True
        # ... while a fresh share at the old difficulty on the re-sent job is low difficulty
        work.refresh()
        assert work.params[0] == renotified["params"][0]
        later = None     # a share that meets 0.0001 but not 100 (all but one in a million do)
        while later is None or bitcoin.difficulty_from_hash(later.hash_int) >= 100.0:
            later, _ = work.search(bitcoin.target_from_difficulty(0.0001), 100_000)
        with pytest.raises(StratumRejected) as refused:
            client.submit(worker, later.job_id, later.extranonce2, later.ntime, later.nonce)
        assert refused.value.code == 23


def test_version_rolling(start_server):
    server = start_server("--difficulty", "0.0001", "--notify-interval", "30")
    worker = "roller"
    with StratumClient(server.host, server.port) as client:
        result = client.call("mining.configure", [["version-rolling", "minimum-difficulty", "x-unknown"],
                                                  {"version-rolling.mask": "00fff000",
                                                   "version-rolling.min-bit-count": 2,
                                                   "minimum-difficulty.value": 0.00005}])
        assert result["version-rolling"] is True
        assert result["version-rolling.mask"] == f"{0x1FFFE000 & 0x00FFF000:08x}"
        assert result["minimum-difficulty"] is True and result["x-unknown"] is False
        client.subscribe()
        client.authorize(worker)
        client.wait_for("mining.notify")
        from gstratum.client.work import JobWork
        from gstratum.client.miner import find_share

        work = JobWork(client)
        work.refresh()
        job_id, _, _, _, _, version, _, ntime, _ = work.params
        rolled_bits = 0x00AB2000
        rolled = (int(version, 16) & ~0x00FFF000) | rolled_bits
        en1 = bytes.fromhex(client.subscription.extranonce1)
        target = bitcoin.target_from_difficulty(client.state.difficulty)
        nonce, _ = find_share(work.template, en1, bytes(4), ntime, rolled, target, max_tries=5_000_000)
        assert client.submit(worker, job_id, "00000000", ntime, nonce, f"{rolled_bits:08x}") is True
        # the same nonce judged without the rolled bits is a different header: rejected or a different share
        try:
            client.submit(worker, job_id, "00000000", ntime, nonce, "00000000")
        except StratumRejected as exc:
            assert exc.code == 23
        # bits outside the negotiated mask
        try:
            client.submit(worker, job_id, "00000001", ntime, nonce, "01000000")
            raise AssertionError("bits outside the mask were accepted")
        except StratumRejected as exc:
            assert exc.code == 20


def test_vardiff_raises_a_fast_miners_difficulty_and_shares_stay_accepted(start_server):
    server = start_server("--difficulty", "0.00001", "--vardiff", "1", "--target-share-interval", "5",
                          "--retarget-after", "1.5", "--notify-interval", "30")
    worker = "fast-miner"
    with server.miner(worker) as client:
        report = mine(client, worker, duration=4)
        difficulties = [m["params"][0] for m in client.state.notifications if m["method"] == "mining.set_difficulty"]
    assert difficulties[0] == 0.00001
    assert len(difficulties) >= 2 and difficulties[-1] > difficulties[0], difficulties
    assert report.accepted > 0 and report.rejected_total == 0, report


def test_block_candidate_is_logged_and_recorded(start_server, db):
    # a regtest-like network target: nearly every share is also a block
    server = start_server("--difficulty", "0.00002", "--nbits", "207fffff", "--notify-interval", "30")
    worker = f"lucky-{time.time_ns()}"
    with server.miner(worker) as client:
        report = mine(client, worker, duration=60, max_shares=2)
    assert report.accepted == 2
    rows = wait_rows(db, "SELECT count(*) FROM blocks WHERE worker = %s", worker, expect=[(2,)])
    assert rows == [(2,)]
    header, block_hash = query(db, "SELECT header, block_hash FROM blocks WHERE worker = %s LIMIT 1", worker)[0]
    assert len(bytes.fromhex(header)) == 80
    assert bitcoin.sha256d(bytes.fromhex(header))[::-1].hex() == block_hash
    assert "BLOCK CANDIDATE" in server.log() and block_hash in server.log()


def test_bad_shares_at_a_difficulty_too_high_for_the_cpu_miner_says_so_at_once(start_server):
    """The checks need one valid share: at the default difficulty 1 the CPU miner would search for hours, silently."""
    server = start_server("--difficulty", "1", "--notify-interval", "30")
    result = subprocess.run([sys.executable, "-m", "gstratum", "client", "--url", f"127.0.0.1:{server.port}",
                             "--user", "alice.rig1", "--bad-shares"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert "too high for the CPU miner" in result.stderr and "--difficulty 0.0001" in result.stderr

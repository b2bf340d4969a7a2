"""Mining real blocks against a node (issue 13): the strict fake bitcoind of scripts/fake_bitcoind.py, or a real
`bitcoind` on regtest where the environment variable BITCOIND names one (tests marked `fake_only` need the fake's
test controls and are skipped then). The pool's CPU-mining client finds blocks at a tiny difficulty; the node
validates each one completely before accepting it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gstratum.client import StratumClient, StratumRejected
from gstratum.client.work import mine

from .conftest import ROOT, query, wait_until
from .nodes import FakeNode, start_node

pytestmark = pytest.mark.integration
fake_only = pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason="uses the fake node's test controls")

POOL_ADDRESS = "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9"       # regtest P2WPKH (Bitcoin Core's key_io vectors)
POOL_SCRIPT = "00146f58bac9506f9bfb821d62e69330410bb56f0085"
MINER_ADDRESS = "bcrt1pfwxjqvtt4tcxrtdluukfmy2dv7xd2qzdfy6kajv5nwn4yam3wxkq3553uh"   # regtest P2TR
MINER_SCRIPT = "51204b8d20316baaf061adbfe72c9d914d678cd5004d49356ec9949ba752777171ac"


@pytest.fixture
def node(tmp_path):
    with start_node(tmp_path / "node") as started:
        yield started


def node_flags(node, *extra: str) -> tuple[str, ...]:
    return ("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--zmq-hashblock",
            node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty", "1e-9", "--vardiff", "0", *extra)


def coinbase_outputs(node, block_hash: str) -> list[tuple[int, str]]:
    """What the coinbase of an accepted block pays, as the node reports it (works on Bitcoin Core too)."""
    block = node.rpc("getblock", block_hash, 2)
    return [(round(out["value"] * 1e8), out["scriptPubKey"]["hex"]) for out in block["tx"][0]["vout"]]


def pool_blocks(db, worker: str) -> list[tuple]:
    return query(db, "SELECT block_hash, status, results::text, reward, username FROM blocks WHERE worker = %s "
                     "ORDER BY found_at", worker)


def get(server, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_pool_mode_mines_blocks_the_node_accepts_paying_the_pool(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS))
    start_height = node.rpc("getblockcount")
    worker = f"pool.rig{time.time_ns()}"
    with server.miner(worker) as client:
        for _ in range(3):      # one block at a time: each share meets regtest's target, so wait for the clean job
            tip = node.rpc("getbestblockhash")
            assert mine(client, worker, duration=30, max_shares=1).accepted == 1
            new_tip = wait_until(lambda: node.rpc("getbestblockhash"), lambda h: h != tip)
            job = wait_until(lambda: (client.poll(), client.state.job)[1],
                             lambda j: _display_prevhash(j[1]) == new_tip)
            assert _display_prevhash(job[1]) == new_tip and job[8] is True      # the next template, at once
    accepted = wait_until(lambda: [r for r in pool_blocks(db, worker) if r[1] == "submitted"],
                          lambda rows: len(rows) == 3, timeout=20)
    assert len(accepted) == 3, pool_blocks(db, worker)
    assert node.rpc("getblockcount") == start_height + 3
    for block_hash, status, results, reward, user in accepted:
        header = node.rpc("getblockheader", block_hash)
        assert header["confirmations"] >= 1                      # on the node's active chain
        outputs = coinbase_outputs(node, block_hash)
        paid = [value for value, script in outputs if script == POOL_SCRIPT]
        assert paid and paid[0] == reward > 0                    # subsidy + fees, to the configured address
        assert "accepted" in results and user == "pool"
    assert "BLOCK " in server.log() and "submitted" in server.log()


def test_solo_mode_pays_each_miner_its_own_address_and_refuses_a_bad_one(node, start_server, db):
    server = start_server(*node_flags(node, "--solo", "--solo-fee", "2", "--payout-address", POOL_ADDRESS))
    worker = f"{MINER_ADDRESS}.rig{time.time_ns()}"
    with StratumClient(server.host, server.port) as bad:
        bad.subscribe()
        with pytest.raises(StratumRejected) as refused:
            bad.authorize("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4.rig")     # a mainnet address
        assert refused.value.code == 24 and "Invalid payout address" in refused.value.error[1]
        assert bad.state.jobs_received == 0                       # never a job that pays nobody
    with server.miner(worker) as client:
        report = mine(client, worker, duration=60, max_shares=2)
    assert report.accepted >= 1
    rows = wait_until(lambda: [r for r in pool_blocks(db, worker) if r[1] == "submitted"], timeout=20)
    assert rows, pool_blocks(db, worker)
    outputs = dict((script, value) for value, script in coinbase_outputs(node, rows[0][0]))
    total = outputs[MINER_SCRIPT] + outputs[POOL_SCRIPT]
    assert outputs[POOL_SCRIPT] == total * 2 // 100               # the 2 % fee, rounded down to a satoshi
    assert rows[0][4] == MINER_ADDRESS                            # the user is the address


@fake_only
def test_fail_over_to_the_standby_node_and_back(tmp_path, start_server):
    with FakeNode(tmp_path / "a") as first, FakeNode(tmp_path / "b") as second:
        # two nodes, two cookies: each one's credentials in its URL
        server = start_server("--bitcoind", first.url_with_auth, "--bitcoind", second.url_with_auth,
                              "--block-poll", "0.5", "--difficulty", "0.00001", "--payout-address", POOL_ADDRESS)
        with server.miner("failover.rig") as client:
            tip_a = first.rpc("getbestblockhash")
            assert client.wait_for("mining.notify")["params"][1]
            first.pause()
            paused = time.monotonic()
            try:
                tip_b = second.rpc("getbestblockhash")
                job = wait_until(lambda: (client.poll(), client.state.job)[1],
                                 lambda j: j is not None and _display_prevhash(j[1]) == tip_b, timeout=20)
                assert _display_prevhash(job[1]) == tip_b and job[8] is True
                # a silent node is down after DOWN_AFTER health checks in a row time out (HEALTH_TIMEOUT each):
                # ~9 s, never one slow answer
                assert time.monotonic() - paused < 15
                report = mine(client, "failover.rig", duration=30, max_shares=1)
                assert report.accepted == 1
                assert wait_until(lambda: second.rpc("getbestblockhash"), lambda h: h != tip_b) != tip_b
            finally:
                first.resume()
            assert tip_a == first.rpc("getbestblockhash")
            text = wait_until(server.log, lambda t: f"now using bitcoind 127.0.0.1:{first.rpc_port}" in t, timeout=15)
            assert f"now using bitcoind 127.0.0.1:{first.rpc_port}" in text


def _display_prevhash(stratum_prevhash: str) -> str:
    from gstratum.mining import bitcoin

    return bitcoin.stratum_prevhash_to_header(stratum_prevhash)[::-1].hex()


@fake_only
def test_a_node_that_stops_answering_means_no_invented_work_and_miners_stay(node, start_server):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--template-refresh", "1",
                                      "--max-template-age", "3", "--block-poll", "0.5"))
    assert get(server, "/readyz")[0] == 200
    with server.miner("patient.rig") as client:
        node.pause()
        try:
            status = wait_until(lambda: get(server, "/readyz"), lambda r: r[0] == 503, timeout=15)
            assert status[0] == 503 and "bitcoind" in status[1]["not_ready"][0]
            assert "no work from bitcoind" in wait_until(server.log, lambda t: "no work from bitcoind" in t)
            seen = client.state.jobs_received
            assert client.authorize("patient.rig") is True            # still connected and served
            client.poll()
            assert client.state.jobs_received - seen <= 1             # nothing invented while the node is silent
        finally:
            node.resume()
        assert wait_until(lambda: get(server, "/readyz"), lambda r: r[0] == 200, timeout=15)[0] == 200
        node.mine(1)
        tip = node.rpc("getbestblockhash")
        job = wait_until(lambda: (client.poll(), client.state.job)[1], lambda j: _display_prevhash(j[1]) == tip)
        assert _display_prevhash(job[1]) == tip
    assert "gives work again" in server.log()


@fake_only
def test_new_blocks_by_zmq_by_poll_when_zmq_is_dead_and_by_blocknotify(node, start_server, schema):
    """Three pools on one node: one hears ZMQ, one has a dead ZMQ endpoint and must rely on its poll, one has
    neither ZMQ nor a fast poll and is told by `python -m gstratum blocknotify`."""
    from .conftest import new_cluster_name

    cluster = new_cluster_name()
    base = ("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--payout-address", POOL_ADDRESS)
    on_zmq = start_server(*base, "--zmq-hashblock", node.zmq_endpoint, "--block-poll", "30")
    on_poll = start_server(*base, "--zmq-hashblock", "tcp://127.0.0.1:9", "--block-poll", "0.5")
    notified = start_server(*base, "--block-poll", "30", cluster=cluster)
    wait_until(lambda: node.rpc("fake_zmqsubscriptions"), lambda n: n >= 1)
    miners = [server.miner(f"trigger.{i}") for i, server in enumerate((on_zmq, on_poll, notified))]
    try:
        for client in miners:
            client.wait_for("mining.notify")
        node.mine(1)
        tip = node.rpc("getbestblockhash")
        subprocess.run([sys.executable, "-m", "gstratum", "blocknotify", tip, "--database-url", schema, "--cluster",
                        cluster], cwd=ROOT, check=True, timeout=30)
        for client in miners:
            job = wait_until(lambda: (client.poll(), client.state.job)[1], lambda j: _display_prevhash(j[1]) == tip)
            assert _display_prevhash(job[1]) == tip and job[8] is True
    finally:
        for client in miners:
            client.close()
    assert "(zmq)" in on_zmq.log() and "(poll)" in on_poll.log() and "(blocknotify)" in notified.log()


@fake_only
def test_a_node_restart_with_a_new_cookie_is_survived(node, start_server):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    with server.miner("restart.rig") as client:
        client.wait_for("mining.notify")
        old_cookie = node.cookie
        node.restart()
        assert node.cookie != old_cookie
        node.mine(1)
        tip = node.rpc("getbestblockhash")
        job = wait_until(lambda: (client.poll(), client.state.job)[1], lambda j: _display_prevhash(j[1]) == tip,
                         timeout=15)
        assert _display_prevhash(job[1]) == tip


def test_an_invalid_payout_address_stops_start_up_naming_it_and_the_chain(node, schema, tmp_path):
    result = subprocess.run([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", "0",
                             "--http-port", "0", "--database-url", schema, "--journal-dir", str(tmp_path / "j"),
                             "--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--payout-address",
                             "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4" in output and "'regtest'" in output
    assert "Traceback" not in output


@fake_only
def test_the_block_keeper_marks_confirmed_and_orphaned_blocks(node, schema, db):
    from gstratum.node.blocks import BlockKeeper
    from gstratum.node.rpc import NodeClient, Nodes
    from gstratum.storage.blocks import BlockLedger
    from gstratum.storage.db import Database
    from .conftest import new_cluster_name

    deep = node.rpc("getblockhash", 1)            # 100+ blocks deep on the fake's chain
    reorged = node.mine(1)[0]
    node.rpc("fake_reorg", 1)                     # that block is no longer on the chain
    fresh = node.mine(1)[0]
    worker, cluster = f"keeper.{time.time_ns()}", new_cluster_name()
    for block_hash, height in ((deep, 1), (reorged, node.rpc("getblockcount") - 2), (fresh, node.rpc("getblockcount"))):
        with db.cursor() as cur:
            cur.execute("INSERT INTO blocks (id, connection_id, worker, job_id, height, block_hash, header, found_at, "
                        "status, cluster) VALUES (gen_random_uuid(), gen_random_uuid(), %s, 'j', %s, %s, '', now(), "
                        "'submitted', %s)", (worker, height, block_hash, cluster))
    database = Database(schema)
    try:
        BlockKeeper(BlockLedger(database), Nodes([NodeClient(node.url, node.cookie_path)]), leadership=None,
                    cluster=cluster).run_once()
    finally:
        database.close()
    status = dict(query(db, "SELECT block_hash, status FROM blocks WHERE worker = %s", worker))
    assert status == {deep: "confirmed", reorged: "orphaned", fresh: "submitted"}

"""A found block reaches the chain or is provably dead, and nodes are judged fairly (issue 17).

Real processes throughout: the pool (`python -m gstratum run`), the strict fake bitcoind (scripts/fake_bitcoind.py,
whose chain persists in its datadir across a stop and a start on the same ports), PostgreSQL. On regtest every share
at the test difficulty is also a block, so one share from the CPU miner is one found block."""
from __future__ import annotations

import shutil
import signal
import time
import urllib.request

import pytest

from gstratum.client.work import mine
from gstratum.mining.blockstatus import STALE_DEPTH

from .conftest import new_cluster_name, query, wait_until
from .nodes import FakeNode
from .test_node_mining import POOL_ADDRESS, _display_prevhash, get, node_flags
from .test_security import app_role_url  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path):
    with FakeNode(tmp_path / "node") as started:
        yield started


def rows(db, worker: str) -> list[tuple]:
    """(hash, status, attempts, reason, results) of the worker's blocks."""
    return query(db, "SELECT block_hash, status, attempts, reason, results::text FROM blocks WHERE worker = %s "
                     "ORDER BY found_at", worker)


def metric(server, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def find_one_block(server, worker: str) -> None:
    """Connect, wait for a job, and send one share (a block on regtest); the pool answers it at once."""
    with server.miner(worker) as client:
        wait_until(lambda: (client.poll(), client.state.job)[1])
        assert mine(client, worker, duration=30, max_shares=1).accepted == 1


def on_active_chain(node, block_hash: str) -> bool:
    return node.rpc("getblockheader", block_hash)["confirmations"] >= 1


def submissions(node, block_hash: str) -> int:
    return sum(1 for entry in node.rpc("fake_submissions") if entry["hash"] == block_hash)


def test_a_block_found_while_the_node_is_down_reaches_the_chain_when_it_is_back(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    worker = f"gone.rig{time.time_ns()}"
    with server.miner(worker) as client:
        wait_until(lambda: (client.poll(), client.state.job)[1])
        node.stop()                                # its port refuses connections from now on
        assert mine(client, worker, duration=30, max_shares=1).accepted == 1
    # longer than the old retry window (three tries within about a second): four attempts take 7 s
    found = wait_until(lambda: rows(db, worker), lambda r: r and r[0][1] == "pending" and r[0][2] >= 4, timeout=30)
    assert found and found[0][1] == "pending" and found[0][2] >= 4, found
    block_hash, _, _, reason, _ = found[0]
    assert "no node accepted it yet" in reason and "Connection" in reason
    assert (server.journal_dir / "blocks" / f"{block_hash}.block").exists()    # durable before the first submit
    listed = [b for b in get(server, "/api/blocks")[1]["blocks"] if b["block_hash"] == block_hash]
    assert listed[0]["status"] == "pending" and listed[0]["attempts"] >= 4 and listed[0]["reason"] == reason
    assert metric(server, "gstratum_blocks_pending") == 1
    assert get(server, "/api/pool")[1]["blocks_pending"] == 1
    assert f"BLOCK {block_hash}" in server.log() and "is PENDING" in server.log()

    node.start()                                   # same port, same datadir: the chain it had
    settled = wait_until(lambda: rows(db, worker), lambda r: r[0][1] != "pending", timeout=45)
    assert settled[0][1] == "submitted", settled
    assert on_active_chain(node, block_hash)
    assert wait_until(lambda: (server.journal_dir / "blocks" / f"{block_hash}.block").exists(),
                      lambda present: not present) is False
    assert metric(server, "gstratum_blocks_pending") == 0
    assert metric(server, "gstratum_block_resubmissions_total") >= 4


@pytest.mark.parametrize("durable_copy", ["file", "database row"])
def test_a_pending_block_survives_a_sigkill_of_the_pool(durable_copy, node, start_server, db):
    """The pool dies (SIGKILL) while the block is pending; the next pool resubmits it from its file (same
    --journal-dir), or, when the file is gone too (another machine), the leader from the database row."""
    cluster = new_cluster_name()
    flags = node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5")
    first = start_server(*flags, cluster=cluster)
    worker = f"killed.rig{time.time_ns()}"
    with first.miner(worker) as client:
        wait_until(lambda: (client.poll(), client.state.job)[1])
        node.stop()
        assert mine(client, worker, duration=30, max_shares=1).accepted == 1
    found = wait_until(lambda: rows(db, worker), lambda r: r and r[0][1] == "pending", timeout=20)
    assert found and found[0][1] == "pending", found
    block_hash = found[0][0]
    path = first.journal_dir / "blocks" / f"{block_hash}.block"
    assert path.exists()
    first.stop(signal.SIGKILL)
    if durable_copy == "database row":
        path.unlink()
        with db.cursor() as cur:    # nobody has touched it for ten minutes: its owner is gone
            cur.execute("UPDATE blocks SET updated_at = now() - interval '10 minutes' WHERE block_hash = %s",
                        (block_hash,))
    node.start()
    second = start_server(*flags, cluster=cluster)
    settled = wait_until(lambda: rows(db, worker), lambda r: r[0][1] != "pending", timeout=45)
    assert settled[0][1] == "submitted", (settled, second.log())
    assert on_active_chain(node, block_hash)
    assert "taken over" in second.log()
    assert not path.exists()


def test_inconclusive_is_pending_until_the_node_has_it_on_its_active_chain(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    node.rpc("fake_setsubmitmode", "inconclusive")    # valid, kept, not connected: Core's `inconclusive`
    worker = f"inconclusive.rig{time.time_ns()}"
    find_one_block(server, worker)
    found = wait_until(lambda: rows(db, worker), lambda r: r and r[0][2] >= 2, timeout=20)
    block_hash, status, attempts, reason, results = found[0]
    assert status == "pending" and "inconclusive" in results, found
    assert node.rpc("getblockheader", block_hash)["confirmations"] == -1      # known, not on the active chain
    assert submissions(node, block_hash) == 1      # re-checked, not resubmitted to the node that holds it
    assert get(server, "/readyz")[0] == 200          # a pending block never stops miners
    node.rpc("fake_setsubmitmode", "normal")
    node.rpc("fake_activatebestchain")              # the node moves onto it
    settled = wait_until(lambda: rows(db, worker), lambda r: r[0][1] != "pending", timeout=45)
    assert settled[0][1] == "submitted" and "on the active chain" in settled[0][3], settled
    assert on_active_chain(node, block_hash)


def test_a_block_refused_as_invalid_is_rejected_once_and_not_retried(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    node.rpc("fake_setsubmitmode", "reject:bad-txnmrklroot")
    worker = f"refused.rig{time.time_ns()}"
    find_one_block(server, worker)
    settled = wait_until(lambda: rows(db, worker), lambda r: r and r[0][1] != "pending", timeout=20)
    block_hash, status, attempts, reason, _ = settled[0]
    assert status == "rejected" and "bad-txnmrklroot" in reason and attempts == 1, settled
    assert not (server.journal_dir / "blocks" / f"{block_hash}.block").exists()
    # the retry schedule would have resubmitted within a second: nothing more
    assert wait_until(lambda: submissions(node, block_hash), lambda n: n > 1, timeout=3) == 1


def test_a_pending_block_the_chain_moved_past_ends_stale(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    node.rpc("fake_setsubmitmode", "busy")          # HTTP 503: Core's full work queue, nothing judged
    worker = f"stale.rig{time.time_ns()}"
    find_one_block(server, worker)
    found = wait_until(lambda: rows(db, worker), lambda r: r and r[0][1] == "pending", timeout=20)
    block_hash = found[0][0]
    node.mine(1)                                     # another miner's block at our height: one deep is not dead
    after = wait_until(lambda: rows(db, worker), lambda r: "1 deep" in (r[0][3] or ""), timeout=20)
    assert after[0][1] == "pending" and "1 deep" in after[0][3], after
    node.mine(STALE_DEPTH - 1)
    settled = wait_until(lambda: rows(db, worker), lambda r: r[0][1] != "pending", timeout=45)
    assert settled[0][1] == "stale" and f"{STALE_DEPTH} deep" in settled[0][3], settled
    count = submissions(node, block_hash)
    assert wait_until(lambda: submissions(node, block_hash), lambda n: n > count, timeout=3) == count
    assert not (server.journal_dir / "blocks" / f"{block_hash}.block").exists()
    assert metric(server, "gstratum_blocks_pending") == 0


def test_stop_waits_for_a_submission_in_flight(node, start_server, db):
    server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "0.5"))
    worker = f"inflight.rig{time.time_ns()}"
    with server.miner(worker) as client:
        wait_until(lambda: (client.poll(), client.state.job)[1])
        node.rpc("fake_stall", 2)                   # the node is busy (cs_main) for 2 s: submitblock waits
        assert mine(client, worker, duration=30, max_shares=1).accepted == 1
    assert server.stop() == 0                       # SIGTERM right away
    found = rows(db, worker)
    assert found and found[0][1] == "submitted", (found, server.log())
    assert on_active_chain(node, found[0][0])


def test_a_kept_alive_connection_the_node_closed_is_retried_on_a_fresh_one(tmp_path):
    from gstratum.node.rpc import NodeClient

    with FakeNode(tmp_path / "node", "--rpcservertimeout", "0.5") as node:
        client = NodeClient(node.url, node.cookie_path)
        height = client.call("getblockcount")
        closed = node.rpc("fake_rpcstats")["idle_closed"]
        assert wait_until(lambda: node.rpc("fake_rpcstats")["idle_closed"], lambda n: n > closed) > closed
        assert client.call("getblockcount") == height       # on a fresh connection, no error
        assert client.reconnects == 1 and client.failures == 0
        client.close()


def test_the_pool_rides_on_kept_alive_connections_the_node_closes(tmp_path, start_server):
    with FakeNode(tmp_path / "node", "--rpcservertimeout", "1") as node:
        # every health check comes after the node closed the connection the previous one left idle
        server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS, "--block-poll", "2"))
        closed = wait_until(lambda: node.rpc("fake_rpcstats")["idle_closed"], lambda n: n >= 4, timeout=30)
        assert closed >= 4
        assert "failed" not in server.log() and "is down" not in server.log()
        assert metric(server, "gstratum_node_up") == 1
        assert get(server, "/readyz")[0] == 200


def test_one_slow_answer_neither_marks_the_node_down_nor_fails_work_over(tmp_path, start_server):
    with FakeNode(tmp_path / "a") as first, FakeNode(tmp_path / "b") as second:
        server = start_server("--bitcoind", first.url_with_auth, "--bitcoind", second.url_with_auth,
                              "--block-poll", "0.5", "--difficulty", "0.00001", "--payout-address", POOL_ADDRESS)
        tip_a = first.rpc("getbestblockhash")
        with server.miner("slow.rig") as client:
            job = wait_until(lambda: (client.poll(), client.state.job)[1])
            assert _display_prevhash(job[1]) == tip_a
            first.rpc("fake_stall", 2)       # cs_main held for 2 s, as while Core connects a block
            seen = client.state.jobs_received
            started = time.monotonic()
            assert first.rpc("getblockcount") >= 0      # returns once the node answers again
            assert time.monotonic() - started >= 1.5    # health checks (every 0.5 s) did meet the stall
            up = wait_until(lambda: metric(server, "gstratum_node_up"), timeout=2)
            client.poll()
            assert client.state.jobs_received == seen and _display_prevhash(client.state.job[1]) == tip_a
        log = server.log()
        assert up == 1 and "now using bitcoind" not in log and "is down" not in log, log


def test_the_keeper_decides_from_the_nodes_that_have_the_chain(tmp_path, schema, db):
    """A lagging standby says nothing (the old keeper orphaned a good block on the only node that answered); a
    block orphaned by a reorg comes back to submitted, then confirmed, when the chain reorganises back."""
    from gstratum.node.blocks import BlockKeeper
    from gstratum.node.rpc import NodeClient, Nodes
    from gstratum.storage.blocks import BlockLedger
    from gstratum.storage.db import Database

    main = FakeNode(tmp_path / "main")
    main.stop()
    (tmp_path / "standby" / "regtest").mkdir(parents=True)
    shutil.copy(tmp_path / "main" / "regtest" / "fakechain.json", tmp_path / "standby" / "regtest")
    main.start()
    standby = FakeNode(tmp_path / "standby")        # the same chain, then it lags behind
    database = Database(schema)
    try:
        main.mine(2)
        ours = main.mine(1)[0]
        height = main.rpc("getblockcount")
        parent = main.rpc("getblockheader", ours)["previousblockhash"]
        cluster = new_cluster_name()
        with db.cursor() as cur:
            cur.execute("INSERT INTO blocks (id, connection_id, worker, job_id, height, block_hash, prevhash, header, "
                        "found_at, status, cluster) VALUES (gen_random_uuid(), gen_random_uuid(), 'keeper.rig', 'j', "
                        "%s, %s, %s, '', now(), 'submitted', %s)", (height, ours, parent, cluster))
        keeper = BlockKeeper(BlockLedger(database), Nodes([NodeClient(main.url, main.cookie_path),
                                                           NodeClient(standby.url, standby.cookie_path)]),
                             leadership=None, cluster=cluster)

        def status() -> str:
            return query(db, "SELECT status FROM blocks WHERE block_hash = %s", ours)[0][0]

        assert standby.rpc("getblockcount") < height
        main.stop()                                   # only the lagging standby answers
        keeper.run_once()
        assert status() == "submitted"
        standby.mine(5)                              # past our height, on a branch that never saw our parent
        keeper.run_once()
        assert status() == "submitted"
        main.start()
        keeper.run_once()
        assert status() == "submitted"

        replaced = main.rpc("fake_reorg", 1)[0]      # another block at our height
        keeper.run_once()
        assert status() == "orphaned"
        main.rpc("invalidateblock", replaced)        # the chain goes back to ours
        assert main.rpc("getbestblockhash") == ours
        keeper.run_once()
        assert status() == "submitted"
        main.rpc("fake_reorg", 1)
        keeper.run_once()
        assert status() == "orphaned"
        main.rpc("invalidateblock", main.rpc("getblockhash", height))
        assert main.rpc("getbestblockhash") == ours
        main.mine(99)                                # now 100 deep: confirmed straight from orphaned
        keeper.run_once()
        assert status() == "confirmed"
    finally:
        database.close()
        standby.stop()
        main.stop()


def test_status_changes_go_through_one_transaction_as_the_least_privilege_role(app_role_url, db):
    """BlockLedger.change checks the transition table, inserts a missing row, and runs hooks in its transaction
    (a payout scheme's balance changes go there): a failing hook leaves the status as it was."""
    import uuid

    from gstratum.mining.blockstatus import BlockStatus as S, BlockRecord
    from gstratum.storage.blocks import BlockLedger, Change
    from gstratum.storage.db import Database

    seen = []

    def hook(cur, row_id, block_hash, old, new, block=None):
        cur.execute("SELECT status FROM blocks WHERE id = %s", (row_id,))
        seen.append((old, new, cur.fetchone()[0]))
        if new is S.ORPHANED and len(seen) == 3:
            raise RuntimeError("the payout side refused")

    raw = bytes(80) + b"\x01"
    block = BlockRecord(row_id=uuid.uuid4().hex, block_hash=uuid.uuid4().hex * 2, height=7, prevhash="ab" * 32,
                       block=raw, header=raw[:80].hex(), worker="ledger.rig", username="ledger",
                       connection_id=uuid.uuid4().hex, job_id="j", reward=1, found_at=time.time(),
                       cluster=new_cluster_name())
    database = Database(app_role_url)
    try:
        ledger = BlockLedger(database, hooks=[hook])
        assert ledger.change(block.row_id, S.PENDING, reason="nodes down", attempts=1, block=block) == \
            Change(None, S.PENDING, True)
        assert ledger.change(block.row_id, S.SUBMITTED, results={"a": "accepted"}, attempts=2, block=block) == \
            Change(S.PENDING, S.SUBMITTED, True)
        assert ledger.change(block.row_id, S.PENDING, block=block) == Change(S.SUBMITTED, S.SUBMITTED, False)
        with pytest.raises(RuntimeError):
            ledger.change(block.row_id, S.ORPHANED)
        assert ledger.change(block.row_id, S.ORPHANED) == Change(S.SUBMITTED, S.ORPHANED, True)
        assert ledger.change(block.row_id, S.CONFIRMED) == Change(S.ORPHANED, S.CONFIRMED, True)
        assert ledger.change(block.row_id, S.ORPHANED) == Change(S.CONFIRMED, S.CONFIRMED, False)
    finally:
        database.close()
    assert [(old, new) for old, new, _ in seen] == [(None, S.PENDING), (S.PENDING, S.SUBMITTED),
                                                    (S.SUBMITTED, S.ORPHANED), (S.SUBMITTED, S.ORPHANED),
                                                    (S.ORPHANED, S.CONFIRMED)]
    assert all(status == new.value for _, new, status in seen)     # hooks see the change they act on
    assert query(db, "SELECT status, attempts, results::text, block_bytes = %s FROM blocks WHERE id = %s",
                 raw, block.row_id) == [("confirmed", 2, '{"a": "accepted"}', True)]

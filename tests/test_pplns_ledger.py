"""The PPLNS ledger against a real PostgreSQL (storage/pplns.py): the window read from pplns_shares, a job's split,
the block's split recorded with its row, balances moved in the transaction that accepts a block and moved back when
it is orphaned (and again when it comes back), and a job built on our own block that waits for its balances."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from gstratum.mining import pplns
from gstratum.mining.blockstatus import BlockRecord, BlockStatus as S
from gstratum.storage.blocks import BlockLedger
from gstratum.storage.db import Database
from gstratum.storage.pplns import APPLY_WAIT, PplnsLedger, PplnsSettings

from .conftest import new_cluster_name, query

pytestmark = pytest.mark.integration
POOL = "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9"
R = 5_000_000_000


@pytest.fixture
def ledger(schema):
    database = Database(schema)
    cluster = new_cluster_name()
    settings = PplnsSettings(payout_address=POOL, pool_fee=Decimal("2"), window_difficulty=Decimal("0.0001"),
                             min_output=10_000, max_outputs=2)
    yield PplnsLedger(database, cluster, settings), BlockLedger(database), database, cluster
    database.close()


def credit(db, cluster: str, shares: list[tuple[str, str]]) -> None:
    """Accepted shares as the writer credits them: strictly increasing times."""
    base = datetime.now(timezone.utc)
    with db.cursor() as cur:
        for i, (address, difficulty) in enumerate(shares):
            cur.execute("INSERT INTO pplns_shares (cluster, submitted_at, share_id, address, worker, difficulty) "
                        "VALUES (%s, %s, %s, %s, %s, %s::numeric)", (cluster, base + timedelta(microseconds=i),
                                                                   uuid.uuid4().hex, address, address + ".w", difficulty))


def found(payout, cluster: str) -> BlockRecord:
    raw = bytes(80) + b"\x01"
    return BlockRecord(row_id=uuid.uuid4().hex, block_hash=uuid.uuid4().hex * 2, height=payout.height,
                       prevhash="ab" * 32, block=raw, header=raw[:80].hex(), worker="a.w", username="a",
                       connection_id=uuid.uuid4().hex, job_id="j", reward=R, found_at=time.time(), cluster=cluster,
                       payouts=payout.record())


def balances(db, cluster: str) -> dict[str, int]:
    return dict(query(db, "SELECT address, balance FROM balances WHERE cluster = %s AND balance <> 0", cluster))


def test_a_blocks_balance_changes_follow_its_fate(ledger, db):
    pool, blocks, database, cluster = ledger
    blocks.hooks = (pool.on_block_status,)
    # a (5 shares), b (3), c (2) of 0.00001: the window of 0.0001 holds all ten
    credit(db, cluster, [("a", "0.00001")] * 5 + [("b", "0.00001")] * 3 + [("c", "0.00001")] * 2)
    payout = pool.job_payout(R, 0x207FFFFF, "00" * 32, 101, time.time())
    split = payout.split
    assert split.conserves() and payout.window.shares == 10 and payout.balances_paid
    expected = pplns.split(R, "2", {"a": Decimal("0.00005"), "b": Decimal("0.00003"), "c": Decimal("0.00002")}, {},
                           10_000, 2, payout_address=POOL)
    assert split.outputs == expected.outputs and dict(split.deltas) == dict(expected.deltas)
    assert dict(split.deltas)["c"] == split.credits["c"] > 0          # two outputs: c is carried

    block = found(payout, cluster)
    blocks.change(block.row_id, S.PENDING, block=block)               # before the first submitblock
    assert balances(db, cluster) == {}                                # not accepted: nothing moved
    rows = query(db, "SELECT address, fee, credit, paid FROM block_payouts WHERE block_hash = %s ORDER BY address",
                 block.block_hash)
    assert {(a, fee, c, p) for a, fee, c, p in rows} == \
        {(a, False, split.credits[a], split.paid.get(a, 0)) for a in split.credits} | \
        {(POOL, True, 0, split.outputs[-1].amount)}

    # a job on our own block, whose balance changes are not applied yet: it waits, then pays no balance
    started = time.monotonic()
    waiting = pool.job_payout(R, 0x207FFFFF, block.block_hash, 102, time.time())
    assert time.monotonic() - started >= APPLY_WAIT * 0.9 and not waiting.balances_paid
    assert waiting.split.balances == {}

    blocks.change(block.row_id, S.SUBMITTED)                          # accepted: one transaction
    assert balances(db, cluster) == {"c": split.credits["c"]}
    after = pool.job_payout(R, 0x207FFFFF, block.block_hash, 102, time.time())
    assert after.balances_paid and after.split.balances == {"c": split.credits["c"]}

    blocks.change(block.row_id, S.ORPHANED)                           # orphaned: reversed
    assert balances(db, cluster) == {}
    blocks.change(block.row_id, S.SUBMITTED)                          # back on the active chain: applied again
    assert balances(db, cluster) == {"c": split.credits["c"]}
    blocks.change(block.row_id, S.CONFIRMED)                          # 100 deep: nothing moves
    assert balances(db, cluster) == {"c": split.credits["c"]}
    assert query(db, "SELECT balances_applied FROM blocks WHERE id = %s", block.row_id) == [(True,)]


def test_the_window_is_read_back_and_followed(ledger, db):
    pool, _, _, cluster = ledger
    credit(db, cluster, [("a", "0.00004"), ("b", "0.00004"), ("a", "0.00004")])     # 0.00012 > 0.0001: b and a
    first = pool.job_payout(R, 0x207FFFFF, "00" * 32, 101, time.time())
    # newest first: a, b (0.00008, below the target), then the oldest a reaches it and is counted too
    assert dict(first.window.weights) == {"a": Decimal("0.00008"), "b": Decimal("0.00004")}
    assert first.window.start == pplns.EPOCH                                       # every share counts
    credit(db, cluster, [("c", "0.00009")])
    unchanged = pool.job_payout(R, 0x207FFFFF, "00" * 32, 101, time.time())
    assert unchanged.window == first.window       # a job's split reads nothing: the window is prepared ahead
    pool.catch_up(first.window.target)            # what the follow loop does every second: followed, not reloaded
    second = pool.job_payout(R, 0x207FFFFF, "00" * 32, 101, time.time())
    assert dict(second.window.weights) == {"c": Decimal("0.00009"), "a": Decimal("0.00004")}
    assert second.window.start > first.window.start                                # b's time: the newest not counted

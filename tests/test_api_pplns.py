"""What the HTTP side shows of PPLNS (issue 18): /api/blocks payouts and window, /api/balances, /api/pplns,
/api/users/ADDRESS with what the miner is owed and why, and /users/ADDRESS in ckpool's user-file shape; checked
against rows put in the tables the accounting fills, on a real server and PostgreSQL."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from gstratum.client.work import mine
from gstratum.ops import ckpool
from gstratum.storage import rollup

from .conftest import new_cluster_name, query, wait_rows

A = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"          # bech32: a URL may spell it in upper case
B = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"                  # base58: case-sensitive
C = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
D = "bc1sw50qgdz25j"
E = "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"
POOL = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"
UNKNOWN = "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y"
REWARD = 312_500_000

SPLIT = {"job_id": "6a1", "created_at": "2020-01-02T03:04:05.123456+00:00", "height": 800_002, "reward": REWARD,
         "fee": 7_812_500, "pool_fee_percent": "2.5",
         "window": {"start": "2020-01-02T02:00:00+00:00", "end": "2020-01-02T03:04:05.5+00:00", "total": "4",
                    "shares": 8, "target": "1000", "complete": False},
         "miners": [{"address": A, "weight": "3", "share": 0.75, "credit": 228_515_625, "balance": 0,
                     "due": 228_515_625, "paid": 228_515_625},
                    {"address": D, "weight": "0", "share": 0.0, "credit": 0, "balance": 123_456_789,
                     "due": 123_456_789, "paid": 76_176_875},
                    {"address": C, "weight": "1", "share": 0.25, "credit": 76_171_875, "balance": 5000,
                     "due": 76_176_875, "paid": 0}],
         "outputs": [{"address": A, "amount": 228_515_625, "fee": False},
                     {"address": D, "amount": 76_176_875, "fee": False},
                     {"address": POOL, "amount": 7_807_500, "fee": True}]}


def fetch(server, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def get(server, path: str):
    status, body, _ = fetch(server, path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def status_of(server, path: str) -> int:
    return fetch(server, path)[0]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def insert_block(cur, cluster: str, block_hash: str, height: int, found_at: str, status: str,
                 window: tuple | None = None, payouts: list[tuple] = ()) -> None:
    start, end, total, shares = window or (None, None, None, None)
    cur.execute("INSERT INTO blocks (id, connection_id, worker, job_id, height, block_hash, header, found_at, status, "
                "cluster, reward, username, window_start, window_end, window_total, window_shares, balances_applied) "
                "VALUES (gen_random_uuid(), gen_random_uuid(), %s, 'j', %s, %s, '00', %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s)", (f"{A}.rig1", height, block_hash, found_at, status, cluster, REWARD, A, start, end, total,
                            shares, window is not None))
    for address, fee, weight, credit, balance, paid, position in payouts:
        cur.execute("INSERT INTO block_payouts (block_hash, cluster, address, fee, weight, credit, balance, paid, "
                    "position) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (block_hash, cluster, address, fee, weight, credit, balance, paid, position))


def block_hash(tag: str) -> str:
    return (tag.encode().hex() + "%016x" % time.time_ns()).ljust(64, "0")[:64]


def test_blocks_balances_split_and_a_miners_page_show_the_pplns_accounting(start_server, db):
    cluster, other = new_cluster_name(), new_cluster_name()
    older, newer, plain, elsewhere = (block_hash(t) for t in ("older", "newer", "plain", "other"))
    with db.cursor() as cur:
        # 2.5 % fee of 312,500,000: D = 304,687,500 split 2.5 : 1; A paid, B carried (one payee only), C's balance
        # too small to pay; the payout address takes what is left
        insert_block(cur, cluster, older, 800_000, "2020-01-01 10:00:00.25+00", "confirmed",
                     ("2020-01-01 09:00:00+00", "2020-01-01 09:59:59.999999+00", "3.50", 7),
                     [(A, False, "2.5", 217_633_928, 0, 217_633_928, 0), (B, False, "1", 87_053_571, 0, 0, None),
                      (C, False, "0", 0, 5000, 0, None), (POOL, True, "0", 0, 0, 94_866_072, 1)])
        # B paid its balance and its credit; the fee output last
        insert_block(cur, cluster, newer, 800_001, "2020-01-01 11:00:00+00", "submitted",
                     ("2020-01-01 10:00:00.25+00", "2020-01-01 10:59:00+00", "0.00002000", 2),
                     [(B, False, "0.00001", 100_000_000, 87_053_571, 187_053_571, 0),
                      (A, False, "0.00001", 50_000_000, 0, 50_000_000, 1), (POOL, True, "0", 0, 0, 75_446_429, 2)])
        insert_block(cur, cluster, plain, 800_002, "2020-01-01 12:00:00+00", "candidate")   # not a PPLNS block
        insert_block(cur, other, elsewhere, 800_003, "2020-01-01 13:00:00+00", "submitted",
                     ("2020-01-01 12:00:00+00", "2020-01-01 12:59:00+00", "1", 1), [(A, False, "1", 1, 0, 1, 0)])
        for pool, address, balance in ((cluster, A, 0), (cluster, B, 0), (cluster, C, 5000),
                                       (cluster, D, 123_456_789), (cluster, E, -42), (other, A, 99)):
            cur.execute("INSERT INTO balances (cluster, address, balance, updated_at) VALUES (%s, %s, %s, now())",
                        (pool, address, balance))
        cur.execute("INSERT INTO pplns_current (cluster, job_id, created_at, split) VALUES (%s, '6a1', now(), %s)",
                    (cluster, json.dumps(SPLIT)))
    server = start_server("--notify-interval", "30", cluster=cluster)

    blocks = get(server, "/api/blocks")["blocks"]
    assert [b["block_hash"] for b in blocks] == [plain, newer, older]            # this pool's blocks, newest first
    assert blocks[0]["payouts"] is None and blocks[0]["window"] is None
    assert blocks[1]["payouts"] == [{"address": B, "amount": 187_053_571, "fee": False},
                                    {"address": A, "amount": 50_000_000, "fee": False},
                                    {"address": POOL, "amount": 75_446_429, "fee": True}]
    assert blocks[1]["window"] == {"start": "2020-01-01T10:00:00.250000+00:00",
                                   "end": "2020-01-01T10:59:00.000000+00:00", "total": "0.00002", "shares": 2}
    assert blocks[2]["payouts"] == [{"address": A, "amount": 217_633_928, "fee": False},
                                    {"address": POOL, "amount": 94_866_072, "fee": True}]
    assert sum(p["amount"] for p in blocks[2]["payouts"]) == REWARD
    assert blocks[2]["window"] == {"start": "2020-01-01T09:00:00.000000+00:00",
                                   "end": "2020-01-01T09:59:59.999999+00:00", "total": "3.5", "shares": 7}
    assert blocks[2]["found_at"] == at("2020-01-01T10:00:00.25+00:00").timestamp()     # the existing fields stay
    assert (blocks[2]["height"], blocks[2]["status"], blocks[2]["reward"], blocks[2]["user"]) == \
        (800_000, "confirmed", REWARD, A)
    assert [b["block_hash"] for b in get(server, "/api/pool")["blocks"]] == [plain, newer, older]

    one = get(server, f"/api/blocks/{older}")
    assert one["payouts"] == blocks[2]["payouts"] and one["window"] == blocks[2]["window"]
    assert one["split"] == [
        {"address": A, "fee": False, "weight": "2.5", "credit": 217_633_928, "balance_before": 0, "paid": 217_633_928,
         "carried": 0, "position": 0},
        {"address": POOL, "fee": True, "weight": "0", "credit": 0, "balance_before": 0, "paid": 94_866_072,
         "carried": 0, "position": 1},
        {"address": B, "fee": False, "weight": "1", "credit": 87_053_571, "balance_before": 0, "paid": 0,
         "carried": 87_053_571, "position": None},
        {"address": C, "fee": False, "weight": "0", "credit": 0, "balance_before": 5000, "paid": 0, "carried": 0,
         "position": None}]
    assert status_of(server, f"/api/blocks/{elsewhere}") == 404                     # another pool's block

    # the body is the list itself; largest first, zero balances left out, a debt last; only this pool's
    assert get(server, "/api/balances") == [{"address": D, "balance": 123_456_789}, {"address": C, "balance": 5000},
                                            {"address": E, "balance": -42}]

    current = get(server, "/api/pplns")
    assert current["window"] == {"start": "2020-01-02T02:00:00.000000+00:00", "end": "2020-01-02T03:04:05.500000+00:00",
                                 "total": "4", "shares": 8, "target": "1000", "complete": False}
    assert current["miners"] == SPLIT["miners"] and current["outputs"] == SPLIT["outputs"]
    assert (current["job_id"], current["height"], current["reward"], current["fee"], current["pool_fee_percent"]) == \
        ("6a1", 800_002, REWARD, 7_812_500, "2.5")
    assert current["created_at"] == "2020-01-02T03:04:05.123456+00:00"

    window = {"start": "2020-01-02T02:00:00.000000+00:00", "end": "2020-01-02T03:04:05.500000+00:00", "total": "4"}
    user = get(server, f"/api/users/{A.upper()}")            # bech32 in upper case: the same address
    assert user == {
        "user": A, "workers": [], "connections": 0, "accepted": 0, "rejected": 0, "hashrate": 0.0, "best_share": 0.0,
        "best_share_since_block": 0.0,
        "pplns": {"window": {"weight": "3", "share": 0.75, **window},
                  "next_block": {"credit": 228_515_625, "due": 228_515_625, "paid": 228_515_625}, "balance": 0,
                  "payouts": [{"block_hash": newer, "height": 800_001, "status": "submitted",
                               "found_at": "2020-01-01T11:00:00.000000+00:00", "credit": 50_000_000,
                               "balance_before": 0, "paid": 50_000_000, "carried": 0, "applied": True, "fee": False},
                              {"block_hash": older, "height": 800_000, "status": "confirmed",
                               "found_at": "2020-01-01T10:00:00.250000+00:00", "credit": 217_633_928,
                               "balance_before": 0, "paid": 217_633_928, "carried": 0, "applied": True,
                               "fee": False}]}}
    assert get(server, f"/api/users/{A}") == user

    owed = get(server, f"/api/users/{B}")["pplns"]          # carried by the older block, paid by the newer one
    assert owed == {"window": {"weight": "0", "share": 0.0, **window},
                    "next_block": {"credit": 0, "due": 0, "paid": 0}, "balance": 0,
                    "payouts": [{"block_hash": newer, "height": 800_001, "status": "submitted",
                                 "found_at": "2020-01-01T11:00:00.000000+00:00", "credit": 100_000_000,
                                 "balance_before": 87_053_571, "paid": 187_053_571, "carried": -87_053_571,
                                 "applied": True, "fee": False},
                                {"block_hash": older, "height": 800_000, "status": "confirmed",
                                 "found_at": "2020-01-01T10:00:00.250000+00:00", "credit": 87_053_571,
                                 "balance_before": 0, "paid": 0, "carried": 87_053_571, "applied": True,
                                 "fee": False}]}
    assert get(server, f"/api/users/{D.upper()}")["pplns"] == {
        "window": {"weight": "0", "share": 0.0, **window},
        "next_block": {"credit": 0, "due": 123_456_789, "paid": 76_176_875}, "balance": 123_456_789, "payouts": []}
    assert get(server, f"/api/users/{E}")["pplns"]["balance"] == -42
    # the pool's payout address: known by its fee outputs only (no balance row, no miner of the split)
    fees = get(server, f"/api/users/{POOL}")["pplns"]
    assert [(p["block_hash"], p["paid"], p["carried"], p["fee"]) for p in fees["payouts"]] == \
        [(newer, 75_446_429, 0, True), (older, 94_866_072, 0, True)]
    assert fees["balance"] == 0 and fees["next_block"] == {"credit": 0, "due": 0, "paid": 0}
    assert status_of(server, f"/api/users/{B.lower()}") == 404          # base58 is case-sensitive: another text
    assert status_of(server, f"/api/users/{UNKNOWN}") == 404

    status, body, content_type = fetch(server, f"/users/{A.upper()}")   # known, but has never mined: all zeros
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {"hashrate1m": "0", "hashrate5m": "0", "hashrate1hr": "0", "hashrate1d": "0",
                                "hashrate7d": "0", "lastshare": 0, "workers": 0, "shares": 0, "bestshare": 0.0,
                                "bestever": 0, "authorised": 0, "worker": []}
    assert status_of(server, f"/users/{UNKNOWN}") == 404


def test_without_any_pplns_data_every_endpoint_answers_with_zeros(start_server):
    """A pool that is not PPLNS (or has no job yet): empty lists and zeros, never a 500; a login known only by its
    live connection is a user (200), an address nobody ever used is a 404."""
    server = start_server("--notify-interval", "30")
    assert get(server, "/api/blocks") == {"blocks": []}
    assert get(server, "/api/balances") == []
    assert get(server, "/api/pplns") == {
        "job_id": None, "created_at": None, "height": None, "reward": 0, "fee": 0, "pool_fee_percent": "0",
        "window": {"start": None, "end": None, "total": "0", "shares": 0, "target": "0", "complete": False},
        "miners": [], "outputs": []}
    for path in (f"/api/users/{UNKNOWN}", f"/users/{UNKNOWN}", f"/api/blocks/{'0' * 64}", "/api/users/", "/users/"):
        assert status_of(server, path) == 404, path
    name = f"live{time.time_ns()}"
    with server.miner(f"{name}.rig"):
        user = get(server, f"/api/users/{name}")
        ckpool_user = get(server, f"/users/{name}")
    assert [(w["name"], w["connections"], w["accepted"]) for w in user["workers"]] == [(f"{name}.rig", 1, 0)]
    assert user["pplns"] == {"window": {"weight": "0", "share": 0.0, "total": "0", "start": None, "end": None},
                             "next_block": {"credit": 0, "due": 0, "paid": 0}, "balance": 0, "payouts": []}
    assert ckpool_user["workers"] == 1 and ckpool_user["worker"] == [] and ckpool_user["shares"] == 0


# ckpool's user file, as src/stratifier.c (ckpool by Con Kolivas, statsupdate()) writes it with
#   JSON_CPACK(val, "{ss,ss,ss,ss,ss,si,si,sI,sf,sI,sI}", "hashrate1m", suffix1, ..., "hashrate7d", suffix10080,
#              "lastshare", user->last_share.tv_sec, "workers", ..., "shares", user->shares,
#              "bestshare", user->best_diff, "bestever", user->best_ever, "authorised", user->auth_time);
# and for each worker "{ss,ss,ss,ss,ss,ss,si,sI,sf,sI}": "workername", the five hashrates, "lastshare", "shares",
# "bestshare", "bestever"; then json_object_set_new_nocheck(val, "worker", user_array). s: string, i/I: integer,
# f: real. ckstats (mrv777/ckstats scripts/updateUsers.ts) reads shares and bestever with BigInt(), which refuses a
# fraction, and parseFloat(bestshare).
CKPOOL_USER = {"hashrate1m": str, "hashrate5m": str, "hashrate1hr": str, "hashrate1d": str, "hashrate7d": str,
               "lastshare": int, "workers": int, "shares": int, "bestshare": float, "bestever": int,
               "authorised": int, "worker": list}
CKPOOL_WORKER = {"workername": str, "hashrate1m": str, "hashrate5m": str, "hashrate1hr": str, "hashrate1d": str,
                 "hashrate7d": str, "lastshare": int, "shares": int, "bestshare": float, "bestever": int}
SUFFIXED = re.compile(r"^(\d+|\d(\.\d+)?(e\+\d+)?[KMGTPE]|\d\d(\.\d)?[KMGTPE]|\d\d\d[KMGTPE])$")   # %d or %.3g + SI


def from_suffix(text: str) -> float:
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def test_ckpool_user_file_has_ckpools_fields_types_and_values(start_server, db):
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2")
    name = f"ck{time.time_ns()}"
    logins = [f"{name}.rig1", f"{name}.rig2"]
    with server.miner(logins[0]) as first, server.miner(logins[1]) as second:
        accepted = [mine(first, logins[0], duration=1.5).accepted, mine(second, logins[1], duration=1.5).accepted]
        for login, count in zip(logins, accepted):
            assert wait_rows(db, "SELECT sum(accepted) FROM worker_minutes WHERE worker = %s", login,
                             expect=[(count,)]) == [(count,)]
        status, body, content_type = fetch(server, f"/users/{name}")
        api_user = get(server, f"/api/users/{name}")
    assert status == 200 and content_type == "application/json"
    assert body.startswith(b'{\n "hashrate1m": "') and body.endswith(b"}\n")     # ckpool's JSON_INDENT(1), JSON_EOL
    user = json.loads(body)
    assert list(user) == list(CKPOOL_USER)
    assert {key: type(value) for key, value in user.items()} == CKPOOL_USER
    assert [w["workername"] for w in user["worker"]] == logins
    for worker in user["worker"]:
        assert list(worker) == list(CKPOOL_WORKER)
        assert {key: type(value) for key, value in worker.items()} == CKPOOL_WORKER
    for entry in (user, *user["worker"]):
        for key in ("hashrate1m", "hashrate5m", "hashrate1hr", "hashrate1d", "hashrate7d"):
            assert SUFFIXED.match(entry[key]), (key, entry[key])

    # the values, from the database
    (difficulty, last, best_ever), = query(db, "SELECT sum(difficulty_sum), extract(epoch FROM max(last_share)), "
                                               "max(best_achieved) FROM worker_minutes WHERE worker = ANY(%s)", logins)
    (authorised,), = query(db, "SELECT extract(epoch FROM min(requested_at)) FROM authorizations WHERE authorized "
                               "AND worker = ANY(%s)", logins)
    since_block = max(since for _, _, since in query(db, rollup.BEST_SHARES, logins))
    assert user["workers"] == 2                                   # both connections were open
    assert user["shares"] == int(difficulty) and user["lastshare"] == int(last)
    assert user["authorised"] == int(authorised) and 0 < user["authorised"] <= user["lastshare"]
    assert user["bestever"] == int(best_ever) and user["bestshare"] == since_block > 0
    for label, seconds in rollup.SPAN_WINDOWS.items():            # every share of the test is inside 1 h and more
        if seconds >= 3600:
            low, high = (float(difficulty) * 2**32 / s for s in (seconds + 60, seconds))
            assert low * 0.99 - 1 <= from_suffix(user[f"hashrate{label}"]) <= high * 1.01, (label, user)
    assert from_suffix(user["hashrate1m"]) > 0
    for worker, count in zip(user["worker"], accepted):
        (worker_difficulty, worker_last), = query(db, "SELECT sum(difficulty_sum), extract(epoch FROM "
                                                      "max(last_share)) FROM worker_minutes WHERE worker = %s",
                                                  worker["workername"])
        assert worker["shares"] == int(worker_difficulty) and worker["lastshare"] == int(worker_last)
        assert count > 0

    # /api/users keeps its fields: workers with their counts, totals, and a pplns part of zeros
    assert sorted((w["name"], w["accepted"], w["connections"]) for w in api_user["workers"]) == \
        [(logins[0], accepted[0], 1), (logins[1], accepted[1], 1)]
    assert api_user["accepted"] == sum(accepted) and api_user["hashrate"] > 0
    assert api_user["best_share"] == pytest.approx(float(best_ever))
    assert api_user["pplns"]["payouts"] == [] and api_user["pplns"]["balance"] == 0


def test_ckpool_hashrates_are_formatted_like_ckpools_suffix_string():
    """libckpool.c suffix_string(val, buf, 16, 0): "%d" below 1000, else "%.3g" and an SI letter."""
    cases = {0.0: "0", 0.7: "0", 999.9: "999", 1000.0: "1K", 2_180_000_000_000.0: "2.18T", 15_500.0: "15.5K",
             999_999.5: "1e+03K", 123_456_789.0: "123M", 4.2e15: "4.2P", 1.5e18: "1.5E", 7.0e9: "7G"}
    assert {value: ckpool.suffix_string(value) for value in cases} == cases


def test_ckpool_user_document_adds_up_its_workers_and_lists_the_recent_ones():
    now = 1_700_000_000.0
    rates = {"1m": 2.0e12, "5m": 1.5e12, "1hr": 1.0e12, "1d": 5.0e11, "7d": 1.0e11}
    workers = [ckpool.WorkerStats("a.x", rates, now - 30, 1234.9, 50.5, 7000.9),
               ckpool.WorkerStats("a.old", rates, now - ckpool.WORKER_IDLE_SECONDS - 1, 10.0, 0.0, 9000.0),
               ckpool.WorkerStats("a", {}, None, 0.0, 0.0, 0.0)]        # connected, no share yet
    document = ckpool.user_document(workers, 3, now - 3600.7, now)
    assert document == {"hashrate1m": "4T", "hashrate5m": "3T", "hashrate1hr": "2T", "hashrate1d": "1T",
                        "hashrate7d": "200G", "lastshare": int(now - 30), "workers": 3, "shares": 1244,
                        "bestshare": 50.5, "bestever": 9000, "authorised": int(now - 3600.7),
                        "worker": [{"workername": "a.x", "hashrate1m": "2T", "hashrate5m": "1.5T", "hashrate1hr": "1T",
                                    "hashrate1d": "500G", "hashrate7d": "100G", "lastshare": int(now - 30),
                                    "shares": 1234, "bestshare": 50.5, "bestever": 7000}]}
    assert ckpool.encode(document).decode().count("\n") > 10

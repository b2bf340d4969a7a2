"""Every mining.submit path on the sans-IO session, in the style of h11's paired connections: a miner end and the
session exchange bytes, no socket, no database. (Two socket smoke tests of the same paths live in
test_shares_live.py.)"""
from __future__ import annotations

import ujson

from gstratum.client.miner import find_share
from gstratum.mining import bitcoin
from gstratum.mining.shares import HeaderTemplate
from gstratum.protocol.session import POOL_VERSION_MASK
from gstratum.mining.vardiff import VardiffPolicy

from .sessions import Harness

NOW = 1_700_000_000.0


class Pair:
    """A session and the miner talking to it: `send` turns a call into the bytes a miner writes, feeds them to the
    session and decodes the bytes it answers with."""

    def __init__(self, difficulty: float = 1e-6, nbits: int = 0x1D00FFFF, vardiff: VardiffPolicy | None = None,
                 harness: Harness | None = None, connection_id: str = "0" * 31 + "1"):
        self.now = NOW
        self.clock = lambda: self.now
        self.harness = harness or Harness(difficulty=difficulty, clock=lambda: self.now, nbits=nbits, vardiff=vardiff)
        self.rows = self.harness.rows
        self.blocks = self.harness.blocks
        self.book = self.harness.book
        self.source = self.harness.source
        self.metrics = self.harness.metrics
        self.session = self.harness.session(connection_id, "192.0.2.1")
        self.next_id = 0
        self.notifications: list[dict] = []
        self.extranonce1 = b""

    def send(self, method: str, params: list) -> dict | None:
        self.next_id += 1
        line = ujson.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        reply = None
        for out in self.harness.feed(self.session, line):
            assert out.endswith(b"\n") and out.count(b"\n") == 1
            message = ujson.loads(out)
            if message.get("method") is not None:
                self.notifications.append(message)
            else:
                assert message["id"] == self.next_id
                reply = message
        return reply

    def subscribe_and_authorize(self, worker: str = "w") -> None:
        result = self.send("mining.subscribe", ["pair/1"])["result"]
        self.extranonce1 = bytes.fromhex(result[1])
        assert self.send("mining.authorize", [worker, "x"])["result"] is True

    def deliver(self, clean: bool = False):
        """The pool makes a new job and broadcasts it to this miner."""
        job = self.source.next_job(clean, self.book.current)
        self.book.add(job)
        for out in self.session.broadcast_lines(job):
            self.notifications.append(ujson.loads(out))
        return job

    def job(self, index: int = -1) -> list:
        return [m for m in self.notifications if m["method"] == "mining.notify"][index]["params"]

    def difficulty(self) -> float:
        return [m for m in self.notifications if m["method"] == "mining.set_difficulty"][-1]["params"][0]

    def share(self, params: list, difficulty: float, extranonce2: bytes = b"\0\0\0\1", version: int | None = None,
              miss: bool = False) -> tuple[str, str]:
        """(nonce, ntime) of a share for the job in `params`: meeting `difficulty`, or (miss) missing it."""
        job_id, prevhash, coinb1, coinb2, branch, version_hex, nbits, ntime, _ = params
        template = HeaderTemplate.from_stratum(prevhash, coinb1, coinb2, branch, version_hex, nbits)
        version = int(version_hex, 16) if version is None else version
        target = bitcoin.target_from_difficulty(difficulty)
        nonce = 0
        while True:
            found = find_share(template, self.extranonce1, extranonce2, ntime, version, 2**256 - 1 if miss else target,
                               start_nonce=nonce, max_tries=2_000_000)
            nonce_hex, value = found
            if not miss or value > target:
                return nonce_hex, ntime
            nonce = int(nonce_hex, 16) + 1

    def submit(self, *params) -> dict:
        return self.send("mining.submit", list(params))

    def code(self, *params):
        reply = self.submit(*params)
        return None if reply["error"] is None else reply["error"][0]

    def share_rows(self) -> list[tuple]:
        return [r for t, r in self.rows if t == "shares"]


def test_an_honest_share_is_accepted_and_recorded():
    pair = Pair()
    pair.subscribe_and_authorize()
    job = pair.job()
    nonce, ntime = pair.share(job, 1e-6)
    assert pair.code("w", job[0], "00000001", ntime, nonce) is None
    (row,) = pair.share_rows()
    assert row[2] == "w" and row[3] == job[0] and row[10] is True and row[11] is None and row[8] == 1e-6
    assert row[9] >= 1e-6                        # achieved difficulty
    assert pair.metrics.shares == {"accepted": 1}


def test_every_rejection_has_its_code_in_the_documented_order():
    pair = Pair()
    assert pair.code("w", "x", "00000001", "00000000", "00000000") == 25           # not subscribed
    pair.subscribe_and_authorize()
    job = pair.job()
    nonce, ntime = pair.share(job, 1e-6)
    assert pair.code("someone-else", job[0], "00000001", ntime, nonce) == 24      # unauthorized worker
    assert pair.code("w", job[0], "0001", ntime, nonce) == 20                     # malformed extranonce2
    assert pair.code("w", job[0], "00000001", ntime, "xyz") == 20                 # malformed nonce
    assert pair.code("w", "no-such-job", "00000001", ntime, nonce) == 21          # unknown job
    early = f"{int(ntime, 16) - 1:08x}"
    assert pair.code("w", job[0], "00000001", early, nonce) == 20                 # ntime before the job's
    assert pair.code("w", job[0], "00000001", f"{int(NOW) + 7201:08x}", nonce) == 20   # more than 2 h ahead
    assert pair.code("w", job[0], "00000001", ntime, nonce, "00002000") == 20     # no version rolling negotiated
    low_nonce, _ = pair.share(job, 1e-6, extranonce2=b"\0\0\0\2", miss=True)
    assert pair.code("w", job[0], "00000002", ntime, low_nonce) == 23             # low difficulty
    assert pair.code("w", job[0], "00000001", ntime, nonce) is None               # the honest one
    assert pair.code("w", job[0], "00000001", ntime, nonce) == 22                 # ... twice: duplicate
    assert pair.code("w", job[0], "00000001", ntime.upper(), nonce.upper()) == 22  # hex case does not matter
    job_before = job
    pair.deliver(clean=True)                                                        # a new block
    assert pair.code("w", job_before[0], "00000003", ntime, nonce) == 21          # stale
    codes = [r[11] for r in pair.share_rows()]
    assert codes == [20, 20, 21, 20, 20, 20, 23, None, 22, 22, 21]        # a row per submit of an authorized worker
    assert pair.metrics.shares["not_subscribed"] == 1 and pair.metrics.shares["unauthorized"] == 1   # counted only


def test_a_share_is_judged_at_the_difficulty_its_job_was_sent_at():
    low, high = 1e-7, 1e-5
    pair = Pair(difficulty=low)
    pair.subscribe_and_authorize()
    old_job = pair.job()
    nonce, ntime = pair.share(old_job, low)
    reply = pair.send("mining.suggest_difficulty", [high])       # a retarget up: the job is re-sent under a new id
    assert reply["result"] is True and pair.difficulty() == high
    resent = pair.job()
    assert resent[0] != old_job[0] and resent[1:8] == old_job[1:8] and resent[8] is False
    # the share for the job as first sent keeps its old difficulty ...
    assert pair.code("w", old_job[0], "00000001", ntime, nonce) is None
    assert pair.share_rows()[-1][8] == low
    # ... while a share on the re-sent id must meet the new one
    weak, _ = pair.share(resent, low, extranonce2=b"\0\0\0\2")
    code = pair.code("w", resent[0], "00000002", ntime, weak)
    achieved = pair.share_rows()[-1][9]
    assert code == (None if achieved >= high else 23)
    strong, _ = pair.share(resent, high, extranonce2=b"\0\0\0\3")
    assert pair.code("w", resent[0], "00000003", ntime, strong) is None
    assert pair.share_rows()[-1][8] == high
    # a job broadcast after the change is sent (and judged) at the new difficulty
    pair.deliver()
    fresh = pair.job()      # (the random source's next job has the same coinbase: new work needs a new extranonce2)
    nonce, ntime = pair.share(fresh, high, extranonce2=b"\0\0\0\4")
    assert pair.code("w", fresh[0], "00000004", ntime, nonce) is None
    assert pair.share_rows()[-1][8] == high


def test_version_rolling_within_the_negotiated_mask():
    pair = Pair()
    reply = pair.send("mining.configure", [["version-rolling"], {"version-rolling.mask": "00fff000"}])
    mask = int(reply["result"]["version-rolling.mask"], 16)
    assert mask == POOL_VERSION_MASK & 0x00FFF000
    pair.subscribe_and_authorize()
    job = pair.job()
    bits = 0x00AB2000
    rolled = (int(job[5], 16) & ~mask) | bits
    nonce, ntime = pair.share(job, 1e-6, version=rolled)
    assert pair.code("w", job[0], "00000001", ntime, nonce, f"{bits:08x}") is None
    assert pair.code("w", job[0], "00000001", ntime, nonce, "01000000") == 20      # outside the mask


def test_a_block_candidate_is_reported_with_its_header():
    pair = Pair(nbits=0x207FFFFF)     # a regtest-like network target: every share is a block
    pair.subscribe_and_authorize()
    job = pair.job()
    nonce, ntime = pair.share(job, 1e-6)
    assert pair.code("w", job[0], "00000001", ntime, nonce) is None
    (found,) = pair.blocks
    assert bitcoin.sha256d(found.header)[::-1].hex() == found.block_hash and found.worker == "w"
    assert pair.metrics.blocks == 1


def test_vardiff_retargets_on_a_share_and_the_new_job_id_carries_it():
    policy = VardiffPolicy(enabled=True, target_interval=10, retarget_after=30, min_difficulty=1e-9)
    pair = Pair(difficulty=1e-6, vardiff=policy)
    pair.subscribe_and_authorize()
    job = pair.job()
    for en2 in range(1, 41):     # 40 shares within 31 s against a target of one per 10 s
        nonce, ntime = pair.share(job, 1e-6, extranonce2=en2.to_bytes(4, "big"))
        pair.now = NOW + 31 if en2 == 40 else NOW + en2 * 0.5
        assert pair.code("w", job[0], f"{en2:08x}", ntime, nonce) is None
    # the difficulty went up, and the job was re-sent under a new id so it applies at once
    assert pair.difficulty() > 1e-6
    assert pair.job()[0].startswith(job[0] + "r")


def test_difficulty_from_the_password_within_bounds():
    from gstratum.protocol.session import password_difficulty

    assert password_difficulty("x,d=1024") == 1024 and password_difficulty("diff=0.5") == 0.5
    assert password_difficulty("d=abc") is None and password_difficulty("x") is None and password_difficulty(None) is None
    assert password_difficulty("d=-4") is None and password_difficulty("pd=9") is None
    pair = Pair(difficulty=1e-6, vardiff=VardiffPolicy(enabled=False, min_difficulty=1e-9, max_difficulty=100.0))
    result = pair.send("mining.subscribe", ["pair/1"])["result"]
    pair.extranonce1 = bytes.fromhex(result[1])
    assert pair.send("mining.authorize", ["w", "x,d=0.001"])["result"] is True
    assert pair.difficulty() == 0.001 and pair.job()[8] is False      # set_difficulty, then the job re-sent
    assert pair.send("mining.authorize", ["w2", "d=1e9"])["result"] is True
    assert pair.difficulty() == 100.0                                  # clamped to --max-difficulty

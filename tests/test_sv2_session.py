"""The Stratum V2 front end on the shared core, sans-IO (messages in, frames out; no socket, no database): setup and
its refusals, both channel kinds, jobs as future job + SetNewPrevHash, shares judged by the one verdict with V2's
error codes and batched acknowledgements, SetTarget, UpdateChannel, CloseChannel; and a V1 miner and a V2 miner on
one core: the same work at the same moment, one duplicate ledger, rows in the same table."""
from __future__ import annotations

import hashlib
import struct

import pytest
import ujson

from gstratum.mining import bitcoin
from gstratum.mining.vardiff import VardiffPolicy
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.codec import ErrorCode, SetupConnectionFlags
from gstratum.protocol.sv2.datatypes import u256_to_int
from gstratum.protocol.sv2.session import Sv2ProtocolError, Sv2Session

from .sessions import Harness

NOW = 1_700_000_000.0
ALL_ONES = b"\xff" * 32


def decode(frames: list[bytes]) -> list:
    return [codec.decode(codec.parse_frame(frame)) for frame in frames]


class V2Pair:
    """A V2 session on a harness, and the miner's view: frames decoded, channels' jobs kept."""

    def __init__(self, harness: Harness | None = None, difficulty: float = 1e-6, nbits: int = 0x1D00FFFF,
                 vardiff: VardiffPolicy | None = None, **kwargs) -> None:
        self.now = NOW
        self.harness = harness or Harness(difficulty=difficulty, clock=lambda: self.now, nbits=nbits,
                                          vardiff=vardiff, **kwargs)
        self.session = Sv2Session(self.harness.services, "0" * 31 + "5", "192.0.2.5")
        self.received: list = []
        self.next_extranonce1 = 1000

    def send(self, message) -> list:
        output = self.session.receive(message)
        if output.pending is not None:
            self.next_extranonce1 += 1
            output = self.session.complete_open(output.pending, self.next_extranonce1)
        self.harness.rows += output.rows
        self.harness.blocks += output.blocks
        messages = decode(output.send)
        self.received += messages
        return messages

    def setup(self, flags: int = 0) -> list:
        return self.send(codec.SetupConnection(0, 2, 2, flags, "pool", 3336, "test", "cpu", "1", "x"))

    def open_standard(self, user: str = "w.std", request_id: int = 1):
        return self.send(codec.OpenStandardMiningChannel(request_id, user, 1e6, ALL_ONES))

    def open_extended(self, user: str = "w.ext", request_id: int = 2, min_size: int = 2):
        return self.send(codec.OpenExtendedMiningChannel(request_id, user, 1e6, ALL_ONES, min_size))

    def deliver(self, clean: bool = False) -> list:
        job = self.harness.new_job(clean)
        messages = decode(self.session.job_frames(job))
        self.received += messages
        return messages

    def acks(self) -> list:
        return decode(self.session.take_acks())


def header_prefix(version: int, prev_hash: bytes, merkle_root: bytes, ntime: int, nbits: int) -> bytes:
    return struct.pack("<I", version) + prev_hash + merkle_root + struct.pack("<II", ntime, nbits)


def find_nonce(prefix: bytes, target: int, miss: bool = False) -> int:
    for nonce in range(10_000_000):
        value = int.from_bytes(hashlib.sha256(hashlib.sha256(prefix + struct.pack("<I", nonce)).digest()).digest(),
                               "little")
        if (value > target) if miss else (value <= target):
            return nonce
    raise AssertionError("no nonce")


def standard_share(job: codec.NewMiningJob, prevhash: codec.SetNewPrevHash, target: int, version: int | None = None,
                   miss: bool = False) -> tuple[int, int, int]:
    version = job.version if version is None else version
    prefix = header_prefix(version, prevhash.prev_hash, job.merkle_root, prevhash.min_ntime, prevhash.nbits)
    return find_nonce(prefix, target, miss), prevhash.min_ntime, version


def extended_root(job: codec.NewExtendedMiningJob, prefix: bytes, extranonce: bytes) -> bytes:
    root = bitcoin.sha256d(job.coinbase_tx_prefix + prefix + extranonce + job.coinbase_tx_suffix)
    for step in job.merkle_path:
        root = bitcoin.sha256d(root + step)
    return root


def test_setup_and_its_refusals():
    pair = V2Pair()
    with pytest.raises(Sv2ProtocolError):
        pair.open_standard()                                          # nothing before SetupConnection
    refused = V2Pair().send(codec.SetupConnection(1, 2, 2, 0, "", 0, "", "", "", ""))
    assert refused == [codec.SetupConnectionError(0, ErrorCode.UNSUPPORTED_PROTOCOL)]
    refused = V2Pair().send(codec.SetupConnection(0, 3, 4, 0, "", 0, "", "", "", ""))
    assert refused == [codec.SetupConnectionError(0, ErrorCode.PROTOCOL_VERSION_MISMATCH)]
    refused = V2Pair().setup(SetupConnectionFlags.REQUIRES_WORK_SELECTION)
    assert refused[0].error_code == ErrorCode.UNSUPPORTED_FEATURE_FLAGS
    assert pair.setup(SetupConnectionFlags.REQUIRES_VERSION_ROLLING) == [codec.SetupConnectionSuccess(2, 0)]
    with pytest.raises(Sv2ProtocolError):
        pair.setup()                                                  # twice


def test_a_standard_channel_gets_its_job_and_its_shares_are_judged_and_acknowledged_in_a_batch():
    pair = V2Pair()
    pair.setup(SetupConnectionFlags.REQUIRES_STANDARD_JOBS)
    success, job, prevhash = pair.open_standard()
    assert isinstance(success, codec.OpenStandardMiningChannelSuccess) and len(success.extranonce_prefix) == 12
    assert job.min_ntime is None and prevhash.job_id == job.job_id    # a future job, then the prevhash activating it
    current = pair.harness.book.current
    assert job.job_id == current.seq and prevhash.prev_hash == current.template.prevhash
    # the merkle root is the one the coinbase with this channel's whole extranonce gives
    assert job.merkle_root == current.template.merkle_root(success.extranonce_prefix, b"")
    target = u256_to_int(success.target)
    for sequence in (1, 2):
        nonce, ntime, version = standard_share(job, prevhash, target)
        prevhash_next = prevhash
        assert pair.send(codec.SubmitSharesStandard(success.channel_id, sequence, job.job_id, nonce, ntime,
                                                    version)) == []  # accepted: acknowledged later, in a batch
        job = codec.NewMiningJob(job.channel_id, job.job_id, job.min_ntime, job.version, job.merkle_root)
        prevhash = codec.SetNewPrevHash(prevhash_next.channel_id, prevhash_next.job_id, prevhash_next.prev_hash,
                                        prevhash_next.min_ntime + 1, prevhash_next.nbits)    # another ntime
    assert pair.acks() == [codec.SubmitSharesSuccess(success.channel_id, 2, 2, 0)]
    assert pair.acks() == []
    rows = [r for t, r in pair.harness.rows if t == "shares"]
    assert [(r[2], r[10]) for r in rows] == [("w.std", True), ("w.std", True)]


def test_a_standard_channel_hashes_its_coinbase_once_per_job_and_keeps_only_live_jobs_roots():
    """A standard channel's shares are judged on the root sent in NewMiningJob (the pool fixed the whole
    extranonce): a share on an older live job is judged on that job's root, and the roots kept are the live jobs'."""
    pair = V2Pair()
    pair.setup()
    success, first, prevhash = pair.open_standard()
    channel = pair.session.channels[success.channel_id]
    later = [pair.deliver()[0] for _ in range(3)]
    book = pair.harness.book
    assert list(channel.roots) == [first.job_id] + [job.job_id for job in later]
    assert [channel.roots[job.job_id] for job in later] == [job.merkle_root for job in later]
    target = u256_to_int(success.target)
    nonce, ntime, version = standard_share(first, prevhash, target)        # the oldest job, still live
    assert pair.send(codec.SubmitSharesStandard(success.channel_id, 1, first.job_id, nonce, ntime, version)) == []
    missed, ntime, version = standard_share(first, prevhash, target, miss=True)
    refused = pair.send(codec.SubmitSharesStandard(success.channel_id, 2, first.job_id, missed, ntime, version))
    assert refused == [codec.SubmitSharesError(success.channel_id, 2, ErrorCode.DIFFICULTY_TOO_LOW)]
    for _ in range(2):
        pair.deliver(clean=True)
    assert list(channel.roots) == [book.current.seq]                       # a new block: older roots dropped
    assert len(book) == 1


def test_every_refusal_has_its_v2_error_code():
    pair = V2Pair()
    pair.setup()
    success, job, prevhash = pair.open_standard()
    channel, target = success.channel_id, u256_to_int(success.target)
    nonce, ntime, version = standard_share(job, prevhash, target)

    def code(channel_id, sequence, job_id, nonce, ntime, version):
        answer = pair.send(codec.SubmitSharesStandard(channel_id, sequence, job_id, nonce, ntime, version))
        return answer[0].error_code if answer else None

    assert code(99, 1, job.job_id, nonce, ntime, version) == ErrorCode.INVALID_CHANNEL_ID
    assert code(channel, 2, job.job_id + 50, nonce, ntime, version) == ErrorCode.INVALID_JOB_ID
    assert code(channel, 3, job.job_id, nonce, ntime - 1, version) == ErrorCode.INVALID_SHARE          # ntime early
    assert code(channel, 4, job.job_id, nonce, ntime, version | 0x80000000) == ErrorCode.INVALID_SHARE  # outside bits
    missed, _, _ = standard_share(job, prevhash, target, miss=True)
    assert code(channel, 5, job.job_id, missed, ntime, version) == ErrorCode.DIFFICULTY_TOO_LOW
    assert code(channel, 6, job.job_id, nonce, ntime, version) is None
    assert code(channel, 7, job.job_id, nonce, ntime, version) == ErrorCode.DUPLICATE_SHARE
    rolled = version | (5 << 13)                                       # rolling inside 1fffe000 is allowed
    rolled_nonce, _, _ = standard_share(job, prevhash, target, version=rolled)
    assert code(channel, 8, job.job_id, rolled_nonce, ntime, rolled) is None
    pair.deliver(clean=True)                                           # a new block: the old job is stale
    assert code(channel, 9, job.job_id, nonce ^ 1, ntime, version) == ErrorCode.STALE_SHARE
    assert pair.acks() == [codec.SubmitSharesSuccess(channel, 8, 2, 0)]
    codes = [r[11] for t, r in pair.harness.rows if t == "shares"]
    assert codes == [20, 20, 20, 23, None, 22, None, 21]               # the one verdict's codes, recorded
    assert pair.harness.metrics.shares["unauthorized"] == 1            # a channel it never opened: counted only


def test_an_extended_channel_builds_its_coinbase_and_rolls_its_extranonce():
    pair = V2Pair()
    pair.setup()
    success, job, prevhash = pair.open_extended(min_size=2)
    assert isinstance(success, codec.OpenExtendedMiningChannelSuccess)
    assert success.extranonce_size == 4 and len(success.extranonce_prefix) == 8
    current = pair.harness.book.current
    assert job.coinbase_tx_prefix == current.template.coinb1 and job.coinbase_tx_suffix == current.template.coinb2
    target = u256_to_int(success.target)
    for sequence, extranonce in enumerate((b"\0\0\0\1", b"\0\0\0\2"), 1):
        root = extended_root(job, success.extranonce_prefix, extranonce)
        nonce = find_nonce(header_prefix(job.version, prevhash.prev_hash, root, prevhash.min_ntime, prevhash.nbits),
                           target)
        assert pair.send(codec.SubmitSharesExtended(success.channel_id, sequence, job.job_id, nonce,
                                                    prevhash.min_ntime, job.version, extranonce)) == []
    bad = pair.send(codec.SubmitSharesExtended(success.channel_id, 3, job.job_id, 0, prevhash.min_ntime,
                                               job.version, b"\0\0\1"))
    assert bad[0].error_code == ErrorCode.BAD_EXTRANONCE_SIZE
    assert pair.acks() == [codec.SubmitSharesSuccess(success.channel_id, 2, 2, 0)]
    too_large = pair.send(codec.OpenExtendedMiningChannel(9, "w.big", 1e6, ALL_ONES, 8))
    assert too_large == [codec.OpenMiningChannelError(9, ErrorCode.MIN_EXTRANONCE_SIZE_TOO_LARGE)]
    standard_only = V2Pair()
    standard_only.setup(SetupConnectionFlags.REQUIRES_STANDARD_JOBS)
    assert standard_only.open_extended()[0].error_code == ErrorCode.EXTENDED_CHANNELS_NOT_SUPPORTED


def test_jobs_between_blocks_are_active_at_once_and_a_new_block_is_a_future_job_then_its_prevhash():
    pair = V2Pair()
    pair.setup()
    pair.open_standard()
    pair.open_extended()
    same_block = pair.deliver(clean=False)
    assert [type(m).__name__ for m in same_block] == ["NewMiningJob", "NewExtendedMiningJob"]
    assert all(m.min_ntime is not None for m in same_block)
    new_block = pair.deliver(clean=True)
    assert [type(m).__name__ for m in new_block] == ["NewMiningJob", "SetNewPrevHash", "NewExtendedMiningJob",
                                                     "SetNewPrevHash"]
    assert new_block[0].min_ntime is None and new_block[1].job_id == new_block[0].job_id
    assert new_block[2].channel_id != new_block[0].channel_id


def test_set_target_and_update_channel():
    pair = V2Pair(vardiff=VardiffPolicy(enabled=True, target_interval=10, retarget_after=30, min_difficulty=1e-9))
    pair.setup()
    success, _, _ = pair.open_standard()
    start = bitcoin.DIFF1 / u256_to_int(success.target)
    assert start == pytest.approx(1e6 * 10 / 2**32)                  # from the device's nominal hashrate
    answer = pair.send(codec.UpdateChannel(success.channel_id, 4e6, ALL_ONES))
    assert isinstance(answer[0], codec.SetTarget)
    assert bitcoin.DIFF1 / u256_to_int(answer[0].maximum_target) == pytest.approx(4e6 * 10 / 2**32)
    tight = bitcoin.target_from_difficulty(1.0)
    capped = pair.send(codec.UpdateChannel(success.channel_id, 4e6, tight.to_bytes(32, "little")))
    assert u256_to_int(capped[0].maximum_target) <= tight               # never above the device's maximum
    assert pair.send(codec.UpdateChannel(77, 1.0, ALL_ONES))[0].error_code == ErrorCode.INVALID_CHANNEL_ID
    pair.send(codec.CloseChannel(success.channel_id, "bye"))
    assert not pair.session.channels


def test_a_v1_miner_and_a_v2_miner_on_one_core():
    """The same work at the same moment (one job book: the same job, prevhash and coinbase around each miner's own
    extranonce1), shares in one table, and one duplicate ledger for both."""
    from .test_submit_paths import Pair

    v2 = V2Pair()
    v1 = Pair(harness=v2.harness, connection_id="0" * 31 + "6")
    v1.subscribe_and_authorize("v1.rig")
    v2.setup()
    success, job, prevhash = v2.open_extended(user="v2.rig")
    notify = v1.job()
    assert notify[0] == v2.harness.book.current.job_id and job.job_id == v2.harness.book.current.seq
    assert bytes.fromhex(notify[2]) == job.coinbase_tx_prefix and bytes.fromhex(notify[3]) == job.coinbase_tx_suffix
    assert v1.extranonce1 != success.extranonce_prefix                  # one sequence for both protocols
    nonce1, ntime1 = v1.share(notify, 1e-6)
    assert v1.code("v1.rig", notify[0], "00000001", ntime1, nonce1) is None
    root = extended_root(job, success.extranonce_prefix, b"\0\0\0\1")
    nonce2 = find_nonce(header_prefix(job.version, prevhash.prev_hash, root, prevhash.min_ntime, prevhash.nbits),
                        u256_to_int(success.target))
    assert v2.send(codec.SubmitSharesExtended(success.channel_id, 1, job.job_id, nonce2, prevhash.min_ntime,
                                              job.version, b"\0\0\0\1")) == []
    rows = [r for t, r in v2.harness.rows if t == "shares"]
    assert sorted((r[2], r[10]) for r in rows) == [("v1.rig", True), ("v2.rig", True)]
    assert len(v2.harness.ledger) == 2


def test_logins_are_checked_like_v1_in_pplns_and_solo():
    def pplns_login(user: str) -> str:
        if not user.lower().startswith("bcrt1"):
            raise ValueError("not a regtest address")
        return user.lower()

    pair = V2Pair(login_address=pplns_login)
    pair.setup()
    assert pair.open_standard("bc1qmainnet.rig")[0].error_code == ErrorCode.UNKNOWN_USER
    success = pair.open_standard("BCRT1QABC.rig", request_id=5)[0]
    assert isinstance(success, codec.OpenStandardMiningChannelSuccess)
    assert pair.session.channels[success.channel_id].address == "bcrt1qabc"
    refused = [r for t, r in pair.harness.rows if t == "authorizations" and r[4] is False]
    assert [r[2] for r in refused] == ["bc1qmainnet.rig"]


def test_unknown_and_server_messages_close_the_connection():
    pair = V2Pair()
    pair.setup()
    with pytest.raises(Sv2ProtocolError):
        pair.send(codec.SetTarget(1, ALL_ONES))                       # a pool's message, sent by a miner
    assert ujson.dumps(ErrorCode.STALE_SHARE) == '"stale-share"'

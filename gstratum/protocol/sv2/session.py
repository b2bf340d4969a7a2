"""Stratum V2's mining protocol, sans-IO: a decoded message in, what should happen out (frames to send, rows, found
blocks, and a channel that needs an extranonce1 the session cannot allocate itself).

A thin front end, like V1's session: everything about work and shares is the shared core (gstratum.mining.channel:
the job book, `MiningCore.submit` with its one verdict, the pool-wide duplicate ledger, vardiff, rows, counters and
block detection). A V2 channel is a `Channel` of that core plus what V2 adds: a channel id, its kind (standard: the
pool fixes the whole extranonce and sends the merkle root; extended: the miner rolls `extranonce_size` bytes after
the pool's prefix and builds the coinbase itself) and a batch of accepted shares not acknowledged yet.

Jobs are named on the wire by a u32: the job's sequence number in the book (JobBook.seq). A new block goes out as
the job for it marked future (no min_ntime) followed by SetNewPrevHash, as the spec orders them; other jobs are active
at once. Difficulty changes are SetTarget; a lower difficulty applies to the job the miner holds at once, a higher one
from the next job, so no share found before the miner heard of the change is judged at a target it was not given.
Accepted shares are acknowledged in batches (`take_acks`, one SubmitShares.Success per channel, as the spec allows);
refusals go out at once with the share's sequence number.
"""
from __future__ import annotations

import logging
import struct
import uuid
from dataclasses import dataclass
from typing import Callable

from gstratum.mining import bitcoin
from gstratum.mining.channel import Channel, Output
from gstratum.mining.jobs import Job
from gstratum.mining.shares import StratumCode, share_target
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.codec import ErrorCode, SetupConnectionFlags as Flags
from gstratum.protocol.sv2.datatypes import int_to_u256, u256_to_int
from gstratum.protocol.sv2.errors import Sv2Error

log = logging.getLogger(__name__)

VERSION_MASK = 0x1FFFE000           # BIP320's general-purpose bits: what a V2 miner may roll
PROTOCOL_VERSION = 2
MAX_CHANNELS = 64                   # per connection: a proxy opens a few, a device one
_TWO_32 = 2**32

# the verdict's codes as V2 names them (SubmitShares.Error)
SHARE_ERRORS = {StratumCode.JOB_NOT_FOUND: ErrorCode.STALE_SHARE, StratumCode.DUPLICATE_SHARE: ErrorCode.DUPLICATE_SHARE,
                StratumCode.LOW_DIFFICULTY: ErrorCode.DIFFICULTY_TOO_LOW, StratumCode.OTHER: ErrorCode.INVALID_SHARE}


class Sv2ProtocolError(Sv2Error):
    """The peer broke the protocol (a message out of order or one we never serve): its connection is closed."""


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """An Open*MiningChannel the session cannot answer without I/O: the glue allocates an extranonce1 (the
    database's sequence, shared with V1) and calls `complete_open`."""

    request_id: int
    extended: bool
    user_identity: str
    difficulty: float
    extranonce_size: int            # extended: the miner's part
    address: str | None             # PPLNS: the address the login names
    payout_script: bytes | None     # solo: what this channel's coinbase pays


class Sv2Output(Output):
    __slots__ = ("pending",)

    def __init__(self, send: list[bytes] | None = None, pending: OpenRequest | None = None) -> None:
        super().__init__(send)
        self.pending = pending


class Sv2Channel:
    """One V2 channel: the core's Channel and what V2 adds."""

    __slots__ = ("channel_id", "extended", "core", "worker", "address", "extranonce_size", "acked_sequence",
                 "unacked", "unacked_sum", "roots")

    def __init__(self, channel_id: int, extended: bool, core: Channel, worker: str, address: str | None,
                 extranonce_size: int) -> None:
        self.channel_id = channel_id
        self.extended = extended
        self.core = core
        self.worker = worker
        self.address = address
        self.extranonce_size = extranonce_size
        self.acked_sequence = 0         # the newest accepted share's sequence number not acknowledged yet
        self.unacked = 0
        self.unacked_sum = 0.0
        # standard channels: job seq -> the merkle root sent in its NewMiningJob. The pool fixed the whole
        # extranonce, so a share needs only its header hashed: the coinbase and branch were hashed once, per job.
        self.roots: dict[int, bytes] = {}


def difficulty_of_target(target: int) -> float:
    return bitcoin.DIFF1 / target if target else float("inf")


class Sv2Session:
    """One V2 connection's protocol state. Not thread-safe; driven by its connection greenlet (and the broadcast)."""

    __slots__ = ("services", "core", "connection_id", "remote_addr", "setup", "standard_only", "channels",
                 "_next_channel", "requests", "errors", "last_activity", "user_agent", "opening", "unacked",
                 "workers")

    def __init__(self, services, connection_id: str, remote_addr: str = "0.0.0.0") -> None:
        """`services`: gstratum.protocol.session.Services (the core and this port's settings), as V1's."""
        self.services = services
        self.core = services.core
        self.connection_id = connection_id
        self.remote_addr = remote_addr
        self.setup = False
        self.standard_only = False
        self.channels: dict[int, Sv2Channel] = {}
        self._next_channel = 1
        self.requests = 0
        self.errors = 0
        self.last_activity = services.clock()
        self.user_agent = ""
        self.opening = 0                # channels being opened (an extranonce1 on its way)
        self.unacked = False            # some channel has accepted shares to acknowledge
        self.workers: dict[str, str | None] = {}     # the channels' logins (what the server's registries read)

    # -- what the server's registries read (the same names as a V1 session's) -----------------------------------
    @property
    def subscribed(self) -> bool:
        return bool(self.channels)

    @property
    def session_id(self) -> None:
        return None                     # V2 has no session resumption

    @property
    def difficulty(self) -> float:
        channel = next(iter(self.channels.values()), None)
        return channel.core.difficulty if channel is not None else self.services.difficulty

    # -- messages in ------------------------------------------------------------------------------------------------
    def receive(self, message) -> Sv2Output:
        """Handle one message; Sv2ProtocolError when the connection must close."""
        self.requests += 1
        self.last_activity = self.services.clock()
        handler = _HANDLERS.get(type(message))
        if handler is None:
            raise Sv2ProtocolError(f"{message.NAME} is not served by a pool")
        if not self.setup and handler is not Sv2Session.setup_connection:
            raise Sv2ProtocolError(f"{message.NAME} before SetupConnection")
        return handler(self, message)

    def setup_connection(self, msg: codec.SetupConnection) -> Sv2Output:
        if self.setup:
            raise Sv2ProtocolError("SetupConnection twice")
        if msg.protocol != codec.Protocol.MINING:
            return self._setup_error(0, ErrorCode.UNSUPPORTED_PROTOCOL)
        if not msg.min_version <= PROTOCOL_VERSION <= msg.max_version:
            return self._setup_error(0, ErrorCode.PROTOCOL_VERSION_MISMATCH)
        if msg.flags & Flags.REQUIRES_WORK_SELECTION:
            return self._setup_error(Flags.REQUIRES_WORK_SELECTION, ErrorCode.UNSUPPORTED_FEATURE_FLAGS)
        self.setup = True
        self.standard_only = bool(msg.flags & Flags.REQUIRES_STANDARD_JOBS)
        self.user_agent = f"{msg.vendor}/{msg.hardware_version}/{msg.firmware}"[:256]
        # version rolling is always allowed (REQUIRES_VERSION_ROLLING granted): flags 0, no fixed version
        return Sv2Output([codec.encode_frame(codec.SetupConnectionSuccess(PROTOCOL_VERSION, 0))])

    def _setup_error(self, flags: int, code: str) -> Sv2Output:
        self.errors += 1
        return Sv2Output([codec.encode_frame(codec.SetupConnectionError(int(flags), code))])

    def open_standard(self, msg: codec.OpenStandardMiningChannel) -> Sv2Output:
        return self._open(msg, extended=False, min_extranonce_size=0)

    def open_extended(self, msg: codec.OpenExtendedMiningChannel) -> Sv2Output:
        if self.standard_only:
            return self._open_error(msg.request_id, ErrorCode.EXTENDED_CHANNELS_NOT_SUPPORTED)
        return self._open(msg, extended=True, min_extranonce_size=msg.min_extranonce_size)

    def _open(self, msg, extended: bool, min_extranonce_size: int) -> Sv2Output:
        services = self.services
        if len(self.channels) + self.opening >= MAX_CHANNELS:
            return self._open_error(msg.request_id, ErrorCode.UNKNOWN_USER, f"at most {MAX_CHANNELS} channels")
        worker = msg.user_identity
        if not worker.strip() or "\x00" in worker:
            return self._open_error(msg.request_id, ErrorCode.INVALID_USER_IDENTITY)
        if extended and min_extranonce_size > services.extranonce2_size:
            return self._open_error(msg.request_id, ErrorCode.MIN_EXTRANONCE_SIZE_TOO_LARGE)
        address = script = None
        try:
            if services.payout_for is not None:           # solo: this channel's coinbase pays the address
                script = services.payout_for(worker.split(".", 1)[0])
            elif services.login_address is not None:      # PPLNS: the address its shares credit
                address = services.login_address(worker.split(".", 1)[0])
        except ValueError as exc:     # recorded, as V1's refused logins are
            out = self._open_error(msg.request_id, ErrorCode.UNKNOWN_USER, str(exc))
            out.row(self.core.recorder.authorization_row(self.connection_id, worker, self.remote_addr, False))
            return out
        difficulty = self._start_difficulty(msg.nominal_hash_rate)
        max_target = u256_to_int(msg.max_target)
        if share_target(difficulty) > max_target:        # the device cannot take our target: meet its maximum
            difficulty = difficulty_of_target(max_target)
            if difficulty > services.vardiff.max_difficulty:
                return self._open_error(msg.request_id, ErrorCode.MAX_TARGET_OUT_OF_RANGE)
        self.opening += 1
        return Sv2Output(pending=OpenRequest(msg.request_id, extended, worker, difficulty,
                                             services.extranonce2_size if extended else 0, address, script))

    def _start_difficulty(self, nominal_hash_rate: float) -> float:
        """The port's difficulty; with vardiff, the device's nominal hashrate gives one share per target interval
        from the first job (V2 tells us what V1 miners make vardiff find out)."""
        policy = self.services.vardiff
        if policy.enabled and nominal_hash_rate == nominal_hash_rate and nominal_hash_rate > 0:
            wanted = nominal_hash_rate * policy.target_interval / _TWO_32
            return min(max(wanted, policy.min_difficulty), policy.max_difficulty)
        return self.services.difficulty

    def _open_error(self, request_id: int, code: str, why: str = "") -> Sv2Output:
        self.errors += 1
        if why:
            log.info("V2 channel refused for %s: %s (%s)", self.connection_id, code, why[:200])
        return Sv2Output([codec.encode_frame(codec.OpenMiningChannelError(request_id, code))])

    def complete_open(self, request: OpenRequest, extranonce1: int | Exception) -> Sv2Output:
        """The glue's answer to a pending open: an extranonce1 from the pool's sequence, or why there is none."""
        self.opening -= 1
        if isinstance(extranonce1, Exception):
            return self._open_error(request.request_id, "service-unavailable", str(extranonce1))
        services, core = self.services, self.core
        channel_id = self._next_channel
        self._next_channel += 1
        now = services.clock()
        base = Channel(self.connection_id, request.difficulty, services.vardiff, now)
        prefix = extranonce1.to_bytes(8, "big")
        # standard: the pool fixes the whole extranonce (its extranonce1 and zeros where V1's extranonce2 goes)
        base.extranonce1 = prefix if request.extended else prefix + bytes(services.extranonce2_size)
        base.version_mask = VERSION_MASK
        base.payout_script = request.payout_script
        channel = Sv2Channel(channel_id, request.extended, base, request.user_identity, request.address,
                             request.extranonce_size)
        self.channels[channel_id] = channel
        self.workers[request.user_identity] = request.address
        jobs = services.jobs
        current = jobs.current
        base.schedule.start(current.seq if current is not None else jobs.latest_seq + 1, request.difficulty)
        base.vardiff.reset(now)
        session_id = "sv2-" + uuid.uuid4().hex
        out = Sv2Output()
        out.row(core.recorder.subscription_row(self.connection_id, session_id, session_id + "d", prefix.hex(),
                                               request.extranonce_size, self.user_agent, None, False))
        out.row(core.recorder.authorization_row(self.connection_id, request.user_identity, self.remote_addr, True))
        core.metrics.subscribes += 1
        core.metrics.authorizes += 1
        target = int_to_u256(share_target(request.difficulty))
        if request.extended:
            reply = codec.OpenExtendedMiningChannelSuccess(request.request_id, channel_id, target,
                                                           request.extranonce_size, prefix, 0)
        else:
            reply = codec.OpenStandardMiningChannelSuccess(request.request_id, channel_id, target,
                                                           base.extranonce1, 0)
        out.send.append(codec.encode_frame(reply))
        if current is not None:
            out.send += self._job_frames(channel, current, future=True)
        return out

    def update_channel(self, msg: codec.UpdateChannel) -> Sv2Output:
        channel = self.channels.get(msg.channel_id)
        if channel is None:
            self.errors += 1
            return Sv2Output([codec.encode_frame(codec.UpdateChannelError(msg.channel_id,
                                                                          ErrorCode.INVALID_CHANNEL_ID))])
        difficulty = channel.core.difficulty
        if self.services.vardiff.enabled:
            difficulty = self._start_difficulty(msg.nominal_hash_rate)
        maximum = u256_to_int(msg.maximum_target)
        if share_target(difficulty) > maximum:
            difficulty = difficulty_of_target(maximum)
            if difficulty > self.services.vardiff.max_difficulty:
                self.errors += 1
                return Sv2Output([codec.encode_frame(codec.UpdateChannelError(
                    msg.channel_id, ErrorCode.MAX_TARGET_OUT_OF_RANGE))])
        if difficulty == channel.core.difficulty:
            return Sv2Output()
        return Sv2Output([self._set_target(channel, difficulty)])

    def close_channel(self, msg: codec.CloseChannel) -> Sv2Output:
        self.channels.pop(msg.channel_id, None)
        self.workers = {c.worker: c.address for c in self.channels.values()}
        return Sv2Output()

    # -- shares -----------------------------------------------------------------------------------------------------
    def submit_standard(self, msg: codec.SubmitSharesStandard) -> Sv2Output:
        return self._submit(msg, b"", extended=False)

    def submit_extended(self, msg: codec.SubmitSharesExtended) -> Sv2Output:
        return self._submit(msg, msg.extranonce, extended=True)

    def _submit(self, msg, extranonce: bytes, extended: bool) -> Sv2Output:
        channel = self.channels.get(msg.channel_id)
        if channel is None or channel.extended != extended:
            self.core.unauthorized(StratumCode.UNAUTHORIZED)
            return self._share_error(msg, ErrorCode.INVALID_CHANNEL_ID)
        jobs = self.services.jobs
        job = jobs.by_seq(msg.job_id)
        core = self.core
        now = self.services.clock()
        if job is None:     # older than the oldest live job: stale; never sent (not yet, or ever): invalid
            code = ErrorCode.STALE_SHARE if msg.job_id < jobs.oldest_seq else ErrorCode.INVALID_JOB_ID
            out = self._share_error(msg, code)
            out.row(core.malformed(channel.core, channel.worker, f"sv2:{msg.job_id}", code, now).row
                    if code == ErrorCode.INVALID_JOB_ID else
                    core.stale(channel.core, channel.worker, f"sv2:{msg.job_id}", now).row)
            return out
        if extended and len(extranonce) != channel.extranonce_size:
            out = self._share_error(msg, ErrorCode.BAD_EXTRANONCE_SIZE)
            out.row(core.malformed(channel.core, channel.worker, job.job_id, "bad extranonce size", now).row)
            return out
        outcome = core.submit(channel.core, channel.worker, job.job_id, extranonce, msg.ntime, msg.nonce,
                              msg.version, now, None, channel.address, channel.roots.get(job.seq))
        if outcome.code is not None:
            out = self._share_error(msg, SHARE_ERRORS.get(outcome.code, ErrorCode.INVALID_SHARE))
            out.row(outcome.row)
            return out
        out = Sv2Output()
        out.row(outcome.row)
        if outcome.block is not None:
            log.warning("BLOCK CANDIDATE job=%s height=%d worker=%r hash=%s header=%s (Stratum V2)",
                        outcome.block.job_id, outcome.block.height, channel.worker, outcome.block.block_hash,
                        outcome.block.header.hex())
            out.block(outcome.block)
        channel.acked_sequence = msg.sequence_number
        channel.unacked += 1
        channel.unacked_sum += outcome.difficulty
        self.unacked = True
        if outcome.retarget is not None:
            out.send.append(self._set_target(channel, self._bounded(outcome.retarget)))
        return out

    def _share_error(self, msg, code: str) -> Sv2Output:
        self.errors += 1
        return Sv2Output([codec.encode_frame(codec.SubmitSharesError(msg.channel_id, msg.sequence_number, code))])

    def take_acks(self) -> list[bytes]:
        """One SubmitShares.Success per channel for the accepted shares not acknowledged yet."""
        frames = []
        if self.unacked:
            for channel in self.channels.values():
                if channel.unacked:
                    frames.append(_SUCCESS_FRAME(channel.channel_id, channel.acked_sequence, channel.unacked,
                                                 min(int(channel.unacked_sum), 2**64 - 1)))
                    channel.unacked, channel.unacked_sum = 0, 0.0
            self.unacked = False
        return frames

    # -- difficulty -------------------------------------------------------------------------------------------------
    def _bounded(self, difficulty: float) -> float:
        policy = self.services.vardiff
        return min(max(difficulty, policy.min_difficulty), policy.max_difficulty)

    def _set_target(self, channel: Sv2Channel, difficulty: float) -> bytes:
        """SetTarget: a lower difficulty applies at once (shares of the job the miner holds included), a higher one
        from the next job, so no share is judged at a target its miner had not been given."""
        schedule = channel.core.schedule
        jobs = self.services.jobs
        current = jobs.current
        lower = difficulty < schedule.current
        schedule.change(difficulty, current.seq if lower and current is not None else jobs.latest_seq + 1)
        return codec.encode_frame(codec.SetTarget(channel.channel_id, int_to_u256(share_target(difficulty))))

    def retarget(self, difficulty: float) -> list[bytes]:
        """An operator's difficulty for every channel of this connection."""
        return [self._set_target(channel, self._bounded(difficulty)) for channel in self.channels.values()]

    # -- jobs going out ---------------------------------------------------------------------------------------------
    def job_frames(self, job: Job) -> list[bytes]:
        """A new job for every channel: a new block's as a future job and its SetNewPrevHash, another one active
        at once; SetTarget first when vardiff has a retarget due. The broadcast's hot loop: every frame that is the
        same for all channels but its channel id is encoded once per job and patched."""
        frames = []
        services = self.services
        now = services.clock()
        cutoff = services.vardiff.due_cutoff(now)
        for channel in self.channels.values():
            vardiff = channel.core.vardiff
            if vardiff.since <= cutoff:          # a retarget may be due (one float compare for the others)
                proposal = vardiff.proposal(channel.core.difficulty, now)
                if proposal is not None:
                    frames.append(self._set_target(channel, self._bounded(proposal)))
            frames += self._job_frames(channel, job, future=job.clean_jobs)
        return frames

    def _job_frames(self, channel: Sv2Channel, job: Job, future: bool) -> list[bytes]:
        job = job.for_payout(channel.core.payout_script)
        frames = _JobFrames.of(job, future)
        channel_id = _CHANNEL_ID(channel.channel_id)
        if channel.extended:
            first = frames.extended_job(channel_id)
        else:
            root = job.template.merkle_root(channel.core.extranonce1, b"")
            roots = channel.roots
            oldest = self.services.jobs.oldest_seq
            if roots and next(iter(roots)) < oldest:               # only live jobs' roots are kept
                for seq in [seq for seq in roots if seq < oldest]:
                    del roots[seq]
            roots[job.seq] = root
            first = frames.standard_job(channel_id, root)
        return [first, frames.prevhash(channel_id)] if future else [first]


_CHANNEL_ID = struct.Struct("<I").pack
_SUCCESS_FRAME = codec.SubmitSharesSuccess.frame
_HEAD = codec.FRAME_HEADER_SIZE


class _JobFrames:
    """One job's V2 frames, encoded once (with channel id 0) and patched per channel: NewExtendedMiningJob and
    SetNewPrevHash are the same for every channel but the id; NewMiningJob but the id and its merkle root."""

    __slots__ = ("extended", "standard_head", "prevhash_frame")

    def __init__(self, job: Job, future: bool) -> None:
        template = job.template
        min_ntime = None if future else job.ntime_int
        self.extended = codec.encode_frame(codec.NewExtendedMiningJob(
            0, job.seq, min_ntime, job.version_int, True, list(template.branch), template.coinb1, template.coinb2))
        self.standard_head = codec.encode_frame(
            codec.NewMiningJob(0, job.seq, min_ntime, job.version_int, bytes(32)))[:-32]
        self.prevhash_frame = codec.encode_frame(codec.SetNewPrevHash(0, job.seq, template.prevhash, job.ntime_int,
                                                                      int(job.nbits, 16)))

    @classmethod
    def of(cls, job: Job, future: bool) -> "_JobFrames":
        key = ("sv2", future)
        frames = job.encoded.get(key)
        if frames is None:
            frames = job.encoded[key] = cls(job, future)
        return frames

    def extended_job(self, channel_id: bytes) -> bytes:
        return _for_channel(self.extended, channel_id)

    def standard_job(self, channel_id: bytes, merkle_root: bytes) -> bytes:
        return _for_channel(self.standard_head, channel_id) + merkle_root

    def prevhash(self, channel_id: bytes) -> bytes:
        return _for_channel(self.prevhash_frame, channel_id)


def _for_channel(frame: bytes, channel_id: bytes) -> bytes:
    """A frame encoded with channel id 0, its payload's first four bytes replaced by `channel_id`."""
    return frame[:_HEAD] + channel_id + frame[_HEAD + 4:]


_HANDLERS: dict[type, Callable] = {
    codec.SetupConnection: Sv2Session.setup_connection,
    codec.OpenStandardMiningChannel: Sv2Session.open_standard,
    codec.OpenExtendedMiningChannel: Sv2Session.open_extended,
    codec.UpdateChannel: Sv2Session.update_channel,
    codec.CloseChannel: Sv2Session.close_channel,
    codec.SubmitSharesStandard: Sv2Session.submit_standard,
    codec.SubmitSharesExtended: Sv2Session.submit_extended,
}

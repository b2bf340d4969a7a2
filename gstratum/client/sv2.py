"""A Stratum V2 client: the miner's side of the Noise transport and the Mining protocol, for tests and tools.

Two layers, as in the V1 client but split so the state can be driven without a socket:

- `Sv2State` is sans-IO: it is told what the client sent (`setup_sent`, `opening`, `submitted`) and handed every
  decoded server message (`handle`). It keeps, per channel, the target, the extranonce prefix/size, the jobs by id
  (future jobs until a SetNewPrevHash activates one, then the jobs on that prevhash), the prevhash, and the shares
  awaiting an answer. It raises `Sv2ProtocolViolation` on anything a real miner could not accept: a message a
  client never receives, an unknown channel or request, a SetNewPrevHash naming a job never sent, a target above
  the channel's maximum, an acknowledgement of a share never sent or a count that does not add up, and, with
  `firmware_limits`, more merkle path entries than the Bitaxe firmware takes.
- `Sv2Client` is the blocking socket around it (plain sockets: works with or without gevent's monkey patching):
  TCP, the Noise NX handshake (optionally pinning the pool's authority key), frames, SetupConnection, channels,
  submits. With `firmware_limits` a frame over 8,192 payload bytes is a violation, as it breaks the firmware.

Share acknowledgements may be batched: one SubmitShares.Success covers every share of its channel up to its
last_sequence_number that was not answered by a SubmitShares.Error. Each answered share becomes a `ShareOutcome`
(with its send and answer times, for round trips); the client collects them in `outcomes` for its caller to take.
"""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlparse

from gstratum.client.stratum import ProtocolViolation
from gstratum.mining.bitcoin import target_from_nbits
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.codec import (BITAXE_MAX_MERKLE_PATH, BITAXE_MAX_PAYLOAD, PROTOCOL_VERSION, Protocol,
                                         SetupConnectionFlags, SetupConnectionSuccessFlags)
from gstratum.protocol.sv2.datatypes import int_to_u256, u256_to_int
from gstratum.protocol.sv2.errors import Sv2Error
from gstratum.protocol.sv2.keys import decode_authority_public_key
from gstratum.protocol.sv2.noise import RESPONDER_MESSAGE_SIZE, NoiseConnection, NoiseInitiator

MAX_TARGET = (1 << 256) - 1
DEFAULT_NOMINAL_HASH_RATE = 1e12            # what the Bitaxe firmware announces
MAX_EXTRANONCE = 32                         # B0_32: the whole extranonce fits a SubmitSharesExtended field
# What a client accepts from a pool by default: the largest legitimate message, a NewExtendedMiningJob with 255
# path entries and two 64 KiB coinbase parts, is ~136 KiB.
DEFAULT_MAX_FRAME = 256 * 1024
MAX_JOBS_PER_CHANNEL = 64                   # jobs kept per channel (future ones and those on the current prevhash)
_SEQ_MASK = 0xFFFFFFFF
_HALF = 1 << 31

# Messages only a client sends: a pool sending one of them is broken.
_CLIENT_ONLY = (codec.SetupConnection, codec.OpenStandardMiningChannel, codec.OpenExtendedMiningChannel,
                codec.UpdateChannel, codec.SubmitSharesStandard, codec.SubmitSharesExtended)


class Sv2ProtocolViolation(ProtocolViolation):
    """The pool sent something a Stratum V2 miner could not accept."""


class Sv2Rejected(Exception):
    """The pool refused a request: SetupConnection.Error or OpenMiningChannel.Error (`error_code` says why)."""

    def __init__(self, message: codec.Message) -> None:
        super().__init__(f"{message.NAME}: {message.error_code}")
        self.message = message
        self.error_code = message.error_code


def parse_sv2_url(url: str) -> tuple[str, int, bytes | None]:
    """`stratum2+tcp://host:port[/AUTHORITY_PUBKEY]` (the firmware's and SRI's form) or `host:port` ->
    (host, port, the authority's x-only key or None)."""
    if "://" not in url:
        url = "stratum2+tcp://" + url
    parsed = urlparse(url)
    if parsed.scheme not in ("stratum2+tcp", "tcp"):
        raise ValueError(f"unsupported scheme {parsed.scheme!r} (stratum2+tcp://host:port[/KEY])")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"URL needs host and port: {url!r}")
    key_text = parsed.path.strip("/")
    return parsed.hostname, parsed.port, decode_authority_public_key(key_text) if key_text else None


@dataclass(slots=True)
class PrevHash:
    """A SetNewPrevHash as the channel holds it."""

    prev_hash: bytes            # header (internal) byte order
    min_ntime: int
    nbits: int
    received_at: float

    @property
    def network_target(self) -> int:
        return target_from_nbits(self.nbits)


@dataclass(slots=True)
class Job:
    """A job of one channel. Standard jobs carry the merkle root; extended ones the coinbase parts and the path."""

    job_id: int
    version: int
    future: bool                            # sent with min_ntime None: waits for a SetNewPrevHash
    min_ntime: int | None
    received_at: float
    merkle_root: bytes | None = None        # standard
    merkle_path: tuple[bytes, ...] = ()     # extended
    coinbase_tx_prefix: bytes = b""
    coinbase_tx_suffix: bytes = b""
    version_rolling_allowed: bool = True
    prevhash: PrevHash | None = None        # set once the job can be mined (at once, or by its SetNewPrevHash)

    @property
    def extended(self) -> bool:
        return self.merkle_root is None

    @property
    def ntime(self) -> int:
        """The ntime a miner that never rolls it hashes: the job's min_ntime, or its SetNewPrevHash's."""
        return self.min_ntime if self.min_ntime is not None else self.prevhash.min_ntime


@dataclass(slots=True)
class SentShare:
    sequence_number: int
    job_id: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class ShareOutcome:
    """The pool's answer to one share: accepted (error_code None) or refused, with both times for round trips."""

    channel_id: int
    sequence_number: int
    job_id: int
    error_code: str | None
    sent_at: float
    answered_at: float

    @property
    def accepted(self) -> bool:
        return self.error_code is None

    @property
    def round_trip(self) -> float:
        return self.answered_at - self.sent_at


@dataclass(slots=True)
class OpenRequest:
    """An OpenStandard/ExtendedMiningChannel awaiting its answer."""

    request_id: int
    extended: bool
    user_identity: str
    max_target: int
    min_extranonce_size: int
    channel: Channel | None = None
    error: codec.OpenMiningChannelError | None = None


@dataclass(slots=True)
class Channel:
    """One open channel: what the pool told it, its jobs, and the shares it sent that await an answer."""

    channel_id: int
    extended: bool
    user_identity: str
    max_target: int
    target: int
    extranonce_prefix: bytes
    extranonce_size: int                    # the miner's own part (0 on a standard channel)
    group_channel_id: int
    opened_at: float
    jobs: dict[int, Job] = field(default_factory=dict)
    active: Job | None = None               # the newest job that can be mined
    prevhash: PrevHash | None = None
    activations: int = 0                    # SetNewPrevHash messages received
    jobs_received: int = 0
    next_sequence: int = 0
    submitted: int = 0
    pending: dict[int, SentShare] = field(default_factory=dict)   # in the order sent
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    shares_sum: int = 0                     # the pool's new_shares_sum, added up
    closed: str | None = None               # CloseChannel's reason_code
    errors: list[str] = field(default_factory=list)               # UpdateChannel.Error codes
    # the CPU miner's place (sv2work.ChannelWork): searches handed out, each with its own extranonce or rolled
    # version, and the next nonce of a job when nothing else varies; kept here so a later search never repeats one
    searches: int = 0
    nonce_cursor: tuple[int, int] = (-1, 0)

    @property
    def kind(self) -> str:
        return "extended" if self.extended else "standard"


class Sv2State:
    """The client's view of one connection, sans-IO (see the module docstring)."""

    def __init__(self, *, firmware_limits: bool = False) -> None:
        self.firmware_limits = firmware_limits
        self.setup_flags: int | None = None             # what SetupConnection asked for, once sent
        self.setup: codec.SetupConnectionSuccess | None = None
        self.setup_error: codec.SetupConnectionError | None = None
        self.requests: dict[int, OpenRequest] = {}
        self.channels: dict[int, Channel] = {}
        self.closed_channels: dict[int, Channel] = {}
        self.groups: dict[int, tuple[int, ...]] = {}
        self.reconnect: codec.Reconnect | None = None
        self.endpoint_changes: list[int] = []
        self._request_ids = itertools.count(1)
        self._stray: dict[tuple[int, int], SentShare] = {}    # submits on channels we do not have (probes)
        self._stray_sequences: dict[int, itertools.count] = {}

    # -- what the client sent ----------------------------------------------------------------------------------
    def setup_sent(self, flags: int) -> None:
        if self.setup_flags is not None:
            raise RuntimeError("SetupConnection is sent once per connection")
        self.setup_flags = flags

    def opening(self, extended: bool, user_identity: str, max_target: int, min_extranonce_size: int = 0) -> int:
        """Register an open request; returns its request_id."""
        request_id = next(self._request_ids)
        self.requests[request_id] = OpenRequest(request_id, extended, user_identity, max_target, min_extranonce_size)
        return request_id

    def submitted(self, channel_id: int, job_id: int, now: float) -> int:
        """The next sequence number of `channel_id`, registered as awaiting an answer. A channel we do not have
        (a deliberate probe) numbers its own submits too, so the pool's error can be matched."""
        channel = self.channels.get(channel_id)
        if channel is None:
            sequence = next(self._stray_sequences.setdefault(channel_id, itertools.count())) & _SEQ_MASK
            self._stray[(channel_id, sequence)] = SentShare(sequence, job_id, now)
            return sequence
        sequence = channel.next_sequence
        channel.next_sequence = (sequence + 1) & _SEQ_MASK
        channel.submitted += 1
        channel.pending[sequence] = SentShare(sequence, job_id, now)
        return sequence

    # -- what the pool sent ------------------------------------------------------------------------------------
    def handle(self, message: codec.Message, now: float) -> list[ShareOutcome]:
        """Apply one server message; returns the shares it answered (most messages answer none)."""
        handler = _HANDLERS.get(type(message))
        if handler is None:
            if isinstance(message, _CLIENT_ONLY):
                raise Sv2ProtocolViolation(f"the pool sent {message.NAME}, a message only a client sends")
            raise Sv2ProtocolViolation(f"the pool sent {message.NAME}, which a mining client does not handle")
        if self.setup is None and not isinstance(message, (codec.SetupConnectionSuccess, codec.SetupConnectionError)):
            raise Sv2ProtocolViolation(f"{message.NAME} before SetupConnection.Success")
        return handler(self, message, now) or []

    def _setup_success(self, message: codec.SetupConnectionSuccess, now: float) -> None:
        if self.setup_flags is None:
            raise Sv2ProtocolViolation("SetupConnection.Success before any SetupConnection was sent")
        if self.setup is not None or self.setup_error is not None:
            raise Sv2ProtocolViolation("a second answer to SetupConnection")
        if message.used_version != PROTOCOL_VERSION:
            raise Sv2ProtocolViolation(f"SetupConnection.Success used_version {message.used_version}, we offered "
                                       f"only {PROTOCOL_VERSION}")
        unknown = message.flags & ~(SetupConnectionSuccessFlags.REQUIRES_FIXED_VERSION
                                    | SetupConnectionSuccessFlags.REQUIRES_EXTENDED_CHANNELS)
        if unknown:
            raise Sv2ProtocolViolation(f"SetupConnection.Success flags 0x{message.flags:x}: unknown bits 0x{unknown:x}")
        if (message.flags & SetupConnectionSuccessFlags.REQUIRES_EXTENDED_CHANNELS
                and self.setup_flags & SetupConnectionFlags.REQUIRES_STANDARD_JOBS):
            raise Sv2ProtocolViolation("the pool requires extended channels from a miner that requires standard jobs")
        self.setup = message

    def _setup_error(self, message: codec.SetupConnectionError, now: float) -> None:
        if self.setup_flags is None or self.setup is not None or self.setup_error is not None:
            raise Sv2ProtocolViolation("SetupConnection.Error without a SetupConnection awaiting its answer")
        self.setup_error = message

    def _open_request(self, request_id: int, extended: bool | None, name: str) -> OpenRequest:
        request = self.requests.get(request_id)
        if request is None or request.channel is not None or request.error is not None:
            raise Sv2ProtocolViolation(f"{name} for request_id {request_id}, which awaits no answer")
        if extended is not None and request.extended != extended:
            raise Sv2ProtocolViolation(f"{name} answers request {request_id}, which asked for "
                                       f"{'an extended' if request.extended else 'a standard'} channel")
        return request

    def _new_channel(self, request: OpenRequest, message, extranonce_size: int, now: float) -> None:
        name = message.NAME
        if message.channel_id in self.channels:
            raise Sv2ProtocolViolation(f"{name}: channel_id {message.channel_id} is already open")
        target = u256_to_int(message.target)
        if target > request.max_target:
            raise Sv2ProtocolViolation(f"{name}: target {target:064x} above the max_target asked for "
                                       f"({request.max_target:064x})")
        if target == 0:
            raise Sv2ProtocolViolation(f"{name}: a zero target cannot be met")
        if len(message.extranonce_prefix) + extranonce_size > MAX_EXTRANONCE:
            raise Sv2ProtocolViolation(f"{name}: extranonce prefix of {len(message.extranonce_prefix)} bytes plus "
                                       f"{extranonce_size} exceeds {MAX_EXTRANONCE}")
        request.channel = Channel(message.channel_id, request.extended, request.user_identity, request.max_target,
                                  target, message.extranonce_prefix, extranonce_size, message.group_channel_id, now)
        self.channels[message.channel_id] = request.channel

    def _standard_success(self, message: codec.OpenStandardMiningChannelSuccess, now: float) -> None:
        request = self._open_request(message.request_id, False, message.NAME)
        self._new_channel(request, message, 0, now)

    def _extended_success(self, message: codec.OpenExtendedMiningChannelSuccess, now: float) -> None:
        request = self._open_request(message.request_id, True, message.NAME)
        if message.extranonce_size < request.min_extranonce_size:
            raise Sv2ProtocolViolation(f"{message.NAME}: extranonce_size {message.extranonce_size}, below the "
                                       f"min_extranonce_size {request.min_extranonce_size} asked for")
        self._new_channel(request, message, message.extranonce_size, now)

    def _open_error(self, message: codec.OpenMiningChannelError, now: float) -> None:
        self._open_request(message.request_id, None, message.NAME).error = message

    def channel(self, channel_id: int, name: str) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise Sv2ProtocolViolation(f"{name} for channel {channel_id}, which is not open")
        return channel

    def _add_job(self, channel: Channel, job: Job, name: str) -> None:
        if job.job_id in channel.jobs:
            raise Sv2ProtocolViolation(f"{name}: job_id {job.job_id} reused on channel {channel.channel_id}")
        if not job.future:
            if channel.prevhash is None:
                raise Sv2ProtocolViolation(f"{name}: job {job.job_id} is active at once (min_ntime set) but the "
                                           f"channel has no prevhash yet")
            job.prevhash = channel.prevhash
            channel.active = job
        channel.jobs[job.job_id] = job
        channel.jobs_received += 1
        while len(channel.jobs) > MAX_JOBS_PER_CHANNEL:
            oldest = next(iter(channel.jobs))
            if channel.jobs[oldest] is channel.active:
                break
            del channel.jobs[oldest]

    def _standard_job(self, message: codec.NewMiningJob, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        if channel.extended:
            raise Sv2ProtocolViolation(f"NewMiningJob on extended channel {channel.channel_id}")
        self._add_job(channel, Job(message.job_id, message.version, message.min_ntime is None, message.min_ntime,
                                   now, merkle_root=message.merkle_root), message.NAME)

    def _extended_job(self, message: codec.NewExtendedMiningJob, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        if not channel.extended:
            raise Sv2ProtocolViolation(f"NewExtendedMiningJob on standard channel {channel.channel_id}")
        if self.firmware_limits and len(message.merkle_path) > BITAXE_MAX_MERKLE_PATH:
            raise Sv2ProtocolViolation(f"NewExtendedMiningJob with {len(message.merkle_path)} merkle path entries; "
                                       f"the firmware takes at most {BITAXE_MAX_MERKLE_PATH}")
        self._add_job(channel, Job(message.job_id, message.version, message.min_ntime is None, message.min_ntime,
                                   now, merkle_path=tuple(message.merkle_path),
                                   coinbase_tx_prefix=message.coinbase_tx_prefix,
                                   coinbase_tx_suffix=message.coinbase_tx_suffix,
                                   version_rolling_allowed=message.version_rolling_allowed), message.NAME)

    def _set_new_prev_hash(self, message: codec.SetNewPrevHash, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        job = channel.jobs.get(message.job_id)
        if job is None:
            raise Sv2ProtocolViolation(f"SetNewPrevHash activates job {message.job_id} on channel "
                                       f"{channel.channel_id}, which was never sent")
        if not job.future or job.prevhash is not None:
            raise Sv2ProtocolViolation(f"SetNewPrevHash activates job {message.job_id}, which was not sent as a "
                                       f"future job (min_ntime None) or is already active")
        if target_from_nbits(message.nbits) == 0:
            raise Sv2ProtocolViolation(f"SetNewPrevHash nbits {message.nbits:08x} is a zero target")
        prevhash = PrevHash(message.prev_hash, message.min_ntime, message.nbits, now)
        job.prevhash = prevhash
        channel.prevhash = prevhash
        channel.active = job
        channel.activations += 1
        # every job on the previous prevhash is stale now; future jobs not yet activated stay
        channel.jobs = {job_id: kept for job_id, kept in channel.jobs.items()
                        if kept is job or (kept.future and kept.prevhash is None)}

    def _set_target(self, message: codec.SetTarget, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        target = u256_to_int(message.maximum_target)
        if target == 0 or target > channel.max_target:
            raise Sv2ProtocolViolation(f"SetTarget {target:064x} on channel {channel.channel_id}: zero or above its "
                                       f"max_target {channel.max_target:064x}")
        channel.target = target

    def _set_extranonce_prefix(self, message: codec.SetExtranoncePrefix, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        if len(message.extranonce_prefix) + channel.extranonce_size > MAX_EXTRANONCE:
            raise Sv2ProtocolViolation(f"SetExtranoncePrefix of {len(message.extranonce_prefix)} bytes leaves no "
                                       f"room for the channel's {channel.extranonce_size}-byte extranonce")
        channel.extranonce_prefix = message.extranonce_prefix

    def _submit_success(self, message: codec.SubmitSharesSuccess, now: float) -> list[ShareOutcome]:
        channel = self.channel(message.channel_id, message.NAME)
        last = message.last_sequence_number
        if not channel.submitted:
            raise Sv2ProtocolViolation(f"SubmitShares.Success on channel {channel.channel_id}, which sent no share")
        newest = (channel.next_sequence - 1) & _SEQ_MASK
        if (newest - last) & _SEQ_MASK >= _HALF:
            raise Sv2ProtocolViolation(f"SubmitShares.Success acknowledges sequence number {last}; the newest "
                                       f"share sent is {newest}")
        covered = []
        for sequence in channel.pending:
            if (last - sequence) & _SEQ_MASK >= _HALF:
                break
            covered.append(sequence)
        if message.new_submits_accepted_count != len(covered):
            raise Sv2ProtocolViolation(f"SubmitShares.Success up to {last} counts "
                                       f"{message.new_submits_accepted_count} accepted shares; {len(covered)} shares "
                                       f"up to it await an answer")
        outcomes = []
        for sequence in covered:
            sent = channel.pending.pop(sequence)
            outcomes.append(ShareOutcome(channel.channel_id, sequence, sent.job_id, None, sent.sent_at, now))
        channel.accepted += len(covered)
        channel.shares_sum += message.new_shares_sum
        return outcomes

    def _submit_error(self, message: codec.SubmitSharesError, now: float) -> list[ShareOutcome]:
        channel = self.channels.get(message.channel_id)
        sent = None
        if channel is not None:
            sent = channel.pending.pop(message.sequence_number, None)
        else:
            sent = self._stray.pop((message.channel_id, message.sequence_number), None)
        if sent is None:
            raise Sv2ProtocolViolation(f"SubmitShares.Error ({message.error_code}) for share "
                                       f"{message.sequence_number} of channel {message.channel_id}, which awaits "
                                       f"no answer")
        if channel is not None:
            channel.rejected[message.error_code] = channel.rejected.get(message.error_code, 0) + 1
        return [ShareOutcome(message.channel_id, message.sequence_number, sent.job_id, message.error_code,
                             sent.sent_at, now)]

    def _close_channel(self, message: codec.CloseChannel, now: float) -> None:
        channel = self.channel(message.channel_id, message.NAME)
        channel.closed = message.reason_code
        self.closed_channels[channel.channel_id] = self.channels.pop(channel.channel_id)

    def _update_channel_error(self, message: codec.UpdateChannelError, now: float) -> None:
        self.channel(message.channel_id, message.NAME).errors.append(message.error_code)

    def _reconnect(self, message: codec.Reconnect, now: float) -> None:
        self.reconnect = message

    def _set_group_channel(self, message: codec.SetGroupChannel, now: float) -> None:
        self.groups[message.group_channel_id] = tuple(message.channel_ids)

    def _endpoint_changed(self, message: codec.ChannelEndpointChanged, now: float) -> None:
        self.channel(message.channel_id, message.NAME)
        self.endpoint_changes.append(message.channel_id)


_HANDLERS = {
    codec.SetupConnectionSuccess: Sv2State._setup_success,
    codec.SetupConnectionError: Sv2State._setup_error,
    codec.OpenStandardMiningChannelSuccess: Sv2State._standard_success,
    codec.OpenExtendedMiningChannelSuccess: Sv2State._extended_success,
    codec.OpenMiningChannelError: Sv2State._open_error,
    codec.NewMiningJob: Sv2State._standard_job,
    codec.NewExtendedMiningJob: Sv2State._extended_job,
    codec.SetNewPrevHash: Sv2State._set_new_prev_hash,
    codec.SetTarget: Sv2State._set_target,
    codec.SetExtranoncePrefix: Sv2State._set_extranonce_prefix,
    codec.SubmitSharesSuccess: Sv2State._submit_success,
    codec.SubmitSharesError: Sv2State._submit_error,
    codec.CloseChannel: Sv2State._close_channel,
    codec.UpdateChannelError: Sv2State._update_channel_error,
    codec.Reconnect: Sv2State._reconnect,
    codec.SetGroupChannel: Sv2State._set_group_channel,
    codec.ChannelEndpointChanged: Sv2State._endpoint_changed,
}


def _connect(host: str, port: int, timeout: float, source_address: tuple | None) -> socket.socket:
    """A TCP connection; an IP address is used as it is, without asking the resolver (under gevent, a resolver
    call goes through a thread pool and costs the load tool more CPU than the TCP handshake itself)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout, source_address=source_address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source_address is not None:
            sock.bind(source_address)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class HandshakeTimes:
    """Where a connection's set-up time went (seconds; monotonic clock): TCP connect, the Noise handshake (wall,
    from our 64 bytes to the verified answer) and the CPU the Noise handshake cost this client (its key
    generation, two ECDHs and, when pinned, the certificate check; this thread's CPU time around those calls alone,
    which never yield)."""

    started_at: float
    connect: float = 0.0
    noise: float = 0.0
    noise_cpu: float = 0.0


class Sv2Client:
    """One Stratum V2 connection. `Sv2Client.connect(host, port)` opens it; the constructor takes a connected
    socket (a socketpair in tests) and runs the Noise handshake on it.

    `authority_public_key` (32-byte x-only, or the string `gstratum sv2-key` prints) pins the pool; None accepts
    any certificate, as a miner with no key configured does. `check_certificate_time` also checks its validity
    window against the local clock. `initiator` lets a caller prepare the handshake's key ahead (the load tool
    does, before its ramp). `firmware_limits` refuses what breaks the Bitaxe firmware (frames over 8,192 payload
    bytes, more than 20 merkle path entries)."""

    def __init__(self, sock: socket.socket, *, authority_public_key: bytes | str | None = None,
                 check_certificate_time: bool = False, timeout: float = 10.0, firmware_limits: bool = False,
                 max_frame: int = DEFAULT_MAX_FRAME, initiator: NoiseInitiator | None = None,
                 times: HandshakeTimes | None = None) -> None:
        self.sock = sock
        self.timeout = timeout
        self.state = Sv2State(firmware_limits=firmware_limits)
        self.outcomes: deque[ShareOutcome] = deque()      # answered shares, for the caller to take
        self.times = times if times is not None else HandshakeTimes(time.monotonic())
        self.certificate = None
        self._inbox: deque[tuple[codec.Message, float]] = deque()
        self._batch: list[bytes] | None = None
        self.messages_received = 0
        self.last_received_at: float | None = None
        peer = sock.getpeername()
        self.peer: tuple[str, int] = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)   # AF_UNIX: none
        if isinstance(authority_public_key, str):
            authority_public_key = decode_authority_public_key(authority_public_key)
        cpu = time.thread_time()
        if initiator is None:
            initiator = NoiseInitiator(authority_public_key, now=int(time.time()) if check_certificate_time else None)
        elif authority_public_key is not None or check_certificate_time:
            raise ValueError("pass the authority key and the time check to the initiator you prepared")
        self.connection = self._handshake(initiator, BITAXE_MAX_PAYLOAD if firmware_limits else max_frame, cpu)

    @classmethod
    def connect(cls, host: str, port: int, *, timeout: float = 10.0, source_address: tuple | None = None,
                **options) -> Sv2Client:
        times = HandshakeTimes(time.monotonic())
        sock = _connect(host, port, timeout, source_address)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times.connect = time.monotonic() - times.started_at
            return cls(sock, timeout=timeout, times=times, **options)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, initiator: NoiseInitiator, max_frame: int, cpu_started: float) -> NoiseConnection:
        started = time.monotonic()
        first = initiator.start()
        cpu = time.thread_time() - cpu_started
        self.sock.settimeout(self.timeout)
        self.sock.sendall(first)
        answer = b""
        while len(answer) < RESPONDER_MESSAGE_SIZE:     # exactly the answer: the pool sends nothing more unasked
            data = self.sock.recv(RESPONDER_MESSAGE_SIZE - len(answer))
            if not data:
                raise ConnectionError("the pool closed the connection during the Noise handshake")
            answer += data
        cpu_started = time.thread_time()
        try:
            initiator.receive(answer)
        except Sv2Error as exc:
            raise Sv2ProtocolViolation(f"Noise handshake: {exc}") from exc
        self.times.noise_cpu = cpu + time.thread_time() - cpu_started
        self.times.noise = time.monotonic() - started
        self.certificate = initiator.certificate
        return initiator.connection(max_frame)

    # -- wire --------------------------------------------------------------------------------------------------
    def send(self, *messages: codec.Message) -> None:
        """Encrypt and send messages in one write (or add them to the open `batch()`)."""
        wire = b"".join(self.connection.encrypt(codec.encode_frame(message)) for message in messages)
        if self._batch is not None:
            self._batch.append(wire)
        else:
            self.sock.sendall(wire)

    @contextlib.contextmanager
    def batch(self):
        """`with client.batch(): ...`: everything sent inside goes out in one write at the end (as a proxy sends
        several devices' shares)."""
        if self._batch is not None:
            raise RuntimeError("batches do not nest")
        self._batch = []
        try:
            yield
        finally:
            wire, self._batch = b"".join(self._batch), None
        if wire:
            self.sock.sendall(wire)

    def _receive(self, data: bytes) -> None:
        if not data:
            raise ConnectionError("the pool closed the connection")
        now = time.monotonic()
        try:
            frames = self.connection.feed(data)
        except Sv2Error as exc:
            raise Sv2ProtocolViolation(f"transport: {exc}") from exc
        for frame in frames:
            try:
                message = codec.decode(frame)
            except Sv2Error as exc:
                raise Sv2ProtocolViolation(f"undecodable message: {exc}") from exc
            self._inbox.append((message, now))

    def read_message(self, timeout: float | None = None) -> codec.Message:
        """The next server message, applied to the state (socket.timeout when none comes, ConnectionError on EOF,
        Sv2ProtocolViolation on anything a miner could not accept)."""
        if not self._inbox:
            self.sock.settimeout(self.timeout if timeout is None else max(timeout, 0.0))
            while not self._inbox:
                self._receive(self.sock.recv(65536))
        message, received_at = self._inbox.popleft()
        self.messages_received += 1
        self.outcomes.extend(self.state.handle(message, received_at))
        self.last_received_at = received_at
        return message

    def poll(self) -> int:
        """Handle whatever the pool already sent, without waiting; returns the number of messages handled."""
        count = 0
        while True:
            if not self._inbox:
                self.sock.setblocking(False)
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return count
                finally:
                    self.sock.setblocking(True)
                self._receive(data)
                continue
            self.read_message()
            count += 1

    def wait_until(self, condition, timeout: float | None = None, what: str = "condition"):
        """Read messages until `condition()` is true; returns its value (socket.timeout when it never becomes so)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = condition()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"timed out waiting for {what}")
            self.read_message(left)

    def take_outcomes(self) -> list[ShareOutcome]:
        outcomes = list(self.outcomes)
        self.outcomes.clear()
        return outcomes

    # -- Stratum V2 --------------------------------------------------------------------------------------------
    def setup_connection(self, flags: int = 0, *, vendor: str = "gstratum", hardware_version: str = "",
                         firmware: str = "gstratum-client", device_id: str = "", endpoint_host: str | None = None,
                         endpoint_port: int | None = None, min_version: int = PROTOCOL_VERSION,
                         max_version: int = PROTOCOL_VERSION) -> codec.SetupConnectionSuccess:
        """SetupConnection for the Mining protocol; its Success (Sv2Rejected on SetupConnection.Error)."""
        self.state.setup_sent(flags)
        self.send(codec.SetupConnection(Protocol.MINING, min_version, max_version, flags,
                                        endpoint_host if endpoint_host is not None else self.peer[0],
                                        endpoint_port if endpoint_port is not None else self.peer[1], vendor,
                                        hardware_version, firmware, device_id))
        state = self.state
        self.wait_until(lambda: state.setup or state.setup_error, what="the answer to SetupConnection")
        if state.setup_error is not None:
            raise Sv2Rejected(state.setup_error)
        return state.setup

    def open_standard_channel(self, user_identity: str, nominal_hash_rate: float = DEFAULT_NOMINAL_HASH_RATE,
                              max_target: int = MAX_TARGET) -> Channel:
        request_id = self.state.opening(False, user_identity, max_target)
        self.send(codec.OpenStandardMiningChannel(request_id, user_identity, nominal_hash_rate,
                                                  int_to_u256(max_target)))
        return self._await_channel(request_id)

    def open_extended_channel(self, user_identity: str, nominal_hash_rate: float = DEFAULT_NOMINAL_HASH_RATE,
                              max_target: int = MAX_TARGET, min_extranonce_size: int = 2) -> Channel:
        request_id = self.state.opening(True, user_identity, max_target, min_extranonce_size)
        self.send(codec.OpenExtendedMiningChannel(request_id, user_identity, nominal_hash_rate,
                                                  int_to_u256(max_target), min_extranonce_size))
        return self._await_channel(request_id)

    def _await_channel(self, request_id: int) -> Channel:
        request = self.state.requests[request_id]
        self.wait_until(lambda: request.channel or request.error, what=f"the answer to open request {request_id}")
        del self.state.requests[request_id]
        if request.error is not None:
            raise Sv2Rejected(request.error)
        return request.channel

    def wait_for_job(self, channel: Channel, timeout: float | None = None) -> Job:
        """The channel's active job, waiting for the first SetNewPrevHash if need be."""
        return self.wait_until(lambda: channel.active, timeout, what=f"a job on channel {channel.channel_id}")

    def submit_standard(self, channel_id: int, job_id: int, nonce: int, ntime: int, version: int) -> int:
        """Send SubmitSharesStandard; returns its sequence number (the answer arrives later, maybe batched)."""
        sequence = self.state.submitted(channel_id, job_id, time.monotonic())
        self.send(codec.SubmitSharesStandard(channel_id, sequence, job_id, nonce, ntime, version))
        return sequence

    def submit_extended(self, channel_id: int, job_id: int, nonce: int, ntime: int, version: int,
                        extranonce: bytes) -> int:
        sequence = self.state.submitted(channel_id, job_id, time.monotonic())
        self.send(codec.SubmitSharesExtended(channel_id, sequence, job_id, nonce, ntime, version, extranonce))
        return sequence

    def reconnect_target(self) -> tuple[str, int] | None:
        """Where a Reconnect sends us (an empty host or port 0: where we are), or None if none came."""
        message = self.state.reconnect
        if message is None:
            return None
        return message.new_host or self.peer[0], message.new_port or self.peer[1]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Sv2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

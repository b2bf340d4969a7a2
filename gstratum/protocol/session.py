"""Sans-IO per-miner Stratum state machine: a request line in, reply lines out.

`Session.receive_line` is the one place where exceptions become error replies. Handlers are looked up in a
dispatch table; every collaborator (allocator, job book, recorder, stats, clock) is passed in through `Services`,
so the whole protocol is tested without sockets or a database.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from gstratum import __version__
from gstratum.mining import bitcoin
from gstratum.protocol import rpc
from gstratum.mining.jobs import Job, JobBook
from gstratum.protocol.rpc import (DUPLICATE_SHARE, JOB_NOT_FOUND, LOW_DIFFICULTY, NOT_SUBSCRIBED, OTHER, UNAUTHORIZED, Request,
                  Response, StratumError)
from gstratum.mining.shares import judge
from gstratum.protocol.difficulty import DifficultySchedule, DuplicateFilter
from gstratum.protocol.vardiff import Vardiff, VardiffPolicy

log = logging.getLogger(__name__)

POOL_VERSION_MASK = 0x1FFFE000
MAX_WORKER_NAME = 256
SERVER_VERSION = f"gstratum/{__version__}"
_HEX8 = re.compile(r"[0-9a-fA-F]{8}\Z")
_HEX = re.compile(r"[0-9a-fA-F]*\Z")


@dataclass
class Services:
    """What a session needs from the rest of the pool, passed in so the protocol runs without sockets or a database.
    `metrics` and `stats` are plain counters (gstratum.ops.metrics.Metrics, gstratum.ops.stats.PoolStats or fakes)."""

    allocator: Any                      # .allocate() -> int
    jobs: JobBook
    recorder: Any                       # gstratum.storage.records.Recorder (or a fake)
    metrics: Any
    stats: Any
    difficulty: float = 1.0
    extranonce2_size: int = 4
    vardiff: VardiffPolicy = field(default_factory=lambda: VardiffPolicy(enabled=False))
    clock: Callable[[], float] = time.time
    network_target: Callable[[Job], int] | None = None
    on_block: Callable[[dict], None] | None = None
    resumption: Any = None              # gstratum.storage.resumption.Resumption: resume() and remember()
    payout_for: Callable[[str], bytes] | None = None   # solo: user (an address) -> its script; ValueError if invalid


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class Session:
    """One miner's protocol state. Not thread-safe; driven by one connection greenlet (and the broadcaster)."""

    # slots and a class-level dispatch table: 10,000 sessions without a per-instance dict or a dict of bound methods
    __slots__ = ("services", "connection_id", "remote_addr", "subscribed", "session_id", "extranonce1",
                 "_extranonce1_bytes", "workers", "schedule", "duplicates", "version_mask", "suggested",
                 "minimum_difficulty", "requests", "errors", "vardiff", "last_activity", "payout_script")

    def __init__(self, services: Services, connection_id: str, remote_addr: str = "0.0.0.0") -> None:
        self.services = services
        self.connection_id = connection_id
        self.remote_addr = remote_addr
        self.subscribed = False
        self.session_id: str | None = None
        self.extranonce1: str | None = None
        self._extranonce1_bytes = b""
        self.workers: set[str] = set()
        self.schedule = DifficultySchedule(services.difficulty)
        self.payout_script: bytes | None = None    # solo: what this miner's coinbase pays (set by authorize)
        self.duplicates = DuplicateFilter()
        self.version_mask = 0
        self.suggested: float | None = None
        self.minimum_difficulty = services.vardiff.min_difficulty
        self.requests = 0
        self.errors = 0
        self.vardiff = Vardiff(services.vardiff, services.clock())
        self.last_activity = services.clock()

    # -- the one place where exceptions become replies ---------------------------------------------------------
    def receive_line(self, line: bytes) -> list[bytes]:
        """Handle one request line; return the lines to send, in order. Never raises for any input."""
        self.requests += 1
        self.last_activity = self.services.clock()
        request_id = None
        try:
            message = rpc.decode(line)
            if isinstance(message, Response):
                return []
            request_id = message.id
            handler = _HANDLERS.get(message.method)
            if handler is None:
                raise StratumError(OTHER, f"Unknown method {message.method[:64]!r}")
            return handler(self, message)
        except StratumError as err:
            self.errors += 1
            return [rpc.encode_error(err.request_id if err.request_id is not None else request_id, err)]
        except Exception:  # a bug must cost one reply, not the miner's connection
            self.errors += 1
            log.exception("internal error handling a request from %s", self.connection_id)
            return [rpc.encode_error(request_id, StratumError(OTHER, "Internal error"))]

    @property
    def difficulty(self) -> float:
        """The difficulty the next job is sent at."""
        return self.schedule.current

    # -- jobs going out -----------------------------------------------------------------------------------------
    # (the broadcast asks for `broadcast_lines` only when `vardiff.since` says a retarget may be due; see
    # gstratum.protocol.difficulty for how each job's difficulty is remembered)
    def broadcast_lines(self, job: Job) -> list[bytes]:
        """What a new job costs this miner when it is not the shared line: set_difficulty first when a retarget is
        due, then the job (in solo mode, the variant paying this miner; nothing before it authorized)."""
        if self.services.payout_for is not None and self.payout_script is None:
            return []
        lines = []
        proposal = self.vardiff.proposal(self.difficulty, self.services.clock())
        if proposal is not None:
            lines.append(self._set_difficulty(self._bounded(proposal), applies_from=job.seq))
        lines.append(job.for_payout(self.payout_script).notify_line())
        return lines

    def _set_difficulty(self, difficulty: float, applies_from: int | None = None) -> bytes:
        """Change the difficulty for jobs from sequence `applies_from` on (default: jobs not yet sent)."""
        start = self.services.jobs.latest_seq + 1 if applies_from is None else applies_from
        self.schedule.change(difficulty, start)
        return rpc.encode_notification("mining.set_difficulty", [difficulty])

    def _retarget_lines(self, difficulty: float) -> list[bytes]:
        """set_difficulty, then the current job again under a new id (clean_jobs false) so the new difficulty
        takes effect at once (DifficultySchedule.resend)."""
        lines = [self._set_difficulty(difficulty)]
        current = self.services.jobs.current
        if current is not None and self.subscribed and (self.services.payout_for is None or self.payout_script):
            params = current.for_payout(self.payout_script).notify_params(False)
            params[0] = self.schedule.resend(current, difficulty, self.services.jobs)
            lines.append(rpc.encode_notification("mining.notify", params))
        return lines

    def retarget(self, difficulty: float) -> list[bytes]:
        """An operator's difficulty for this miner (within its bounds): set_difficulty and the job re-sent."""
        return self._retarget_lines(self._bounded(difficulty))

    def _bounded(self, difficulty: float) -> float:
        policy = self.services.vardiff
        return clamp(difficulty, max(policy.min_difficulty, self.minimum_difficulty), policy.max_difficulty)

    # -- handlers ---------------------------------------------------------------------------------------------
    def subscribe(self, req: Request) -> list[bytes]:
        if self.subscribed:
            raise StratumError(OTHER, "Already subscribed", req.id)
        params = req.params
        user_agent = _optional_str(params, 0, "user agent", req.id)
        requested = _optional_str(params, 1, "session id", req.id)
        resumption = self.services.resumption
        found = resumption.resume(requested, self) if requested and resumption is not None else None
        resumed = found is not None
        if found is not None:
            session, extranonce1 = found
        else:
            session, extranonce1 = uuid.uuid4().hex, f"{self.services.allocator.allocate():016x}"
        difficulty_sub_id = session + "d"   # distinct from the session (notify) id, and derived from it
        self.subscribed = True
        self.session_id = session
        self.extranonce1 = extranonce1
        self._extranonce1_bytes = bytes.fromhex(extranonce1)
        difficulty = self._bounded(self.suggested) if self.suggested is not None else self.difficulty
        self.services.metrics.subscribes += 1
        self.services.recorder.subscribed(self.connection_id, session, difficulty_sub_id, extranonce1,
                                          self.services.extranonce2_size, user_agent, requested, resumed)
        if resumption is not None:
            resumption.remember(session, difficulty_sub_id, extranonce1)
        result = [[["mining.set_difficulty", difficulty_sub_id], ["mining.notify", session]], extranonce1,
                  self.services.extranonce2_size]
        current = self.services.jobs.current
        self.schedule.start(current.seq if current is not None else self.services.jobs.latest_seq + 1, difficulty)
        lines = [rpc.encode_result(req.id, result),
                 rpc.encode_notification("mining.set_difficulty", [self.difficulty])]
        if current is not None and self.services.payout_for is None:   # solo: the job comes with authorize
            lines.append(current.notify_line(True))
        self.vardiff.reset(self.services.clock())
        return lines

    def authorize(self, req: Request) -> list[bytes]:
        if not req.params or not isinstance(req.params[0], str) or not req.params[0].strip():
            raise StratumError(OTHER, "Invalid params: worker name must be a non-empty string", req.id)
        worker = req.params[0]
        if len(worker) > MAX_WORKER_NAME:
            raise StratumError(OTHER, f"Invalid params: worker name longer than {MAX_WORKER_NAME}", req.id)
        lines = []
        if self.services.payout_for is not None:
            lines = self._solo_payout(worker, req.id)
        requested = password_difficulty(req.params[1] if len(req.params) > 1 else None)
        if requested is not None:       # d=NUMBER in the password: this miner's start difficulty, within bounds
            self.suggested = requested
            if self.subscribed and self._bounded(requested) != self.difficulty:
                lines += self._retarget_lines(self._bounded(requested))
        self.workers.add(worker)
        self.services.metrics.authorizes += 1
        self.services.recorder.authorized(self.connection_id, worker, self.remote_addr, True)
        return [rpc.encode_result(req.id, True)] + lines

    def _solo_payout(self, worker: str, request_id) -> list[bytes]:
        """Solo: the user part of ADDRESS[.WORKER] is the address this connection's coinbase pays. Refused with a
        clear message when it is not an address of the node's chain: never a job that pays nobody."""
        address = worker.split(".", 1)[0]
        try:
            script = self.services.payout_for(address)
        except ValueError as exc:
            self.services.recorder.authorized(self.connection_id, worker, self.remote_addr, False)
            raise StratumError(UNAUTHORIZED, f"Invalid payout address: {exc}"[:300], request_id) from None
        if self.payout_script is not None:
            if script != self.payout_script:
                raise StratumError(UNAUTHORIZED, "One payout address per connection (solo mode)", request_id)
            return []
        self.payout_script = script
        current = self.services.jobs.current
        return [current.for_payout(script).notify_line(True)] if current is not None and self.subscribed else []

    def configure(self, req: Request) -> list[bytes]:
        """BIP310: answer each requested extension; unknown ones are answered false."""
        params = req.params
        if len(params) < 1 or not isinstance(params[0], list):
            raise StratumError(OTHER, "Invalid params: expected [extensions, parameters]", req.id)
        options = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        result: dict[str, Any] = {}
        lines: list[bytes] = []
        for ext in params[0][:16]:
            if not isinstance(ext, str):
                continue
            if ext == "version-rolling":
                mask = _hex_option(options.get("version-rolling.mask"), POOL_VERSION_MASK)
                self.version_mask = POOL_VERSION_MASK & mask
                result["version-rolling"] = True
                result["version-rolling.mask"] = f"{self.version_mask:08x}"
            elif ext == "minimum-difficulty":
                value = options.get("minimum-difficulty.value")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    self.minimum_difficulty = self._bounded(float(value))
                    result["minimum-difficulty"] = True
                    if self.difficulty < self.minimum_difficulty:
                        lines = self._retarget_lines(self.minimum_difficulty) if self.subscribed else []
                        if not self.subscribed:
                            self.schedule.current = self.minimum_difficulty
                else:
                    result["minimum-difficulty"] = False
            elif ext == "subscribe-extranonce":
                result["subscribe-extranonce"] = True
            else:
                result[ext[:64]] = False
        return [rpc.encode_result(req.id, result)] + lines

    def suggest_difficulty(self, req: Request) -> list[bytes]:
        value = req.params[0] if req.params else None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise StratumError(OTHER, "Invalid params: difficulty must be a positive number", req.id)
        self.suggested = float(value)
        lines = [rpc.encode_result(req.id, True)]
        if self.subscribed:
            lines += self._retarget_lines(self._bounded(self.suggested))
        return lines

    def suggest_target(self, req: Request) -> list[bytes]:
        value = req.params[0] if req.params else None
        if not isinstance(value, str) or len(value) > 64:
            raise StratumError(OTHER, "Invalid params: target must be hex", req.id)
        try:
            target = int(value, 16)
        except ValueError:
            raise StratumError(OTHER, "Invalid params: target must be hex", req.id) from None
        if target <= 0:
            raise StratumError(OTHER, "Invalid params: target must be positive", req.id)
        return self.suggest_difficulty(Request(req.id, req.method, [bitcoin.DIFF1 / target]))

    def extranonce_subscribe(self, req: Request) -> list[bytes]:
        return [rpc.encode_result(req.id, True)]

    def get_transactions(self, req: Request) -> list[bytes]:
        return [rpc.encode_result(req.id, [])]

    def get_version(self, req: Request) -> list[bytes]:
        return [rpc.encode_result(req.id, SERVER_VERSION)]

    # -- shares -----------------------------------------------------------------------------------------------
    def submit(self, req: Request) -> list[bytes]:
        """Judge one share (checks in the order the protocol's error codes imply) and record it, whatever the
        verdict. This is the pool's hottest path: it keeps to locals and one row tuple."""
        services = self.services
        now = services.clock()
        params = req.params
        worker = params[0][:MAX_WORKER_NAME] if params and type(params[0]) is str else ""
        job_id = params[1] if len(params) > 1 and type(params[1]) is str else ""
        job, difficulty = self.schedule.lookup(job_id, services.jobs) if self.subscribed else (None, self.difficulty)
        extranonce2 = ntime = nonce = version_bits = achieved = None
        try:
            if not self.subscribed:
                raise StratumError(NOT_SUBSCRIBED, "Not subscribed", req.id)
            if worker not in self.workers:
                raise StratumError(UNAUTHORIZED, "Unauthorized worker", req.id)
            extranonce2, ntime, nonce, version_bits = self._parse_submit(params, req.id)
            if job is None:
                raise StratumError(JOB_NOT_FOUND, "Job not found (stale)", req.id)
            job = job.for_payout(self.payout_script)
            verdict = judge(job, difficulty, self._extranonce1_bytes, extranonce2, ntime, nonce, version_bits,
                            self.version_mask, now, self.duplicates.shares_of(job.job_id, services.jobs),
                            services.network_target)
            achieved = verdict.achieved
            if verdict.code is not None:
                raise StratumError(verdict.code, verdict.message, req.id)
            if verdict.block:
                self._found_block(job, worker, verdict.header, verdict.hash_int, extranonce2)
        except StratumError as err:
            services.recorder.share(self.connection_id, worker, job_id[:64], extranonce2, ntime, nonce, version_bits,
                                    difficulty, achieved, err.code, now)
            services.metrics.share(err.code)
            if worker in self.workers:  # names a miner merely claims must not grow the in-memory totals
                services.stats.share(worker, False, difficulty, now)
            raise
        services.recorder.share(self.connection_id, worker, job_id[:64], extranonce2, ntime, nonce, version_bits,
                                difficulty, achieved, None, now)
        services.metrics.share(None)
        services.metrics.accepted_difficulty += difficulty
        services.stats.share(worker, True, difficulty, now)
        self.vardiff.note_share()
        proposal = self.vardiff.proposal(self.difficulty, now)
        if proposal is not None:
            return [rpc.encode_accepted(req.id)] + self._retarget_lines(self._bounded(proposal))
        return [rpc.encode_accepted(req.id)]

    def _parse_submit(self, params: list, request_id) -> tuple[str, str, str, str | None]:
        count = len(params)
        if count == 5 or count == 6:
            extranonce2, ntime, nonce = params[2], params[3], params[4]
            version_bits = params[5] if count == 6 else None
            # the common case in one check: strings of the right lengths, all hex (the slow path below names
            # the field that is wrong)
            if (type(extranonce2) is str and type(ntime) is str and type(nonce) is str
                    and (version_bits is None or (type(version_bits) is str and len(version_bits) == 8))
                    and len(extranonce2) == 2 * self.services.extranonce2_size and len(ntime) == 8
                    and len(nonce) == 8 and _HEX.match(extranonce2 + ntime + nonce + (version_bits or "")) is not None
                    and type(params[0]) is str and type(params[1]) is str):
                return extranonce2.lower(), ntime.lower(), nonce.lower(), version_bits
        if count < 5 or count > 6 or not all(isinstance(p, str) for p in params):
            raise StratumError(OTHER, "Invalid params: expected [worker, job_id, extranonce2, ntime, nonce"
                                      "(, version_bits)] as strings", request_id)
        size = self.services.extranonce2_size
        if len(extranonce2) != 2 * size or not _is_hex(extranonce2):
            raise StratumError(OTHER, f"Invalid extranonce2: expected {size} bytes of hex", request_id)
        if not _HEX8.match(ntime):
            raise StratumError(OTHER, "Invalid ntime: expected 8 hex digits", request_id)
        if not _HEX8.match(nonce):
            raise StratumError(OTHER, "Invalid nonce: expected 8 hex digits", request_id)
        if version_bits is not None and not _HEX8.match(version_bits):
            raise StratumError(OTHER, "Invalid version bits: expected 8 hex digits", request_id)
        return extranonce2.lower(), ntime.lower(), nonce.lower(), version_bits

    def _found_block(self, job: Job, worker: str, header: bytes, hash_int: int, extranonce2: str) -> None:
        block_hash = hash_int.to_bytes(32, "little")[::-1].hex()
        log.warning("BLOCK CANDIDATE job=%s height=%d worker=%r hash=%s header=%s", job.job_id, job.height,
                    worker, block_hash, header.hex())
        self.services.metrics.blocks += 1
        if self.services.on_block is not None:
            coinbase = (bytes.fromhex(job.coinb1) + self._extranonce1_bytes + bytes.fromhex(extranonce2)
                        + bytes.fromhex(job.coinb2))
            self.services.on_block({"job_id": job.job_id, "height": job.height, "worker": worker,
                                    "block_hash": block_hash, "header": header.hex(), "job": job,
                                    "coinbase": coinbase, "connection_id": self.connection_id})


_HANDLERS = {
    "mining.subscribe": Session.subscribe,
    "mining.authorize": Session.authorize,
    "mining.submit": Session.submit,
    "mining.configure": Session.configure,
    "mining.suggest_difficulty": Session.suggest_difficulty,
    "mining.suggest_target": Session.suggest_target,
    "mining.extranonce.subscribe": Session.extranonce_subscribe,
    "mining.get_transactions": Session.get_transactions,
    "client.get_version": Session.get_version,
}


_PASSWORD_DIFFICULTY = re.compile(r"(?:^|[,; ])(?:d|diff)=([0-9.eE+-]+)(?:$|[,; ])")


def password_difficulty(password) -> float | None:
    """`d=NUMBER` (or `diff=`) among the password's comma, semicolon or space separated options, as NiceHash-style
    rentals send it; None when absent or not a positive number."""
    if not isinstance(password, str):
        return None
    match = _PASSWORD_DIFFICULTY.search(password[:256])
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None


def _is_hex(text: str) -> bool:
    return _HEX.match(text) is not None


def _optional_str(params: list, index: int, what: str, request_id) -> str | None:
    if len(params) <= index or params[index] is None:
        return None
    value = params[index]
    if not isinstance(value, str):
        raise StratumError(OTHER, f"Invalid params: {what} must be a string", request_id)
    return value[:256]


def _hex_option(value, default: int) -> int:
    if isinstance(value, str) and _HEX8.match(value.rjust(8, "0")):
        return int(value, 16)
    return default

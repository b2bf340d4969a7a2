"""Sans-IO per-miner Stratum state machine: a request line in, reply lines out.

`Session.receive_line` is the one place where exceptions become error replies. Handlers are looked up in a
dispatch table; every collaborator (allocator, job book, recorder, stats, clock) is passed in through `Services`,
so the whole protocol is tested without sockets or a database.
"""
from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from gstratum.mining import bitcoin
from gstratum.protocol import rpc
from gstratum.mining.jobs import Job, JobBook
from gstratum.protocol.rpc import (DUPLICATE_SHARE, JOB_NOT_FOUND, LOW_DIFFICULTY, NOT_SUBSCRIBED, OTHER, UNAUTHORIZED, Request,
                  Response, StratumError)
from gstratum.protocol.vardiff import Vardiff, VardiffPolicy

log = logging.getLogger(__name__)

POOL_VERSION_MASK = 0x1FFFE000
MAX_NTIME_AHEAD = 7200
MAX_WORKER_NAME = 256
SERVER_VERSION = "gstratum/0.1"
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


@functools.lru_cache(maxsize=4096)
def share_target(difficulty: float) -> int:
    """Difficulty -> target, exact and computed once per distinct difficulty (Fraction arithmetic is slow)."""
    return bitcoin.target_from_difficulty(difficulty)


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class Session:
    """One miner's protocol state. Not thread-safe; driven by one connection greenlet (and the broadcaster)."""

    # slots and a class-level dispatch table: 10,000 sessions without a per-instance dict or a dict of bound methods
    __slots__ = ("services", "connection_id", "remote_addr", "subscribed", "session_id", "extranonce1",
                 "_extranonce1_bytes", "workers", "difficulty", "_changes", "_first_seq", "_seen", "_aliases",
                 "_retargets", "version_mask", "suggested", "minimum_difficulty", "requests", "errors", "vardiff",
                 "last_activity")

    def __init__(self, services: Services, connection_id: str, remote_addr: str = "0.0.0.0") -> None:
        self.services = services
        self.connection_id = connection_id
        self.remote_addr = remote_addr
        self.subscribed = False
        self.session_id: str | None = None
        self.extranonce1: str | None = None
        self._extranonce1_bytes = b""
        self.workers: set[str] = set()
        self.difficulty = services.difficulty
        self._changes: list[tuple[int, float]] = [(0, self.difficulty)]   # (first job seq, difficulty)
        self._first_seq = 1 << 62                                          # no job sent yet
        self._seen: dict[str, set] = {}
        self._aliases: dict[str, tuple[str, float]] = {}   # re-sent job's per-miner id -> (job id, difficulty)
        self._retargets = 0
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

    # -- jobs going out -----------------------------------------------------------------------------------------
    # Each share is judged at the difficulty in force when its job was sent to this miner. Rather than writing
    # an entry per miner per broadcast, the session keeps the few moments its difficulty changed, as positions in
    # the job sequence: a broadcast then costs one shared line and one send per miner, nothing else. (The
    # broadcast asks for `broadcast_lines` only when `vardiff.since` says a retarget may be due.)
    def broadcast_lines(self, job: Job) -> list[bytes]:
        """What a new job costs this miner when a retarget is due: set_difficulty first, then the job."""
        lines = []
        proposal = self.vardiff.proposal(self.difficulty, self.services.clock())
        if proposal is not None:
            lines.append(self._set_difficulty(self._bounded(proposal), applies_from=job.seq))
        lines.append(job.notify_line())
        return lines

    def _set_difficulty(self, difficulty: float, applies_from: int | None = None) -> bytes:
        """Change the difficulty for jobs from sequence `applies_from` on (default: jobs not yet sent)."""
        self.difficulty = difficulty
        start = self.services.jobs.latest_seq + 1 if applies_from is None else applies_from
        self._changes.append((start, difficulty))
        if len(self._changes) > 32:
            del self._changes[:-32]
        return rpc.encode_notification("mining.set_difficulty", [difficulty])

    def job_and_difficulty(self, job_id: str) -> tuple[Job | None, float]:
        """The live job a submitted id names and the difficulty it was sent at; (None, current) if stale or never
        sent to this miner."""
        alias = self._aliases.get(job_id)
        if alias is not None:
            return self.services.jobs.get(alias[0]), alias[1]
        job = self.services.jobs.get(job_id)
        if job is None or job.seq < self._first_seq:
            return None, self.difficulty
        for start, difficulty in reversed(self._changes):
            if job.seq >= start:
                return job, difficulty
        return job, self._changes[0][1]

    def _retarget_lines(self, difficulty: float) -> list[bytes]:
        """set_difficulty, then the current job again under a new id (clean_jobs false) so the new difficulty
        takes effect. The new id matters: shares the miner still finds on the job as first sent are judged at
        the old difficulty, shares on the re-sent one at the new difficulty."""
        lines = [self._set_difficulty(difficulty)]
        current = self.services.jobs.current
        if current is not None and self.subscribed:
            self._retargets += 1
            alias = f"{current.job_id}r{self._retargets}"
            self._aliases[alias] = (current.job_id, difficulty)
            if len(self._aliases) > 64:
                self._aliases = {k: v for k, v in self._aliases.items() if v[0] in self.services.jobs}
            params = current.notify_params(False)
            params[0] = alias
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
        if self.suggested is not None:
            self.difficulty = self._bounded(self.suggested)
        self.services.metrics.subscribes += 1
        self.services.recorder.subscribed(self.connection_id, session, difficulty_sub_id, extranonce1,
                                          self.services.extranonce2_size, user_agent, requested, resumed)
        if resumption is not None:
            resumption.remember(session, difficulty_sub_id, extranonce1)
        result = [[["mining.set_difficulty", difficulty_sub_id], ["mining.notify", session]], extranonce1,
                  self.services.extranonce2_size]
        current = self.services.jobs.current
        self._first_seq = current.seq if current is not None else self.services.jobs.latest_seq + 1
        self._changes = [(0, self.difficulty)]
        lines = [rpc.encode_result(req.id, result),
                 rpc.encode_notification("mining.set_difficulty", [self.difficulty])]
        if current is not None:
            lines.append(current.notify_line(True))
        self.vardiff.reset(self.services.clock())
        return lines

    def authorize(self, req: Request) -> list[bytes]:
        if not req.params or not isinstance(req.params[0], str) or not req.params[0].strip():
            raise StratumError(OTHER, "Invalid params: worker name must be a non-empty string", req.id)
        worker = req.params[0]
        if len(worker) > MAX_WORKER_NAME:
            raise StratumError(OTHER, f"Invalid params: worker name longer than {MAX_WORKER_NAME}", req.id)
        self.workers.add(worker)
        self.services.metrics.authorizes += 1
        self.services.recorder.authorized(self.connection_id, worker, self.remote_addr, True)
        return [rpc.encode_result(req.id, True)]

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
                            self.difficulty = self.minimum_difficulty
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
        job, difficulty = self.job_and_difficulty(job_id) if self.subscribed else (None, self.difficulty)
        extranonce2 = ntime = nonce = version_bits = achieved = None
        try:
            if not self.subscribed:
                raise StratumError(NOT_SUBSCRIBED, "Not subscribed", req.id)
            if worker not in self.workers:
                raise StratumError(UNAUTHORIZED, "Unauthorized worker", req.id)
            extranonce2, ntime, nonce, version_bits = self._parse_submit(params, req.id)
            if job is None:
                raise StratumError(JOB_NOT_FOUND, "Job not found (stale)", req.id)
            ntime_int = int(ntime, 16)
            if ntime_int < job.ntime_int or ntime_int > now + MAX_NTIME_AHEAD:
                raise StratumError(OTHER, "ntime out of range", req.id)
            version = job.version_int
            if version_bits is not None:
                bits = int(version_bits, 16)
                if bits & ~self.version_mask:
                    raise StratumError(OTHER, "Version bits outside the negotiated mask", req.id)
                version = (version & ~self.version_mask) | (bits & self.version_mask)
            key = (extranonce2, ntime, nonce, version)
            seen = self._seen.get(job.job_id)
            if seen is None:
                if len(self._seen) >= services.jobs.keep:
                    self._seen = {k: v for k, v in self._seen.items() if k in services.jobs}
                seen = self._seen[job.job_id] = set()
            if key in seen:
                raise StratumError(DUPLICATE_SHARE, "Duplicate share", req.id)
            template = job.template
            header = template.header(self._extranonce1_bytes, bytes.fromhex(extranonce2), ntime, nonce, version)
            hash_int = template.hash_int(header)
            achieved = bitcoin.difficulty_from_hash(hash_int)
            if hash_int > share_target(difficulty):
                raise StratumError(LOW_DIFFICULTY, "Low difficulty share", req.id)
            seen.add(key)
            if services.network_target is not None and hash_int <= services.network_target(job):
                self._found_block(job, worker, header, hash_int)
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

    def _found_block(self, job: Job, worker: str, header: bytes, hash_int: int) -> None:
        block_hash = hash_int.to_bytes(32, "little")[::-1].hex()
        log.warning("BLOCK CANDIDATE job=%s height=%d worker=%r hash=%s header=%s", job.job_id, job.height,
                    worker, block_hash, header.hex())
        self.services.metrics.blocks += 1
        if self.services.on_block is not None:
            self.services.on_block({"job_id": job.job_id, "height": job.height, "worker": worker,
                                    "block_hash": block_hash, "header": header.hex(),
                                    "connection_id": self.connection_id})


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

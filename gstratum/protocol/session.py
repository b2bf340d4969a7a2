"""Stratum V1's front end, sans-IO: a request line in, what should happen out (`Output`: replies, rows, blocks).

`Session.receive_line` is the one place where exceptions become error replies. Handlers are looked up in a
dispatch table. Everything protocol-free — the job book, the share verdict, the duplicate ledger, vardiff, the rows
and counters — is the shared `MiningCore` and this miner's `Channel` (gstratum.mining.channel), the same ones the V2
front end drives. The session never does I/O: a subscribe needs an extranonce1 (a database sequence) or a resumed
session (a lookup, perhaps a hand-over from another process), so it returns a `SubscribeRequest` as pending work;
the connection glue resolves it and hands the answer back through `complete_subscribe`.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gstratum import __version__
from gstratum.mining import bitcoin
from gstratum.mining.channel import Channel, MiningCore, Output
from gstratum.mining.jobs import Job
from gstratum.mining.vardiff import VardiffPolicy
from gstratum.protocol import rpc
from gstratum.protocol.notify import notify_line, notify_params
from gstratum.protocol.rpc import NOT_SUBSCRIBED, OTHER, UNAUTHORIZED, Request, Response, StratumError

log = logging.getLogger(__name__)

POOL_VERSION_MASK = 0x1FFFE000
MAX_WORKER_NAME = 256
# Worker names one connection may authorize. A proxy carries many devices on one connection, each under its own
# name (farm proxies, NiceHash-style rentals), so the cap is generous; it exists so that one connection cannot
# grow the pool's per-worker tables (names, stats, rows) without bound.
MAX_WORKERS_PER_CONNECTION = 1024
SERVER_VERSION = f"gstratum/{__version__}"
_HEX8 = re.compile(r"[0-9a-fA-F]{8}\Z")
_HEX = re.compile(r"[0-9a-fA-F]*\Z")


@dataclass
class Services:
    """What a session needs from the rest of the pool, passed in so the protocol runs without sockets or a database:
    the shared core, and this port's own settings."""

    core: MiningCore
    difficulty: float = 1.0
    extranonce2_size: int = 4
    vardiff: VardiffPolicy = field(default_factory=lambda: VardiffPolicy(enabled=False))
    clock: Callable[[], float] = time.time
    payout_for: Callable[[str], bytes] | None = None   # solo: user (an address) -> its script; ValueError if invalid
    login_address: Callable[[str], str] | None = None  # PPLNS: user -> the address as the node normalises it

    @property
    def jobs(self):
        return self.core.jobs


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A mining.subscribe the session cannot answer without I/O: the glue allocates or resumes, then calls back."""

    request_id: Any
    user_agent: str | None
    requested_session: str | None       # a subscription id the miner asks to resume, as sent


@dataclass(frozen=True, slots=True)
class Subscription:
    """The answer to a SubscribeRequest: the session's id and its extranonce1 (16 hex), fresh or resumed."""

    session_id: str
    extranonce1: str
    resumed: bool = False


class V1Output(Output):
    """An Output with, at most, one subscribe waiting for the glue."""

    __slots__ = ("pending",)

    def __init__(self, send: list[bytes] | None = None, pending: SubscribeRequest | None = None) -> None:
        super().__init__(send)
        self.pending = pending


class RefusedLogin(StratumError):
    """mining.authorize refused for what the login says (solo: not an address of the node's chain)."""


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class Session:
    """One miner's Stratum V1 protocol state. Not thread-safe; driven by one connection greenlet (and the
    broadcaster)."""

    # slots and a class-level dispatch table: 10,000 sessions without a per-instance dict or a dict of bound methods
    __slots__ = ("services", "core", "channel", "connection_id", "remote_addr", "subscribed", "session_id",
                 "extranonce1", "workers", "suggested", "minimum_difficulty", "requests", "errors", "last_activity",
                 "subscribing")

    def __init__(self, services: Services, connection_id: str, remote_addr: str = "0.0.0.0") -> None:
        self.services = services
        self.core = services.core
        now = services.clock()
        self.channel = Channel(connection_id, services.difficulty, services.vardiff, now)
        self.connection_id = connection_id
        self.remote_addr = remote_addr
        self.subscribed = False
        self.subscribing = False
        self.session_id: str | None = None
        self.extranonce1: str | None = None
        self.workers: dict[str, str | None] = {}     # authorized names -> the PPLNS address each one credits
        self.suggested: float | None = None
        self.minimum_difficulty = services.vardiff.min_difficulty
        self.requests = 0
        self.errors = 0
        self.last_activity = now

    # -- the one place where exceptions become replies ---------------------------------------------------------
    def receive_line(self, line: bytes) -> V1Output:
        """Handle one request line; return what should happen. Never raises for any input."""
        self.requests += 1
        self.last_activity = self.services.clock()
        request_id = None
        try:
            message = rpc.decode(line)
            if isinstance(message, Response):
                return V1Output()
            request_id = message.id
            handler = _HANDLERS.get(message.method)
            if handler is None:
                raise StratumError(OTHER, f"Unknown method {message.method[:64]!r}")
            return handler(self, message)
        except StratumError as err:
            self.errors += 1
            return V1Output([rpc.encode_error(err.request_id if err.request_id is not None else request_id, err)])
        except Exception:  # a bug must cost one reply, not the miner's connection
            self.errors += 1
            log.exception("internal error handling a request from %s", self.connection_id)
            return V1Output([rpc.encode_error(request_id, StratumError(OTHER, "Internal error"))])

    @property
    def difficulty(self) -> float:
        """The difficulty the next job is sent at."""
        return self.channel.schedule.current

    @property
    def payout_script(self) -> bytes | None:
        return self.channel.payout_script

    # -- jobs going out -----------------------------------------------------------------------------------------
    # (the broadcast asks for `broadcast_lines` only when `channel.vardiff.since` says a retarget may be due; see
    # gstratum.mining.difficulty for how each job's difficulty is remembered)
    def broadcast_lines(self, job: Job) -> list[bytes]:
        """What a new job costs this miner when it is not the shared line: set_difficulty first when a retarget is
        due, then the job (in solo mode, the variant paying this miner; nothing before it authorized)."""
        channel = self.channel
        if self.services.payout_for is not None and channel.payout_script is None:
            return []
        lines = []
        proposal = channel.vardiff.proposal(self.difficulty, self.services.clock())
        if proposal is not None:
            lines.append(self._set_difficulty(self._bounded(proposal), applies_from=job.seq))
        lines.append(notify_line(job.for_payout(channel.payout_script)))
        return lines

    def _set_difficulty(self, difficulty: float, applies_from: int | None = None) -> bytes:
        """Change the difficulty for jobs from sequence `applies_from` on (default: jobs not yet sent)."""
        start = self.services.jobs.latest_seq + 1 if applies_from is None else applies_from
        self.channel.schedule.change(difficulty, start)
        return rpc.encode_notification("mining.set_difficulty", [difficulty])

    def _retarget_lines(self, difficulty: float) -> list[bytes]:
        """set_difficulty, then the current job again under a new id (clean_jobs false) so the new difficulty
        takes effect at once (DifficultySchedule.resend). Nothing when the difficulty does not change."""
        if difficulty == self.difficulty:
            return []
        lines = [self._set_difficulty(difficulty)]
        current = self.services.jobs.current
        script = self.channel.payout_script
        if current is not None and self.subscribed and (self.services.payout_for is None or script):
            params = notify_params(current.for_payout(script), False)
            params[0] = self.channel.schedule.resend(current, difficulty)
            lines.append(rpc.encode_notification("mining.notify", params))
        return lines

    def retarget(self, difficulty: float) -> list[bytes]:
        """An operator's difficulty for this miner (within its bounds): set_difficulty and the job re-sent."""
        return self._retarget_lines(self._bounded(difficulty))

    def _bounded(self, difficulty: float) -> float:
        policy = self.services.vardiff
        return clamp(difficulty, max(policy.min_difficulty, self.minimum_difficulty), policy.max_difficulty)

    # -- handlers ---------------------------------------------------------------------------------------------
    def subscribe(self, req: Request) -> V1Output:
        if self.subscribed or self.subscribing:
            raise StratumError(OTHER, "Already subscribed", req.id)
        params = req.params
        user_agent = _optional_str(params, 0, "user agent", req.id)
        requested = _optional_str(params, 1, "session id", req.id)
        self.subscribing = True
        return V1Output(pending=SubscribeRequest(req.id, user_agent, requested))

    def complete_subscribe(self, request: SubscribeRequest, result: Subscription | StratumError) -> V1Output:
        """The glue's answer to a pending subscribe: a fresh or resumed subscription, or the error to send."""
        self.subscribing = False
        if isinstance(result, StratumError):
            self.errors += 1
            return V1Output([rpc.encode_error(request.request_id, result)])
        session, extranonce1 = result.session_id, result.extranonce1
        difficulty_sub_id = session + "d"   # distinct from the session (notify) id, and derived from it
        self.subscribed = True
        self.session_id = session
        self.extranonce1 = extranonce1
        channel = self.channel
        channel.extranonce1 = bytes.fromhex(extranonce1)
        difficulty = self._bounded(self.suggested) if self.suggested is not None else self.difficulty
        core = self.core
        core.metrics.subscribes += 1
        out = V1Output()
        out.row(core.recorder.subscription_row(self.connection_id, session, difficulty_sub_id, extranonce1,
                                               self.services.extranonce2_size, request.user_agent,
                                               request.requested_session, result.resumed))
        reply = [[["mining.set_difficulty", difficulty_sub_id], ["mining.notify", session]], extranonce1,
                 self.services.extranonce2_size]
        current = self.services.jobs.current
        # A fresh session was sent no job before this one; a resumed session may hold work on any job still live
        # (its previous connection got them from the same pool stream), judged at its starting difficulty.
        first = 0 if result.resumed else current.seq if current is not None else self.services.jobs.latest_seq + 1
        channel.schedule.start(first, difficulty)
        out.send += [rpc.encode_result(request.request_id, reply),
                     rpc.encode_notification("mining.set_difficulty", [self.difficulty])]
        if current is not None and self.services.payout_for is None:   # solo: the job comes with authorize
            out.send.append(notify_line(current, True))
        channel.vardiff.reset(self.services.clock())
        return out

    def authorize(self, req: Request) -> V1Output:
        if not req.params or not isinstance(req.params[0], str) or not req.params[0].strip():
            raise StratumError(OTHER, "Invalid params: worker name must be a non-empty string", req.id)
        worker = req.params[0]
        if len(worker) > MAX_WORKER_NAME:
            raise StratumError(OTHER, f"Invalid params: worker name longer than {MAX_WORKER_NAME}", req.id)
        known = worker in self.workers
        if not known and len(self.workers) >= MAX_WORKERS_PER_CONNECTION:
            raise StratumError(UNAUTHORIZED, f"Too many workers on one connection (at most "
                                             f"{MAX_WORKERS_PER_CONNECTION})", req.id)
        out = V1Output()
        lines = []
        address = None
        try:
            if self.services.payout_for is not None:
                lines = self._solo_payout(worker, req.id)
            elif self.services.login_address is not None:
                address = self._pplns_address(worker, req.id)
        except RefusedLogin as err:     # recorded: an operator wants to see who tried to mine to what
            self.errors += 1
            out.send.append(rpc.encode_error(req.id, err))
            out.row(self.core.recorder.authorization_row(self.connection_id, worker, self.remote_addr, False))
            return out
        requested = password_difficulty(req.params[1] if len(req.params) > 1 else None)
        if requested is not None:       # d=NUMBER in the password: this miner's start difficulty, within bounds
            self.suggested = requested
            if self.subscribed:
                lines += self._retarget_lines(self._bounded(requested))
        if not known:                   # re-authorizing a name this connection holds adds no row
            self.workers[worker] = address
            self.core.metrics.authorizes += 1
            out.row(self.core.recorder.authorization_row(self.connection_id, worker, self.remote_addr, True))
        out.send += [rpc.encode_result(req.id, True)] + lines
        return out

    def _solo_payout(self, worker: str, request_id) -> list[bytes]:
        """Solo: the user part of ADDRESS[.WORKER] is the address this connection's coinbase pays. Refused with a
        clear message when it is not an address of the node's chain: never a job that pays nobody."""
        address = worker.split(".", 1)[0]
        try:
            script = self.services.payout_for(address)
        except ValueError as exc:
            raise RefusedLogin(UNAUTHORIZED, f"Invalid payout address: {exc}"[:300], request_id) from None
        channel = self.channel
        if channel.payout_script is not None:
            if script != channel.payout_script:
                raise StratumError(UNAUTHORIZED, "One payout address per connection (solo mode)", request_id)
            return []
        channel.payout_script = script
        current = self.services.jobs.current
        return [notify_line(current.for_payout(script), True)] if current is not None and self.subscribed else []

    def _pplns_address(self, worker: str, request_id) -> str:
        """PPLNS: the user part of ADDRESS[.WORKER] is the address this worker's shares credit, refused with a clear
        message when it is not an address of the node's chain (like solo)."""
        try:
            return self.services.login_address(worker.split(".", 1)[0])
        except ValueError as exc:
            raise RefusedLogin(UNAUTHORIZED, f"Invalid payout address: {exc}"[:300], request_id) from None

    def configure(self, req: Request) -> V1Output:
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
                self.channel.version_mask = POOL_VERSION_MASK & mask
                result["version-rolling"] = True
                result["version-rolling.mask"] = f"{self.channel.version_mask:08x}"
            elif ext == "minimum-difficulty":
                value = options.get("minimum-difficulty.value")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    self.minimum_difficulty = self._bounded(float(value))
                    result["minimum-difficulty"] = True
                    if self.difficulty < self.minimum_difficulty:
                        lines = self._retarget_lines(self.minimum_difficulty) if self.subscribed else []
                        if not self.subscribed:
                            self.channel.schedule.current = self.minimum_difficulty
                else:
                    result["minimum-difficulty"] = False
            elif ext == "subscribe-extranonce":
                result["subscribe-extranonce"] = True
            else:
                result[ext[:64]] = False
        return V1Output([rpc.encode_result(req.id, result)] + lines)

    def suggest_difficulty(self, req: Request) -> V1Output:
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
        return V1Output(lines)

    def suggest_target(self, req: Request) -> V1Output:
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

    def extranonce_subscribe(self, req: Request) -> V1Output:
        return V1Output([rpc.encode_result(req.id, True)])

    def get_transactions(self, req: Request) -> V1Output:
        return V1Output([rpc.encode_result(req.id, [])])

    def get_version(self, req: Request) -> V1Output:
        return V1Output([rpc.encode_result(req.id, SERVER_VERSION)])

    # -- shares -----------------------------------------------------------------------------------------------
    def submit(self, req: Request) -> V1Output:
        """Parse one share and hand it to the shared core (checks in the order the protocol's error codes imply).
        This is the pool's hottest path: it keeps to locals."""
        core = self.core
        params = req.params
        if not self.subscribed:
            core.unauthorized(NOT_SUBSCRIBED)
            raise StratumError(NOT_SUBSCRIBED, "Not subscribed", req.id)
        worker = params[0] if params and type(params[0]) is str else ""
        if worker not in self.workers:
            core.unauthorized(UNAUTHORIZED)
            raise StratumError(UNAUTHORIZED, "Unauthorized worker", req.id)
        job_id = params[1] if len(params) > 1 and type(params[1]) is str else ""
        now = self.services.clock()
        try:
            extranonce2, ntime, nonce, version_bits = self._parse_submit(params, req.id)
        except StratumError as err:
            out = V1Output([rpc.encode_error(req.id, err)])
            out.row(core.malformed(self.channel, worker, job_id, err.message, now).row)
            self.errors += 1
            return out
        outcome = core.submit(self.channel, worker, job_id, bytes.fromhex(extranonce2), int(ntime, 16),
                              int(nonce, 16), None if version_bits is None else int(version_bits, 16), now,
                              (extranonce2, ntime, nonce, version_bits), self.workers[worker])
        if outcome.code is not None:
            self.errors += 1
            out = V1Output([rpc.encode_error(req.id, StratumError(outcome.code, outcome.message, req.id))])
            out.row(outcome.row)
            return out
        if outcome.block is not None:
            log.warning("BLOCK CANDIDATE job=%s height=%d worker=%r hash=%s header=%s", outcome.block.job_id,
                        outcome.block.height, worker, outcome.block.block_hash, outcome.block.header.hex())
        out = V1Output([rpc.encode_accepted(req.id)])
        out.row(outcome.row)
        out.block(outcome.block)
        if outcome.retarget is not None:
            out.send += self._retarget_lines(self._bounded(outcome.retarget))
        return out

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


def handle_line(session: Session, line: bytes, resolve: Callable[[SubscribeRequest, Session], Subscription]
                ) -> V1Output:
    """One line through the session, a pending subscribe resolved by `resolve` (the glue's allocator and resumption,
    or an in-memory stand-in in tests and tools); its StratumError becomes the reply."""
    output = session.receive_line(line)
    if output.pending is not None:
        request = output.pending
        try:
            result = resolve(request, session)
        except StratumError as err:
            result = err
        output = session.complete_subscribe(request, result)
    return output


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

"""What the pool records, as rows: one table spec per event kind and a Recorder that builds the rows.

The Recorder only builds tuples and hands them to a sink (the Writer's `put`, or a list in tests): it never blocks
and never touches the database, so recording costs nothing on the reply path.
Row ids are generated here, before the write, so a retried or replayed batch is idempotent (ON CONFLICT DO NOTHING).
"""
from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable

import ujson


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    template: str                          # one VALUES tuple (rare tables: jobs, blocks, admin actions)
    types: tuple[str, ...] | None = None   # column types for the column-wise insert ("epoch": seconds)

    @property
    def insert_sql(self) -> str:
        return f"INSERT INTO {self.name} ({', '.join(self.columns)}) VALUES %s ON CONFLICT DO NOTHING"

    def column_arrays(self, rows: list[tuple]) -> list[str]:
        """The rows as one PostgreSQL array literal per column, the parameters of `unnest_sql`.

        Why not let psycopg2 adapt Python lists: it builds an adapter object per element and escapes each one, ~15 µs
        of client CPU per row, which made the database writer the largest cost of a miner's handshake. Here a column
        is one str.join (text values quoted for the array syntax), and psycopg2 escapes a single string."""
        return [_ARRAY_FORMATTERS[kind](column) for kind, column in zip(self.types, zip(*rows))]

    @property
    def unnest_sql(self) -> str:
        """One array parameter per column (see `column_arrays`): a batch of any size is one statement, and the
        database parses the arrays in C."""
        arrays = ", ".join(f"%s::{'float8' if t == 'epoch' else t}[]" for t in self.types)
        names = ", ".join(f"c{i}" for i in range(len(self.columns)))
        values = ", ".join(f"to_timestamp(c{i})" if t == "epoch" else f"c{i}" for i, t in enumerate(self.types))
        return (f"INSERT INTO {self.name} ({', '.join(self.columns)}) SELECT {values} FROM unnest({arrays}) "
                f"AS u({names}) ON CONFLICT DO NOTHING")


def _quoted(value: str) -> str:
    value = str(value)   # a non-str (never expected) still becomes valid text, not a writer crash
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text_array(values) -> str:
    """Any text (client-supplied worker names, job ids...): every element double-quoted and escaped."""
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def _plain_array(values) -> str:
    """Values whose text form never needs quoting: ints, uuids made here."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _float_array(values) -> str:
    """repr() of a float reads back exactly (shortest round-trip form), of an int as itself; PostgreSQL reads inf and
    nan too."""
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


def _bool_array(values) -> str:
    return "{" + ",".join("NULL" if v is None else ("t" if v else "f") for v in values) + "}"


_ARRAY_FORMATTERS = {"text": _text_array, "jsonb": _text_array, "inet": _text_array, "uuid": _plain_array, "int2": _plain_array,
                     "int4": _plain_array, "int8": _plain_array, "float8": _float_array, "epoch": _float_array,
                     "bool": _bool_array}

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("connections", ("id", "server_id", "remote_addr", "remote_port", "local_port", "opened_at"),
              "(%s, %s, %s, %s, %s, to_timestamp(%s))", ("uuid", "text", "inet", "int4", "int4", "epoch")),
        Table("disconnections", ("connection_id", "closed_at", "reason", "requests", "live_shares"),
              "(%s, to_timestamp(%s), %s, %s, %s::jsonb)", ("uuid", "epoch", "text", "int4", "jsonb")),
        Table("subscriptions", ("id", "connection_id", "session_id", "difficulty_sub_id", "extranonce1",
                                "extranonce2_size", "user_agent", "requested_session", "resumed", "subscribed_at"),
              "(%s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
              ("uuid", "uuid", "text", "text", "text", "int2", "text", "text", "bool", "epoch")),
        Table("authorizations", ("id", "connection_id", "worker", "remote_addr", "authorized", "requested_at"),
              "(%s, %s, %s, %s, %s, to_timestamp(%s))", ("uuid", "uuid", "text", "inet", "bool", "epoch")),
        Table("jobs", ("job_id", "server_id", "cluster", "height", "prevhash", "coinb1", "coinb2", "merkle_branch",
                       "version", "nbits", "ntime", "clean_jobs", "created_at"),
              "(%s, %s, %s, %s, %s, %s, %s, %s::text[], %s, %s, %s, %s, to_timestamp(%s))"),
        Table("shares", ("id", "connection_id", "worker", "job_id", "extranonce2", "ntime", "nonce", "version_bits",
                         "difficulty", "achieved", "accepted", "error_code", "submitted_at"),
              "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
              ("uuid", "uuid", "text", "text", "text", "text", "text", "text", "float8", "float8", "bool", "int2",
               "epoch")),
        Table("blocks", ("id", "connection_id", "worker", "username", "job_id", "height", "block_hash", "prevhash",
                         "header", "reward", "results", "status", "found_at"),
              "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, to_timestamp(%s))"),
        Table("admin_actions", ("id", "action", "target", "params", "source", "acted_at"),
              "(%s, %s, %s, %s::jsonb, %s, to_timestamp(%s))"),
    )
}

Sink = Callable[[str, tuple], None]
_INFINITY = float("inf")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text(value: str | None) -> str | None:
    """Client-supplied text as PostgreSQL (and the journal's UTF-8) can store it: NUL, which `text` cannot hold, and
    lone surrogates (a JSON `"\\ud800"` decodes to one; it has no UTF-8 form, so psycopg2 and ujson refuse it) become
    U+FFFD. JSON decoding pairs valid surrogates into one character, so any left are lone. ASCII (nearly every
    worker name) costs two scans in C."""
    if value is None:
        return None
    if value.isascii():
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    return _UNSTORABLE.sub("\ufffd", value)


def json_text(value: str | None) -> str | None:
    """JSON text (admin parameters) as a `jsonb` column takes it: PostgreSQL refuses the escapes `\\u0000` and
    lone `\\udXXX` as well as the raw characters, so the document is decoded, its strings (keys too) cleaned
    with `text`, and encoded again. Text that is not JSON is stored as a JSON string."""
    if value is None:
        return None
    try:
        decoded = ujson.loads(value)
    except ValueError:
        decoded = value
    return ujson.dumps(_clean(decoded), ensure_ascii=False, escape_forward_slashes=False)


def _clean(value):
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def storable(row: tuple) -> tuple:
    """A row with every text in it (nested lists too) cleaned by `text`: the journal's fallback for a row that
    did not encode as it was."""
    return tuple(_clean(v) if isinstance(v, (str, list, tuple, dict)) else v for v in row)


def user_of(worker: str) -> str:
    """A login is USER[.WORKER]: the user is what comes before the first dot (the pool account, or in solo mode the
    payout address)."""
    return worker.split(".", 1)[0]


class RowIds:
    """Unique row ids without a database round trip: 64 random bits per process, then a counter (as uuid hex)."""

    def __init__(self) -> None:
        self._prefix = f"{secrets.randbits(64):016x}"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def make_server_id() -> str:
    """Names this process in rows: host, pid and start time (pids repeat across restarts)."""
    return f"{os.uname().nodename}:{os.getpid()}:{int(time.time())}"


class Recorder:
    """Turns pool events into rows for the writer."""

    def __init__(self, sink: Sink, server_id: str, cluster: str = "gstratum",
                 clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self.server_id = server_id
        self.cluster = cluster
        self.clock = clock
        self.new_id = RowIds()

    def connection_opened(self, connection_id: str, remote_addr: str, remote_port: int, local_port: int) -> None:
        self._sink("connections", (connection_id, self.server_id, remote_addr, remote_port, local_port,
                                   self.clock()))

    def connection_closed(self, connection_id: str, reason: str, requests: int,
                          live_shares: dict | None = None) -> None:
        """`live_shares`: the session's credited shares of live work (ShareLedger.accepted_of), for a process
        that resumes the session next (gstratum.storage.resumption); None when there are none."""
        self._sink("disconnections", (connection_id, self.clock(), text(reason), requests,
                                      ujson.dumps(live_shares) if live_shares else None))

    def put(self, table: str, row: tuple) -> None:
        """Hand a row built elsewhere (a session's Output) to the sink."""
        self._sink(table, row)

    def subscription_row(self, connection_id: str, session_id: str, difficulty_sub_id: str, extranonce1: str,
                         extranonce2_size: int, user_agent: str | None, requested_session: str | None,
                         resumed: bool) -> tuple[str, tuple]:
        return "subscriptions", (self.new_id(), connection_id, session_id, difficulty_sub_id, extranonce1,
                                 extranonce2_size, text(user_agent), text(requested_session), resumed, self.clock())

    def subscribed(self, *args) -> None:
        self._sink(*self.subscription_row(*args))

    def authorization_row(self, connection_id: str, worker: str, remote_addr: str,
                          authorized: bool) -> tuple[str, tuple]:
        return "authorizations", (self.new_id(), connection_id, text(worker), remote_addr, authorized, self.clock())

    def authorized(self, *args) -> None:
        self._sink(*self.authorization_row(*args))

    def _job_row(self, job) -> tuple:
        return (job.job_id, self.server_id, self.cluster, job.height, job.prevhash, job.coinb1, job.coinb2,
                list(job.merkle_branch), job.version, job.nbits, job.ntime, job.clean_jobs, job.created_at)

    def job(self, job) -> None:
        self._sink("jobs", self._job_row(job))

    def job_statement(self, job) -> tuple[str, tuple]:
        """The job's row as one INSERT statement, for a caller that must commit it in its own transaction (the job
        stream publishes a job's id with NOTIFY in the transaction that inserts its row)."""
        spec = TABLES["jobs"]
        return (f"INSERT INTO jobs ({', '.join(spec.columns)}) VALUES {spec.template} ON CONFLICT DO NOTHING",
                self._job_row(job))

    def share_row(self, connection_id: str, worker: str, job_id: str, extranonce2: str | None, ntime: str | None,
                  nonce: str | None, version_bits: str | None, difficulty: float, achieved: float | None,
                  error_code: int | None, at: float | None = None, address: str | None = None) -> tuple[str, tuple]:
        """`at`: when the share arrived (the caller's clock reading), else now. `address`: the PPLNS address an
        accepted share credits (a 14th value the shares table does not store: the writer puts it in pplns_shares)."""
        if achieved is not None and achieved == _INFINITY:
            achieved = 1e300
        return "shares", (self.new_id(), connection_id, text(worker), text(job_id), extranonce2, ntime, nonce,
                          version_bits, difficulty, achieved, error_code is None, error_code,
                          self.clock() if at is None else at, address)

    def share(self, *args, **kwargs) -> None:
        self._sink(*self.share_row(*args, **kwargs))

    def block(self, found: dict) -> None:
        """A block candidate (random jobs) or a block submitted to the node, with its answers and status."""
        self._sink("blocks", (self.new_id(), found["connection_id"], text(found["worker"]),
                              text(user_of(found["worker"])), found["job_id"], found["height"], found["block_hash"],
                              found.get("prevhash"), found["header"], found.get("reward"),
                              found.get("results", "{}"), found.get("status", "candidate"), self.clock()))

    def admin_action(self, action: str, target: str | None, params: str, source: str) -> None:
        """`params` is the action's JSON text."""
        self._sink("admin_actions", (self.new_id(), text(action), text(target), json_text(params), text(source),
                                     self.clock()))

"""The spill journal: rows the database cannot take in time go to an append-only file on local disk.

One file per process (held with an exclusive flock while the process lives), written as JSON lines and fsync'd in
groups by the writer loop. When the database is back — and at start-up, for files left by a process that died —
files are replayed into the database batch by batch and deleted. Replay is idempotent: every row carries the id it
was given before the first write attempt, and inserts are ON CONFLICT DO NOTHING.

`append` (on a miner's reply path) only keeps the row in a list: no encoding, no I/O, nothing that can raise.
`sync` (the writer loop) encodes and writes. A write that fails (disk full, an I/O error) is cut back to the last
whole line, keeps its rows buffered for the caller to take back, and is not tried again before a backoff: the file
only ever holds whole lines, and nothing is lost while the disk is full.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import ujson

from gstratum.errors import first_line
from gstratum.storage.records import storable

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5     # seconds before the first retry of a failed write; doubled up to RETRY_MAX
RETRY_MAX = 10.0


def _line(table: str, row: tuple) -> bytes | None:
    """One row as a UTF-8 JSON line; a row that does not encode as it is (a lone surrogate that slipped past the
    recorder: ujson lets it through, UTF-8 refuses it; an odd type) is cleaned first; None when even that fails."""
    try:
        return _encode(table, row)
    except (ValueError, TypeError, OverflowError):   # UnicodeEncodeError is a ValueError
        pass
    try:
        return _encode(table, storable(row))
    except (ValueError, TypeError, OverflowError):
        return None


def _encode(table: str, row: tuple) -> bytes:
    return ujson.dumps([table, row], ensure_ascii=False, escape_forward_slashes=False).encode()


class Journal:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self._fd: int | None = None
        self._size = 0                 # bytes of whole lines in the live file
        self._buffer: list[tuple[str, tuple]] = []
        self._closed = False
        self.rows_spilled = 0
        self.rows_unencodable = 0
        self.bytes_on_disk = 0
        self._rotations = 0
        self.healthy = True            # False from a failed write until the next one that succeeds
        self.failures = 0              # failed write attempts (a metric)
        self.last_error: str | None = None
        self._backoff = 0.0
        self._retry_at = 0.0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.jsonl"

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def append(self, table: str, row: tuple) -> None:
        """Keep a row for the next `sync`. Never raises, never blocks: it is called on a miner's reply path."""
        self._buffer.append((table, row))
        self.rows_spilled += 1

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_buffer(self) -> list[tuple[str, tuple]]:
        """The rows not yet on disk, handed back (the writer keeps them in memory while the disk fails)."""
        rows, self._buffer = self._buffer, []
        self.rows_spilled -= len(rows)
        return rows

    def retry_due(self) -> bool:
        """Whether a write may be tried now: always while healthy, after the backoff once one failed."""
        return self.healthy or time.monotonic() >= self._retry_at

    def sync(self) -> bool:
        """Write the buffered rows and fsync: one fsync per group, not per row. True when every row appended is
        on disk. False when the write failed (the rows stay buffered) or waits for its backoff."""
        if not self._buffer:
            if not self.healthy and not self._closed and self.retry_due():
                self._write(b"\n")   # nothing to write, but is the disk still failing? (a blank line is skipped)
            return True
        if self._closed or not self.retry_due():
            return False
        lines, encodable = [], []
        for item in self._buffer:
            line = _line(*item)
            if line is None:
                self.rows_unencodable += 1
                log.error("a %s row could not be encoded for the journal and is lost: %.300r", *item)
            else:
                lines.append(line)
                encodable.append(item)
        self._buffer = encodable
        if lines and not self._write(b"\n".join(lines) + b"\n"):
            return False
        self._buffer.clear()
        return True

    def _write(self, data: bytes) -> bool:
        try:
            if self._fd is None:        # a rotation could not open the next file: try again now
                self.open()
            self._write_all(data)
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(data)
        self.bytes_on_disk += len(data)
        if not self.healthy:
            log.warning("journal %s writable again after %d failed writes", self.path.name, self.failures)
        self.healthy = True
        self._backoff = 0.0
        return True

    def _write_all(self, data: bytes) -> None:
        """Append and fsync; on failure cut the file back to its last whole line (a torn line would swallow the
        next line written after it at replay) and raise."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as exc:
                log.error("journal %s: could not cut a failed write back (%s); starting a new file",
                          self.path.name, first_line(exc))
                self._abandon_file()
            raise

    def _abandon_file(self) -> None:
        """Set a file with a torn tail aside for replay (its torn last line is skipped there) and write on in a
        new one."""
        self._rotations += 1
        try:
            os.rename(self.path, self._replay_path())
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._size = 0

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        self.last_error = exc.strerror or first_line(exc)
        self._backoff = min(max(self._backoff * 2, RETRY_FIRST), RETRY_MAX)
        self._retry_at = time.monotonic() + self._backoff
        if self.healthy or self.failures % 20 == 0:
            log.error("journal %s write failed (%s; %d failures so far): %d rows kept in memory, retrying in %.1fs",
                      self.path.name, self.last_error, self.failures, len(self._buffer), self._backoff)
        self.healthy = False

    def _replay_path(self) -> Path:
        return self.directory / f"{self.name}.replay-{int(time.time())}-{self._rotations}.jsonl"

    def rotate(self) -> Path | None:
        """Close the live file for replay (renamed, still ours) and start a new one; None when it is empty.
        Raises OSError when the disk refuses (the caller tries again later)."""
        self.sync()
        if self._fd is None or self._size == 0:
            return None
        self._rotations += 1
        target = self._replay_path()
        os.rename(self.path, target)
        os.close(self._fd)
        self._fd = None
        self._size = 0
        self.open()
        return target

    def pending_files(self, own_only: bool = False) -> list[Path]:
        """Files waiting for replay: our rotated ones, and (unless own_only) any whose owning process is gone."""
        if not self.directory.exists():
            return []
        pending = []
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.path or not path.is_file():
                continue
            owner = path.name.split(".replay-")[0].removesuffix(".jsonl")
            if owner == self.name or (not own_only and not _owner_alive(self.directory / f"{owner}.jsonl")):
                pending.append(path)
        return pending

    @property
    def rejected_path(self) -> Path:
        return self.directory / f"{self.name}.rejected"

    def set_aside(self, table: str, row: tuple) -> bool:
        """Keep a row the database refused (it is not replayed: it would be refused again) for an operator.
        False when the file cannot be written (the caller logs the row instead)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.rejected_path, "a", encoding="utf-8") as handle:
                handle.write(ujson.dumps([table, storable(row)], ensure_ascii=True) + "\n")
            return True
        except (OSError, ValueError, TypeError, OverflowError):
            return False

    def close(self) -> bool:
        """Write what is buffered (one last try, whatever the backoff) and close; True when nothing was left
        unwritten."""
        self._retry_at = 0.0
        written = self.sync()
        if not written:
            log.error("journal %s: %d rows could not be written at close and are lost (%s)", self.path.name,
                      len(self._buffer), self.last_error)
        if self._fd is not None:
            if self._size == 0:
                self.path.unlink(missing_ok=True)   # while we still hold the lock: nobody takes it for an orphan
            os.close(self._fd)
            self._fd = None
        self._closed = True
        return written


def _owner_alive(live_file: Path) -> bool:
    """A process owns its live journal file by flock for as long as it runs."""
    try:
        with open(live_file, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False


def read_batches(path: Path, size: int) -> Iterator[list[tuple[str, tuple]]]:
    """Rows of a journal file in batches; a torn last line (crash mid-write) is skipped with a warning."""
    batch: list[tuple[str, tuple]] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                table, row = ujson.loads(line)
            except ValueError:
                log.warning("journal %s line %d is torn or corrupt; skipped", path.name, number)
                continue
            batch.append((table, tuple(row)))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch

"""The spill journal: rows the database cannot take in time go to an append-only file on local disk.

One file per process (held with an exclusive flock while the process lives), written as JSON lines and fsync'd in
groups by the writer loop. When the database is back — and at start-up, for files left by a process that died —
files are replayed into the database batch by batch and deleted. Replay is idempotent: every row carries the id it
was given before the first write attempt, and inserts are ON CONFLICT DO NOTHING.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import ujson

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self._file = None
        self._buffer: list[str] = []
        self.rows_spilled = 0
        self.bytes_on_disk = 0
        self._rotations = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.jsonl"

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def append(self, table: str, row: tuple) -> None:
        self._buffer.append(ujson.dumps([table, row], ensure_ascii=False, escape_forward_slashes=False))
        self.rows_spilled += 1

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def sync(self) -> None:
        """Write the buffered rows and fsync: one fsync per group, not per row."""
        if not self._buffer or self._file is None:
            return
        data = ("\n".join(self._buffer) + "\n").encode()
        self._buffer.clear()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.bytes_on_disk += len(data)

    def rotate(self) -> Path | None:
        """Close the live file for replay (renamed, still ours) and start a new one; None when it is empty."""
        self.sync()
        if self._file is None or self._file.tell() == 0:
            return None
        self._rotations += 1
        target = self.directory / f"{self.name}.replay-{int(time.time())}-{self._rotations}.jsonl"
        os.rename(self.path, target)
        self._file.close()
        self.open()
        return target

    def pending_files(self, own_only: bool = False) -> list[Path]:
        """Files waiting for replay: our rotated ones, and (unless own_only) any whose owning process is gone."""
        if not self.directory.exists():
            return []
        pending = []
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.path:
                continue
            owner = path.name.split(".replay-")[0].removesuffix(".jsonl")
            if owner == self.name or (not own_only and not _owner_alive(self.directory / f"{owner}.jsonl")):
                pending.append(path)
        return pending

    @property
    def rejected_path(self) -> Path:
        return self.directory / f"{self.name}.rejected"

    def set_aside(self, table: str, row: tuple) -> None:
        """Keep a row the database refused (it is not replayed: it would be refused again) for an operator."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(ujson.dumps([table, row], ensure_ascii=True) + "\n")

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            if self._file.tell() == 0:
                self.path.unlink(missing_ok=True)   # while we still hold the lock: nobody takes it for an orphan
            self._file.close()
            self._file = None


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

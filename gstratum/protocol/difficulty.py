"""Two small per-miner state machines of the session: which difficulty each job was sent at, and which shares a
miner already submitted (pure).

Each share is judged at the difficulty in force when its job was sent to this miner. Rather than writing an entry
per miner per broadcast, the schedule keeps the few moments this miner's difficulty changed, as positions in the
job sequence (JobBook.latest_seq), plus an entry for each job re-sent under a new id at a retarget: a broadcast then
costs one shared line and one send per miner, nothing else.
"""
from __future__ import annotations

from gstratum.mining.jobs import Job, JobBook

NO_JOB_YET = 1 << 62
MAX_CHANGES = 32
MAX_ALIASES = 64


class DifficultySchedule:
    __slots__ = ("current", "_changes", "_first_seq", "_aliases", "_resends")

    def __init__(self, difficulty: float) -> None:
        self.current = difficulty
        self._changes: list[tuple[int, float]] = [(0, difficulty)]   # (first job seq, difficulty)
        self._first_seq = NO_JOB_YET
        self._aliases: dict[str, tuple[str, float]] = {}   # re-sent job's per-miner id -> (job id, difficulty)
        self._resends = 0

    def start(self, first_seq: int, difficulty: float) -> None:
        """Subscribed: jobs from `first_seq` on are this miner's, all at `difficulty` until it changes."""
        self.current = difficulty
        self._first_seq = first_seq
        self._changes = [(0, difficulty)]

    def change(self, difficulty: float, applies_from: int) -> None:
        """A new difficulty for jobs of sequence `applies_from` and later."""
        self.current = difficulty
        self._changes.append((applies_from, difficulty))
        if len(self._changes) > MAX_CHANGES:
            del self._changes[:-MAX_CHANGES]

    def resend(self, job: Job, difficulty: float, book: JobBook) -> str:
        """The id under which `job` is re-sent at `difficulty`: shares on the job as first sent keep its old
        difficulty, shares on the re-sent one are judged at the new one."""
        self._resends += 1
        alias = f"{job.job_id}r{self._resends}"
        self._aliases[alias] = (job.job_id, difficulty)
        if len(self._aliases) > MAX_ALIASES:
            self._aliases = {k: v for k, v in self._aliases.items() if v[0] in book}
        return alias

    def lookup(self, job_id: str, book: JobBook) -> tuple[Job | None, float]:
        """The live job a submitted id names and the difficulty it was sent at; (None, current) when it is stale or
        was never sent to this miner."""
        alias = self._aliases.get(job_id)
        if alias is not None:
            return book.get(alias[0]), alias[1]
        job = book.get(job_id)
        if job is None or job.seq < self._first_seq:
            return None, self.current
        for start, difficulty in reversed(self._changes):
            if job.seq >= start:
                return job, difficulty
        return job, self._changes[0][1]


class DuplicateFilter:
    """Accepted shares per live job; forgets jobs the book no longer holds."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, set] = {}

    def shares_of(self, job_id: str, book: JobBook) -> set:
        seen = self._seen.get(job_id)
        if seen is None:
            if len(self._seen) >= book.keep:
                self._seen = {k: v for k, v in self._seen.items() if k in book}
            seen = self._seen[job_id] = set()
        return seen

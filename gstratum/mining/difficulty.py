"""Which difficulty each job was sent at, per miner (pure, protocol-free: a V1 session and a V2 channel both keep
one).

Each share is judged at the difficulty in force when its job was sent to this miner. Rather than writing an entry
per miner per broadcast, the schedule keeps the few moments this miner's difficulty changed, as positions in the
job sequence (JobBook.latest_seq), plus an entry for each job re-sent under a new id at a retarget: a broadcast then
costs one shared line and one send per miner, nothing else.
"""
from __future__ import annotations

from collections import OrderedDict

from gstratum.mining.jobs import Job, JobBook

NO_JOB_YET = 1 << 62
MAX_CHANGES = 32
# Ids under which a job was re-sent at a new difficulty, newest kept. A retarget re-sends the current job, so a
# miner that changes its difficulty again and again (mining.suggest_difficulty in a loop) must not grow this: past
# the bound the oldest alias goes, and a share on it is stale (21), as it would be after a new block.
MAX_ALIASES = 16


class DifficultySchedule:
    __slots__ = ("current", "_changes", "_first_seq", "_aliases", "_resends")

    def __init__(self, difficulty: float) -> None:
        self.current = difficulty
        self._changes: list[tuple[int, float]] = [(0, difficulty)]   # (first job seq, difficulty)
        self._first_seq = NO_JOB_YET
        self._aliases: OrderedDict[str, tuple[str, float]] = OrderedDict()   # re-sent id -> (job id, difficulty)
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

    def resend(self, job: Job, difficulty: float) -> str:
        """The id under which `job` is re-sent at `difficulty`: shares on the job as first sent keep its old
        difficulty, shares on the re-sent one are judged at the new one. O(1); at most MAX_ALIASES are kept."""
        self._resends += 1
        alias = f"{job.job_id}r{self._resends}"
        self._aliases[alias] = (job.job_id, difficulty)
        if len(self._aliases) > MAX_ALIASES:
            self._aliases.popitem(last=False)
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

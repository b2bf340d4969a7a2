"""The job stream of one process: make jobs on schedule, send each to this process's miners, and share them.

With a source the whole pool shares (the random source), one process leads (cluster.bus): it makes each job,
broadcasts it to its own miners at once, then publishes its id with NOTIFY in the transaction that inserts the
job's row, so a follower that hears the id can always read the row (no payload limit: a job of any size travels).
Followers broadcast what they hear as soon as they have read it. A follower that hears nothing for `silence`
intervals makes its own jobs (the database is down: miners keep getting work).
With a per-process source (Bitcoin Core: every process asks the node itself), every process makes its own jobs and
nothing is published.

The schedule is the pool's, not the process's: the next job is due `interval` after the last one, whoever made
it, and a job that is not clean continues the current block. So a new leader or a SIGHUP successor carries the
stream on without a gap and without a forced new block; a successor also reads back the pool's live jobs, so
shares on jobs its predecessor sent are still accepted.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import gevent
import gevent.event
import psycopg2

from gstratum.errors import first_line
from gstratum.greenlets import Loops
from gstratum.mining.jobs import JOB_FIELDS, Job, JobBook, JobSource, job_from_dict

log = logging.getLogger(__name__)

JOBS_CHANNEL = "jobs"


class JobStream:
    def __init__(self, source: JobSource, book: JobBook, broadcast, recorder, metrics, interval: float,
                 clean_every: int, db=None, bus=None, silence: float = 2.5, loops: Loops | None = None) -> None:
        self.source = source
        self.book = book
        self.broadcast = broadcast          # job -> (miners reached, seconds)
        self.recorder = recorder
        self.metrics = metrics
        self.interval = interval
        self.clean_every = clean_every
        self.db = db
        self.bus = bus                      # None: this process's jobs are its own (nothing shared)
        self.silence = silence
        self.loops = loops if loops is not None else Loops()
        self.since_clean = 0                # jobs after the newest clean one
        self.last_job_at = float("-inf")    # monotonic time the newest job was made (ours or heard)
        self._seen: deque[str] = deque(maxlen=256)
        self.recent: deque[dict] = deque(maxlen=10)    # the fan-out record of the newest jobs, newest last
        self._loop = None
        self._wake = gevent.event.Event()
        if bus is not None:
            bus.subscribe(JOBS_CHANNEL, self._heard)

    @property
    def leading(self) -> bool:
        return self.bus is None or self.bus.is_leader

    # -- jobs in ------------------------------------------------------------------------------------------------
    def accept(self, job: Job) -> None:
        """Add a job to the book and send it to every miner, once per job id."""
        if job.job_id in self._seen:
            return
        self._seen.append(job.job_id)
        self.last_job_at = time.monotonic() - max(0.0, time.time() - job.created_at)
        self.since_clean = 0 if job.clean_jobs else self.since_clean + 1
        self.book.add(job)
        reached, seconds = self.broadcast(job)
        self.metrics.jobs += 1
        self.metrics.fanout.observe(seconds)
        self.recent.append({"job_id": job.job_id, "height": job.height, "created_at": job.created_at,
                            "fanout_ms": round(seconds * 1000, 3), "miners_reached": reached})
        self._wake.set()

    def push(self, job: Job) -> None:
        """A job made outside the schedule (a node's template): recorded and sent to this process's miners."""
        self.recorder.job(job)
        self.accept(job)

    def _heard(self, message: dict) -> None:
        job_id = message.get("job_id")
        if not isinstance(job_id, str) or job_id in self._seen:
            return      # our own, echoed back, or one we already read
        job = self._read_jobs("job_id = %s", (job_id,), limit=1)
        if job:
            self.accept(job[0])
        else:
            log.warning("heard of job %s but could not read its row", job_id[:64])

    def _read_jobs(self, where: str, params: tuple, limit: int) -> list[Job]:
        """Job rows, newest first (clean_jobs as recorded)."""
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(f"SELECT {', '.join(JOB_FIELDS[:-1])}, extract(epoch FROM created_at) FROM jobs "
                            f"WHERE {where} ORDER BY created_at DESC LIMIT %s", (*params, limit))
                rows = cur.fetchall()
        except psycopg2.Error as exc:
            log.warning("reading jobs failed: %s", first_line(exc))
            return []
        jobs = []
        for row in rows:
            data = dict(zip(JOB_FIELDS, row))
            data["created_at"] = float(data["created_at"])
            try:
                jobs.append(job_from_dict(data))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignored a malformed job row: %s", exc)
        return jobs

    def _carry_on(self) -> bool:
        """At start: the pool's live jobs (from the newest clean one on) back into the book, so the stream goes on
        where it is. True when there were any."""
        if self.bus is None or self.db is None:
            return False
        recent = self._read_jobs("cluster = %s AND created_at > now() - make_interval(secs => %s)",
                                 (self.bus.cluster, self.silence * self.interval), limit=self.book.keep)
        live = []
        for job in recent:
            live.append(job)
            if job.clean_jobs:
                break
        for job in reversed(live):
            self.accept(job)
        if live:
            log.info("carrying on the pool's job stream from job %s (%d live)", live[0].job_id, len(live))
        return bool(live)

    # -- jobs out -----------------------------------------------------------------------------------------------
    def make_job(self) -> Job:
        clean = self.book.current is None or self.since_clean + 1 >= self.clean_every
        return self.source.next_job(clean, self.book.current)

    def _publish(self, job: Job) -> None:
        """Broadcast first (our own miners never wait for the database), then share it. A job the database did
        not take is still recorded, through the writer queue."""
        self.accept(job)
        if self.bus is None or not self.bus.publish(JOBS_CHANNEL, {"job_id": job.job_id},
                                                    statement=self.recorder.job_statement(job)):
            if self.bus is not None:
                self.metrics.job_publish_failures += 1
            self.recorder.job(job)

    def tick(self) -> None:
        """Make the next job if one is due and it is ours to make."""
        overdue = time.monotonic() - self.last_job_at
        if overdue < self.interval:
            return
        if self.leading:
            self._publish(self.make_job())
        elif overdue > self.silence * self.interval:
            log.warning("no job from the leader for %.0fs: making one here", overdue)
            job = self.make_job()
            self.recorder.job(job)
            self.accept(job)

    def _run(self) -> None:
        while True:
            due_in = self.last_job_at + self.interval - time.monotonic()
            if not self.leading:    # look again soon: when the leader dies, this process may be the next one
                due_in = min(max(due_in, 0.05), 0.25)
            if due_in > 0:
                self._wake.clear()
                self._wake.wait(timeout=due_in)   # a job heard meanwhile moves the schedule (accept sets it)
            self.tick()

    def start(self) -> None:
        """First job at once: the pool's current one (a successor, a new process), else a new one if we lead."""
        if not self._carry_on() and self.leading:
            self._publish(self.make_job())
        self._loop = self.loops.spawn("job-stream", self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

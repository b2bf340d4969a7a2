"""The job stream of one process: make jobs when this process leads, take them from the leader otherwise.

Every `interval` seconds the leader builds a job, records it and publishes it (cluster.Cluster); every process
broadcasts each job it hears exactly once. When publishing fails (database down) the leader broadcasts its job
locally, and a follower that has heard nothing for `silence` intervals makes its own jobs, so miners always have
fresh work. Every `clean_every`-th job starts a new block (clean_jobs true).
"""
from __future__ import annotations

import logging
import time
from collections import deque

import gevent

from gstratum.cluster.bus import JOBS_CHANNEL, Cluster
from gstratum.greenlets import spawn_logged, stop_greenlet
from gstratum.mining.jobs import Job, JobBook, JobSource, job_from_dict, job_to_dict

log = logging.getLogger(__name__)


class JobStream:
    def __init__(self, source: JobSource, book: JobBook, broadcast, recorder, interval: float, clean_every: int,
                 cluster: Cluster | None = None, db=None, silence: float = 2.5) -> None:
        self.source = source
        self.book = book
        self.broadcast = broadcast
        self.recorder = recorder
        self.interval = interval
        self.clean_every = clean_every
        self.cluster = cluster
        self.db = db
        self.silence = silence
        self.made = 0
        self.last_heard = time.monotonic()
        self._seen: deque[str] = deque(maxlen=64)
        self.recent: deque[dict] = deque(maxlen=10)    # for the stats API: newest last
        self._greenlet = None

    @property
    def leading(self) -> bool:
        return self.cluster is None or self.cluster.is_leader

    def make_job(self) -> Job:
        job = self.source.next_job(clean_jobs=self.made % self.clean_every == 0)
        self.made += 1
        self.recorder.job(job)
        return job

    def accept(self, job: Job) -> None:
        """Add a job to the book and send it to every miner, once per job id."""
        if job.job_id in self._seen:
            return
        self._seen.append(job.job_id)
        self.last_heard = time.monotonic()
        self.book.add(job)
        started = time.perf_counter()
        reached = self.broadcast(job)
        self.recent.append({"job_id": job.job_id, "height": job.height, "created_at": job.created_at,
                            "fanout_ms": round((time.perf_counter() - started) * 1000, 3), "miners_reached": reached})

    def on_published(self, message: dict) -> None:
        try:
            job = job_from_dict(message)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a malformed published job: %s", exc)
            return
        self.accept(job)

    def tick(self) -> None:
        if self.leading:
            job = self.make_job()
            published = self.cluster is not None and self.cluster.publish(self.db, JOBS_CHANNEL, job_to_dict(job))
            if not published:
                self.accept(job)
        elif time.monotonic() - self.last_heard > self.silence * self.interval:
            log.warning("no job from the leader for %.0fs: making one here", time.monotonic() - self.last_heard)
            self.accept(self.make_job())

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.tick()

    def start(self) -> None:
        """First job at once: ours if we lead, else the leader's latest (if recent), else one made here."""
        if self.leading:
            self.tick()
        else:
            latest = self._latest_recorded()
            self.accept(latest if latest is not None else self.make_job())
        self._greenlet = spawn_logged(self._run, name="job-stream")

    def _latest_recorded(self) -> Job | None:
        import psycopg2

        from gstratum.mining.jobs import JOB_FIELDS

        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(f"SELECT {', '.join(JOB_FIELDS[:-1])}, extract(epoch FROM created_at) FROM jobs "
                            "WHERE created_at > now() - make_interval(secs => %s) ORDER BY created_at DESC LIMIT 1",
                            (self.silence * self.interval,))
                row = cur.fetchone()
        except psycopg2.Error:
            return None
        if row is None:
            return None
        data = dict(zip(JOB_FIELDS, row))
        data["created_at"] = float(data["created_at"])
        data["clean_jobs"] = True
        return job_from_dict(data)

    def stop(self) -> None:
        stop_greenlet(self._greenlet)

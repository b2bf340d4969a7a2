"""mining.notify: Stratum V1's encoding of a job of the core (gstratum.mining.jobs.Job), built once per job and
clean_jobs value and shared by every miner it goes to (the broadcast sends the same bytes object 10,000 times).

The line is cached in the job's `encoded` dict, as V2's frames are: the job itself knows no protocol. A solo
variant (`Job.for_payout`) whose coinb1 is its base job's differs only in coinb2, so its line is the base's with
coinb2 replaced rather than encoded again."""
from __future__ import annotations

from gstratum.mining.jobs import Job
from gstratum.protocol import rpc


def notify_params(job: Job, clean_jobs: bool | None = None) -> list:
    clean = job.clean_jobs if clean_jobs is None else clean_jobs
    return [job.job_id, job.prevhash, job.coinb1, job.coinb2, list(job.merkle_branch), job.version, job.nbits,
            job.ntime, clean]


def notify_line(job: Job, clean_jobs: bool | None = None) -> bytes:
    """The encoded mining.notify line (with its newline) for `job`."""
    clean = job.clean_jobs if clean_jobs is None else clean_jobs
    key = ("v1", clean)
    line = job.encoded.get(key)
    if line is None:
        base = job.base
        shared = base.encoded.get(key) if base is not None and base.coinb1 == job.coinb1 else None
        if shared is not None:
            line = shared.replace(f'"{base.coinb2}"'.encode(), f'"{job.coinb2}"'.encode(), 1)
        else:
            line = rpc.encode_notification("mining.notify", notify_params(job, clean))
        job.encoded[key] = line
    return line

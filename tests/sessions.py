"""Pure harness for the Stratum V1 front end: the shared core in memory, subscribes resolved by an in-memory
allocator, rows and found blocks collected from each Output (what the connection glue would do with them)."""
from __future__ import annotations

from gstratum.mining import bitcoin
from gstratum.mining.channel import MiningCore
from gstratum.mining.jobs import JobBook, RandomJobSource
from gstratum.mining.ledger import ShareLedger
from gstratum.mining.vardiff import VardiffPolicy
from gstratum.ops.metrics import Metrics
from gstratum.ops.stats import PoolStats
from gstratum.protocol.session import Services, Session, handle_line
from gstratum.storage.allocator import MemoryAllocator
from gstratum.storage.records import Recorder
from gstratum.storage.resumption import Subscriptions


class Harness:
    """One pool in memory: a job book fed by the random source, the core, and sessions on it."""

    def __init__(self, difficulty: float = 1.0, clock=None, nbits: int = 0x1D00FFFF,
                 vardiff: VardiffPolicy | None = None, payout_for=None, extranonce2_size: int = 4,
                 fake_txs: int = 0, login_address=None) -> None:
        self.clock = clock
        self.rows: list[tuple[str, tuple]] = []
        self.blocks: list = []
        self.book = JobBook()
        self.source = RandomJobSource(clock=clock, nbits=nbits, fake_txs=fake_txs) if clock else \
            RandomJobSource(nbits=nbits, fake_txs=fake_txs)
        self.book.add(self.source.next_job(True))
        self.metrics = Metrics()
        self.ledger = ShareLedger(self.book.prevhashes)
        recorder = Recorder(lambda t, r: self.rows.append((t, r)), "harness", **({"clock": clock} if clock else {}))
        self.core = MiningCore(jobs=self.book, ledger=self.ledger, recorder=recorder, metrics=self.metrics,
                               stats=PoolStats(),
                               network_target=lambda job: bitcoin.target_from_nbits(int(job.nbits, 16)))
        self.services = Services(core=self.core, difficulty=difficulty, extranonce2_size=extranonce2_size,
                                 vardiff=vardiff or VardiffPolicy(enabled=False), payout_for=payout_for,
                                 login_address=login_address,
                                 **({"clock": clock} if clock else {}))
        self.subscriptions = Subscriptions(MemoryAllocator())

    def session(self, connection_id: str = "0" * 31 + "1", remote_addr: str = "192.0.2.1") -> Session:
        return Session(self.services, connection_id, remote_addr)

    def feed(self, session: Session, line: bytes) -> list[bytes]:
        """The replies to one line; its rows and blocks are collected here."""
        output = handle_line(session, line, self.subscriptions.resolve)
        self.rows += output.rows
        self.blocks += output.blocks
        return output.send

    def new_job(self, clean: bool = False):
        job = self.source.next_job(clean, self.book.current)
        self.book.add(job)
        return job

"""Pool ends for testing the Stratum V2 client without a server process.

`ScriptedPool`: the pool's side of one TCP connection on loopback, built from the pure Noise responder and the
codec; the test sends exactly the messages it wants and reads what the client sent (synchronously: the kernel's
socket buffers hold both directions). `HonestPool`: a thread that plays a small but real pool on one connection:
jobs built from a real coinbase and merkle branch, every share checked independently of the client (with the
server's own `HeaderTemplate`), acknowledgements batched, new blocks on request.
"""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from contextlib import contextmanager

from gstratum.client.sv2 import Sv2Client
from gstratum.mining import bitcoin
from gstratum.mining.shares import HeaderTemplate
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.certificate import ServerIdentity
from gstratum.protocol.sv2.codec import Frame
from gstratum.protocol.sv2.datatypes import int_to_u256
from gstratum.protocol.sv2.keys import authority_public_key_string
from gstratum.protocol.sv2.noise import NoiseResponder

AUTHORITY = bytes.fromhex("22" * 32)
AUTHORITY_KEY = authority_public_key_string(AUTHORITY)      # what `gstratum sv2-key` prints
NOW = int(time.time())
REGTEST_NBITS = 0x207FFFFF
ROLLING_MASK = 0x1FFFE000


def identity(now: int = NOW, validity: int = 3600) -> ServerIdentity:
    return ServerIdentity.create(AUTHORITY, now, validity=validity)


class ScriptedPool:
    """The pool's end of one connection: handshake, then whole messages in and out."""

    def __init__(self, sock: socket.socket, server_identity: ServerIdentity) -> None:
        self.sock = sock
        self.identity = server_identity
        self.connection = None
        self._frames: list[Frame] = []

    def handshake(self) -> None:
        responder = NoiseResponder(self.identity)
        data = b""
        while len(data) < 64:
            data += self.sock.recv(64 - len(data))
        self.sock.sendall(responder.receive(data))
        self.connection = responder.connection(max_payload=1 << 20)

    def send(self, *messages: codec.Message) -> None:
        self.sock.sendall(b"".join(self.connection.encrypt(codec.encode_frame(m)) for m in messages))

    def send_frame(self, frame: bytes) -> None:
        """A plaintext frame as given (header included), encrypted."""
        self.sock.sendall(self.connection.encrypt(frame))

    def receive(self, timeout: float = 5.0) -> codec.Message:
        self.sock.settimeout(timeout)
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self._frames.extend(self.connection.feed(data))
        return codec.decode(self._frames.pop(0))

    def close(self) -> None:
        self.sock.close()


@contextmanager
def connected(server_identity: ServerIdentity | None = None, **client_options):
    """(client, pool) over loopback TCP, handshake done."""
    server_identity = server_identity or identity()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[ScriptedPool] = []

        def accept() -> None:
            sock, _ = listener.accept()
            pool = ScriptedPool(sock, server_identity)
            accepted.append(pool)
            pool.handshake()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            client = Sv2Client.connect("127.0.0.1", listener.getsockname()[1], timeout=5.0, **client_options)
        finally:
            thread.join(10)
        try:
            yield client, accepted[0]
        finally:
            client.close()
            accepted[0].close()


def setup(client: Sv2Client, pool: ScriptedPool, flags: int = 0) -> codec.SetupConnection:
    """SetupConnection answered with Success; the SetupConnection the pool received."""
    pool.send(codec.SetupConnectionSuccess(2, 0))
    client.setup_connection(flags)
    return pool.receive()


# --- a small honest pool ---------------------------------------------------------------------------------------

class Block:
    """One template: a real coinbase split around the extranonce, a merkle branch of fake txids, a prevhash."""

    def __init__(self, height: int, txs: int, prev_hash: bytes) -> None:
        self.height = height
        self.prev_hash = prev_hash
        script = bytes.fromhex("0014") + hashlib.sha256(b"payout").digest()[:20]
        self.coinb1, self.coinb2 = bitcoin.build_coinbase_parts(height, b"/sv2-test/", 12, [(50 * 10**8, script)])
        txids = [hashlib.sha256(b"tx%d-%d" % (height, i)).digest() for i in range(txs)]
        self.branch = bitcoin.merkle_branch_for_coinbase(txids)
        self.template = HeaderTemplate(self.coinb1, self.coinb2, tuple(self.branch), prev_hash,
                                       REGTEST_NBITS.to_bytes(4, "little"), 0x20000000)


class HonestPool(threading.Thread):
    """A pool for one client connection: answers SetupConnection and one channel open, sends the job as a future
    job and SetNewPrevHash, judges every share on its own (job known and current, version inside 1fffe000,
    ntime, duplicate, hash against the channel's target), answers errors at once and accepted shares in batches of
    `batch` (or after `batch_delay` seconds), and moves to a new block after every `block_every` accepted shares
    (0: never). Everything it judged is in `verdicts` as (sequence_number, code or None)."""

    def __init__(self, listener: socket.socket, *, target: int, txs: int = 3, batch: int = 3,
                 batch_delay: float = 0.1, block_every: int = 0, extranonce_size: int = 4) -> None:
        super().__init__(daemon=True)
        self.listener = listener
        self.target = target
        self.txs = txs
        self.batch = batch
        self.batch_delay = batch_delay
        self.block_every = block_every
        self.extranonce_size = extranonce_size
        self.verdicts: list[tuple[int, str | None]] = []
        self.seen: set[bytes] = set()
        self.blocks = 0
        self.failure: BaseException | None = None
        self._job_ids = iter(range(1, 1 << 32))
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            self.pool = ScriptedPool(sock, identity())
            self.pool.handshake()
            self._serve()
        except (ConnectionError, OSError):
            pass
        except BaseException as exc:        # reported to the test, which asserts on it
            self.failure = exc

    def _serve(self) -> None:
        pool = self.pool
        setup_message = pool.receive()
        assert isinstance(setup_message, codec.SetupConnection), setup_message
        pool.send(codec.SetupConnectionSuccess(2, 0))
        opened = pool.receive()
        self.channel_id = 7
        self.extended = isinstance(opened, codec.OpenExtendedMiningChannel)
        if self.extended:
            self.prefix = b"\x01" * (12 - self.extranonce_size)
            pool.send(codec.OpenExtendedMiningChannelSuccess(opened.request_id, self.channel_id,
                                                             int_to_u256(self.target), self.extranonce_size,
                                                             self.prefix, 0))
        else:
            self.prefix = b"\x02" * 12
            pool.send(codec.OpenStandardMiningChannelSuccess(opened.request_id, self.channel_id,
                                                             int_to_u256(self.target), self.prefix, 0))
        self.block = Block(100, self.txs, b"\x33" * 32)
        self._new_block(self.block)
        unacked: list[int] = []
        first_unacked = 0.0
        accepted_since_block = 0
        while not self.stop.is_set():
            try:
                message = pool.receive(timeout=0.05)
            except socket.timeout:
                message = None
            if message is not None:
                code = self._judge(message)
                self.verdicts.append((message.sequence_number, code))
                if code is None:
                    if not unacked:
                        first_unacked = time.monotonic()
                    unacked.append(message.sequence_number)
                    accepted_since_block += 1
                else:
                    pool.send(codec.SubmitSharesError(self.channel_id, message.sequence_number, code))
            if unacked and (len(unacked) >= self.batch or time.monotonic() - first_unacked >= self.batch_delay):
                pool.send(codec.SubmitSharesSuccess(self.channel_id, unacked[-1], len(unacked), len(unacked)))
                unacked = []
            if self.block_every and accepted_since_block >= self.block_every:
                accepted_since_block = 0
                self.block = Block(self.block.height + 1, self.txs, hashlib.sha256(self.block.prev_hash).digest())
                self._new_block(self.block)

    def _new_block(self, block: Block) -> None:
        self.blocks += 1
        self.job_id = next(self._job_ids)
        if self.extended:
            job = codec.NewExtendedMiningJob(self.channel_id, self.job_id, None, 0x20000000, True,
                                             tuple(block.branch), block.coinb1, block.coinb2)
        else:
            root = block.template.merkle_root(self.prefix, b"")
            job = codec.NewMiningJob(self.channel_id, self.job_id, None, 0x20000000, root)
        self.ntime = NOW
        self.pool.send(job, codec.SetNewPrevHash(self.channel_id, self.job_id, block.prev_hash, self.ntime,
                                                 REGTEST_NBITS))

    def _judge(self, share) -> str | None:
        if share.channel_id != self.channel_id:
            return "invalid-channel-id"
        if share.job_id != self.job_id:
            return "stale-share" if share.job_id < self.job_id else "invalid-job-id"
        if (share.version ^ 0x20000000) & ~ROLLING_MASK:
            return "invalid-share"
        if share.ntime != self.ntime:
            return "invalid-share"
        extranonce = getattr(share, "extranonce", b"")
        if self.extended and len(extranonce) != self.extranonce_size:
            return "invalid-share"
        root = self.block.template.merkle_root(self.prefix, extranonce)
        header = self.block.template.header_from_root(root, share.ntime, share.nonce, share.version)
        if header in self.seen:
            return "duplicate-share"
        if HeaderTemplate.hash_int(header) > self.target:
            return "difficulty-too-low"
        self.seen.add(header)
        return None


def easy_target(difficulty: float = 1e-7) -> int:
    return bitcoin.target_from_difficulty(difficulty)


"""A miner's byte stream stays whole: every message leaves in one piece and in order, under any backpressure.

The defect this guards against: the outbox's writer greenlet took the queued bytes before its send yielded, so a
line sent meanwhile (a share reply, the next job) saw an empty queue, went straight to the socket and landed inside
the unsent tail of another line."""
from __future__ import annotations

import select
import socket
import time

import gevent
import gevent.event
import gevent.pool
import ujson

from gstratum.net.connection import Outbox


class FakeKernelSocket:
    """The kernel socket under gevent's wrapper: non-blocking, takes at most `room` bytes, else EAGAIN."""

    def __init__(self) -> None:
        self.room = 0
        self.received = bytearray()
        self.writable = gevent.event.Event()

    def send(self, data) -> int:
        if self.room <= 0:
            self.writable.clear()
            raise BlockingIOError
        taken = bytes(data[:self.room])
        self.room -= len(taken)
        self.received += taken
        return len(taken)

    def drain(self, room: int) -> None:
        """The peer read: room for `room` more bytes (waiters wake at the hub's next turn, not now)."""
        self.room += room
        if self.room > 0:
            self.writable.set()


class FakeGeventSocket:
    """gevent's socket wrapper over the fake kernel socket: send waits cooperatively for room."""

    def __init__(self) -> None:
        self._sock = FakeKernelSocket()

    def send(self, data, flags: int = 0) -> int:
        while True:
            try:
                return self._sock.send(data)
            except BlockingIOError:
                self._sock.writable.wait()

    def sendall(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]


def make_outbox(max_pending: int = 1 << 20):
    sock = FakeGeventSocket()
    failures: list[str] = []
    return Outbox(sock, max_pending, 5.0, gevent.pool.Group(), failures.append), sock._sock, failures


def test_a_line_sent_while_the_writer_waits_for_room_goes_after_the_queued_tail():
    outbox, kernel, failures = make_outbox()
    first = b"A" * 10_000 + b"\n"
    kernel.room = 4_000
    outbox.send(first)                    # the kernel takes 4,000 bytes; the rest waits for the writer greenlet
    gevent.sleep(0)                       # the writer starts and waits for room
    assert outbox.flusher is not None and bytes(kernel.received) == first[:4_000]
    kernel.drain(1_000)                   # the miner read: room now, but the writer has not run yet
    outbox.send(b"reply\n")               # a share reply at that very moment
    outbox.send(b"job\n")
    for _ in range(20):
        kernel.drain(4_096)
        gevent.sleep(0.001)
    assert not failures
    assert bytes(kernel.received) == first + b"reply\njob\n"
    assert outbox.pending_bytes == 0 and outbox.flusher is None


def test_partial_writes_of_many_lines_keep_order_and_bound_counts_unsent_bytes():
    outbox, kernel, failures = make_outbox(max_pending=50_000)
    lines = [(b"%05d:" % i) + b"x" * (i * 37 % 900) + b"\n" for i in range(300)]
    expected = bytearray()
    for i, line in enumerate(lines):
        outbox.send(line)
        expected += line
        kernel.drain(i * 53 % 700)
        if i % 7 == 0:
            gevent.sleep(0)
        # what is queued is exactly what the kernel has not taken yet
        assert outbox.pending_bytes == len(expected) - len(kernel.received)
    for _ in range(10_000):
        if len(kernel.received) >= len(expected):
            break
        kernel.drain(1_000)
        gevent.sleep(0.001)
    assert not failures
    assert bytes(kernel.received) == bytes(expected)


def test_the_bound_counts_bytes_the_writer_is_still_sending():
    outbox, kernel, failures = make_outbox(max_pending=20_000)
    outbox.send(b"B" * 15_000)            # nothing fits: all of it waits
    gevent.sleep(0)
    kernel.drain(100)                     # a trickle: the writer still holds ~14,900 unsent bytes
    gevent.sleep(0.001)
    outbox.send(b"C" * 6_000)             # over the bound in total
    assert failures and "slow reader" in failures[0]


# -- over a real socket --------------------------------------------------------------------------------------------

def _complete(line: bytes) -> dict | None:
    """The message a line holds when it is one whole Stratum message, else None."""
    try:
        message = ujson.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if "method" in message and isinstance(message.get("params"), list):
        return message
    if "id" in message and ("result" in message or "error" in message):
        return message
    return None


def test_slow_reader_with_interleaved_jobs_and_replies_gets_every_line_whole(start_server):
    """A miner with a tiny receive buffer reads in small bites while long jobs (a 2 KB payout script, 40 branch
    steps: ~7 KB a line) arrive every 100 ms and its own pipelined requests are answered (a new difficulty re-sends
    the job: ~7 KB; a bad share: a short error). Every byte it reads belongs to one whole message, and every request
    is answered. Requests are clocked by what was read, so the server's backlog stays small and nobody is dropped."""
    server = start_server("--notify-interval", "0.1", "--payout-script", "51" * 6000, "--fake-txs", "60",
                          "--vardiff", "0",
                          env={"GSTRATUM_SOCKET_SNDBUF": "4096", "GSTRATUM_SEND_TIMEOUT": "20"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.sendall(b'{"id": 1, "method": "mining.subscribe", "params": ["streams"]}\n'
                 b'{"id": 2, "method": "mining.authorize", "params": ["streams.rig", "x"]}\n')
    sock.setblocking(False)
    received = bytearray()
    request_id = 2
    read_since_request = 0
    started = time.monotonic()
    while time.monotonic() - started < 6.0:
        # let the server fill its socket, then read what is there (room appears on the server's side) and, every
        # few KB, ask for more output at once: the server sees its socket writable and a request in the same turn
        time.sleep(0.02)
        try:
            while True:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection:\n" + server.log()[-3000:]
                received += chunk
                read_since_request += len(chunk)
        except BlockingIOError:
            pass
        if read_since_request < 20_000:
            continue
        read_since_request = 0
        request_id += 1
        if request_id % 3:   # a new difficulty: its reply, set_difficulty and the current job re-sent
            request = {"id": request_id, "method": "mining.suggest_difficulty", "params": [1 + request_id % 7]}
        else:                # a share on an unknown job: a short error reply (cost 5 on the flood meter)
            request = {"id": request_id, "method": "mining.submit",
                       "params": ["streams.rig", "nope", "00000000", "00000000", "00000000"]}
        sock.send(ujson.dumps(request).encode() + b"\n")
    # then read everything: every request must be answered
    sock.setblocking(True)
    sock.settimeout(10)
    answered: set = set()
    lines: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(answered) < request_id and time.monotonic() < deadline:
        *complete, rest = bytes(received).split(b"\n")
        lines += complete
        received = bytearray(rest)
        messages = [_complete(line) for line in complete]
        if None in messages:
            break           # a broken line: its id may never be seen, no need to wait for it
        answered.update(m["id"] for m in messages if m.get("id") is not None)
        if len(answered) < request_id:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection:\n" + server.log()[-3000:]
            received += chunk
    sock.close()
    broken = [line for line in lines if _complete(line) is None]
    assert not broken, (f"{len(broken)} of {len(lines)} lines are not whole messages; first: "
                        f"{broken[0][:120]!r}...{broken[0][-120:]!r} ({len(broken[0])} bytes)")
    assert len(answered) == request_id, f"{request_id - len(answered)} requests unanswered"
    jobs = sum(1 for line in lines if b'"mining.notify"' in line)
    assert jobs > 40 and request_id > 30, (jobs, request_id)
    assert "slow reader" not in server.log()

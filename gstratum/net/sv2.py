"""The gevent glue for one Stratum V2 miner: the Noise handshake, then encrypted frames -> messages -> the V2 session
(gstratum.protocol.sv2.session) -> frames, encrypted in the order they are sent, through the same bounded Outbox as
V1. Bad input (a failed handshake, a failed AEAD tag, an oversized or malformed frame, an unknown message, a
message out of order) closes that connection with one log line; nothing else is touched.
"""
from __future__ import annotations

import logging
import time

import gevent

from gstratum.net.connection import RECV_SIZE, MinerConnection
from gstratum.protocol.rpc import StratumError
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.certificate import ServerIdentity
from gstratum.protocol.sv2.errors import Sv2Error
from gstratum.protocol.sv2.keys import load_or_create_authority_key
from gstratum.protocol.sv2.noise import NoiseResponder

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
MAX_INBOUND_PAYLOAD = 64 * 1024      # a miner sends small messages; a share is a few dozen bytes


class Sv2Identity:
    """The pool's V2 identity: the authority key (from its file, made with mode 0600 when missing) and a server
    certificate it signs, renewed when half its validity has passed (checked as connections arrive: no loop)."""

    def __init__(self, key_file, validity: int, clock=time.time) -> None:
        self.key_file = key_file
        self.validity = validity
        self.clock = clock
        self.authority_secret: bytes | None = None
        self._identity: ServerIdentity | None = None

    def load(self) -> bool:
        """Read (or create) the authority key; True when it was created now."""
        self.authority_secret, created = load_or_create_authority_key(str(self.key_file))
        self._identity = ServerIdentity.create(self.authority_secret, int(self.clock()), self.validity)
        return created

    def current(self) -> ServerIdentity:
        now = int(self.clock())
        if self._identity.renewal_due(now):
            self._identity = ServerIdentity.create(self.authority_secret, now, self.validity)
            log.info("Stratum V2 server certificate renewed (valid %d s)", self.validity)
        return self._identity


class Sv2Connection(MinerConnection):
    """One Stratum V2 miner: the Noise handshake, then encrypted frames to its Sv2Session. Offers what the server's
    registries use from a V1 Connection (`deliver`, `abort`, the session's `workers`...)."""

    __slots__ = ("noise", "identity")

    def __init__(self, server, sock, address, connection_id: str, session, identity: Sv2Identity) -> None:
        super().__init__(server, sock, address, connection_id, session)
        self.identity = identity
        self.noise = None

    def serve(self, initial: bytes = b"") -> None:
        try:
            try:
                self._handshake(initial)
            except (Sv2Error, gevent.Timeout, OSError) as exc:
                self.close_reason = self.close_reason or f"Stratum V2 handshake failed: {exc or 'timeout'}"
                log.info("closing %s %s:%s: %s", self.id, self.address[0], self.address[1], self.close_reason)
                return
            self._read_loop(self._kernel_receive(), self._handle_or_close)
        finally:
            self._finish()

    def _handshake(self, initial: bytes) -> None:
        responder = NoiseResponder(self.identity.current())
        with gevent.Timeout(HANDSHAKE_TIMEOUT):
            data = initial
            while True:
                if data:
                    answer = responder.receive(data)
                    if answer:
                        self.sock.sendall(answer)
                        break
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise Sv2Error("closed during the handshake")
        self.noise = responder.connection(max_payload=MAX_INBOUND_PAYLOAD)

    def _handle_or_close(self, data: bytes) -> None:
        try:
            self._handle(data)
        except Sv2Error as exc:      # the one place V2's bad input ends a connection
            self.server.dropped("protocol")
            self.abort(f"Stratum V2: {type(exc).__name__}: {str(exc)[:200]}")

    def _handle(self, data: bytes) -> None:
        """Every frame of one read through the session; what it asks is done in order: frames sent (encrypted),
        rows recorded, blocks submitted, channels opened with an extranonce1 from the pool's sequence."""
        session, server = self.session, self.server
        was_subscribed = session.subscribed
        frames: list[bytes] = []
        for frame in self.noise.feed(data):
            output = session.receive(codec.decode(frame))
            if output.pending is not None:
                request = output.pending
                try:
                    extranonce1 = server.subscriptions.allocator.allocate()
                except StratumError as err:
                    extranonce1 = err
                output = session.complete_open(request, extranonce1)
            frames += self._carry_out(output)
        if not was_subscribed and session.subscribed:
            server.now_subscribed(self)
        if frames:
            self.deliver(frames)
        if session.unacked:
            server.acknowledge_later(self)

    def deliver(self, frames: list[bytes]) -> None:
        """Encrypt and send plaintext frames, in order (nonces count frames: encryption order is send order)."""
        if frames and self.noise is not None and self.close_reason is None:
            encrypt = self.noise.encrypt
            self.outbox.send(b"".join([encrypt(frame) for frame in frames]))

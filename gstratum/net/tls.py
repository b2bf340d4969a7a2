"""TLS for a Stratum port (stratum+ssl): a server context from PEM files, re-read when the files change.

The files are checked (two stat calls) at every new connection; a changed certificate or key is loaded for the
connections that follow, while connected miners keep the session they have. So a certificate renewal (certbot,
an ACME client) needs no restart. A replacement that does not load (a half-written file, a key that does not
match) is logged and the previous context stays in use.
"""
from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger(__name__)


class TlsError(RuntimeError):
    """The certificate or key of a TLS port cannot be loaded: start-up stops with this message."""


class TlsContext:
    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self._stamp = self._files_stamp()
        self.context = self._load()       # raises TlsError: start-up names the files

    def _files_stamp(self) -> tuple:
        try:
            return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (self.cert, self.key))
        except OSError:
            return ()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load TLS certificate {self.cert} / key {self.key}: {exc}") from None
        return context

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: reloaded first when the files changed."""
        stamp = self._files_stamp()
        if stamp and stamp != self._stamp:
            self._stamp = stamp
            try:
                self.context = self._load()
                log.info("TLS certificate %s reloaded", self.cert)
            except TlsError as exc:
                log.error("%s; still using the previous certificate", exc)
        return self.context

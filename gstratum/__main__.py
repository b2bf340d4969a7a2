"""Command line: `python -m gstratum run|client`.

gevent's monkey patching and psycogreen run before anything else is imported, so every socket, DNS lookup and
PostgreSQL query in the server cooperates with the hub.
"""
from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from gstratum import config as config_module  # noqa: E402

log = logging.getLogger("gstratum")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from gstratum.ops.logs import configure

    configure(level, fmt)


def _load_config(args: argparse.Namespace):
    """The Config from flags, environment and file; None (the message printed) when it is not valid."""
    try:
        return config_module.from_sources(args)
    except config_module.ConfigError as exc:
        print(f"gstratum: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return 2
    _setup_logging(cfg.log_level, cfg.log_format)
    from gstratum.net import takeover
    from gstratum.net.supervisor import WORKER_ENV
    from gstratum.ops.tuning import tune_process

    tune_process()
    if config_module.worker_count(cfg) > 1:
        return _run_workers(cfg)
    worker = os.environ.get(WORKER_ENV)
    # sharing the port was asked for: by --takeover, by the supervisor (a worker) or by a predecessor (SIGHUP)
    share = bool(args.takeover or worker or os.environ.get(takeover.PREDECESSOR_ENV))
    from gstratum.net.tls import TlsContext, TlsError

    specs = cfg.listeners()
    try:
        tls = [TlsContext(spec.tls_cert, spec.tls_key) if spec.tls else None for spec in specs]
        sockets = takeover.open_stratum_listeners([(spec.host, spec.port) for spec in specs], share)
        http_listener = (takeover.open_listener(cfg.http_host, cfg.http_port, share)
                         if cfg.http_port and not worker else None)
    except (TlsError, takeover.PortInUse, OSError) as exc:
        log.error("start-up failed: %s", exc)
        return 1
    listener = list(zip(sockets, tls))
    embedded = _embedded_postgres(cfg)
    try:
        return _serve(cfg, args, listener, http_listener, embedded, worker)
    finally:
        if embedded is not None:
            embedded.release()


def _embedded_postgres(cfg):
    """The embedded PostgreSQL when no database URL is given (started, or joined when it already runs)."""
    if cfg.database_url:
        return None
    from gstratum.storage.embedded_pg import EmbeddedPostgres

    return EmbeddedPostgres(cfg.pgdata).start()


def _serve(cfg, args, listener, http_listener, embedded, worker: str | None) -> int:
    """Run one server process until a signal stops it (or, after SIGHUP, its successor takes over)."""
    import gc

    from gstratum.app import Pool, SchemaMismatch
    from gstratum.node.work import PayoutAddressInvalid
    from gstratum.net import takeover
    from gstratum.ops.systemd import notify
    from gstratum.ops.tuning import watch_gc

    snapshot_dir = cfg.runtime_dir / str(cfg.port) if worker else None
    pool = Pool(cfg, embedded.url if embedded is not None else cfg.database_url, listener, http_listener,
                snapshot_dir=snapshot_dir)
    stopped = gevent.event.Event()
    draining = gevent.event.Event()
    successors = []     # the processes our SIGHUPs started: the drain status names the one taking over

    def request_stop(signum):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopped.set()

    def request_successor(signum):
        log.info("signal SIGHUP: starting a successor to take over")
        successors.append(takeover.spawn_successor(sockets_of(listener)))

    def request_drain(signum):
        log.info("signal SIGUSR1: a successor is listening; draining")
        draining.set()
        stopped.set()

    gevent.signal_handler(signal.SIGTERM, request_stop, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, request_stop, signal.SIGINT)
    gevent.signal_handler(signal.SIGHUP, request_successor, signal.SIGHUP)
    gevent.signal_handler(signal.SIGUSR1, request_drain, signal.SIGUSR1)
    gevent.signal_handler(signal.SIGUSR2, _dump_greenlets)
    pidfile = cfg.pidfile or takeover.pidfile_for(cfg.port, suffix=f"-worker{worker}" if worker else "")
    try:
        pool.start()
    except (SchemaMismatch, PayoutAddressInvalid) as exc:
        log.error("start-up failed: %s", exc)
        pool.stop()
        return 1
    except Exception:
        log.exception("start-up failed")
        pool.stop()
        return 1
    # systemd hears that we are the main process before our predecessor hears it may go: were it to exit first,
    # systemd would take the service for dead and kill us with it. With --workers the supervisor stays the main
    # process (it gets ExecReload's SIGHUP); a worker only reports in.
    if worker:
        notify("READY=1", f"STATUS=worker {worker} serving miners on port {cfg.port}")
    else:
        notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving miners on port {cfg.port}")
    takeover.signal_predecessor(args.takeover, pidfile)
    takeover.write_pidfile(pidfile)
    gc.collect()
    gc.freeze()  # start-up objects leave the collector's view: no long pauses scanning them later
    watch_gc(pool.metrics)
    stopped.wait()
    if draining.is_set():   # replaced, not stopped: no STOPPING=1, the service goes on in the successor
        heir = next((child.pid for child in reversed(successors) if child.poll() is None), None)
        notify(f"STATUS=handing miners to pid {heir}" if heir else "STATUS=handing miners to a successor")
        pool.server.drain(cfg.drain_period, cfg.drain_deadline)
    elif not worker:        # a worker stops when the supervisor (the main process) says so: it is not ours to tell
        notify("STOPPING=1", "STATUS=stopping")
    pool.stop()
    takeover.remove_pidfile(pidfile)
    return 0


def sockets_of(listeners: list[tuple]) -> list:
    return [sock for sock, _ in listeners]


def _dump_greenlets() -> None:
    """SIGUSR2: log every greenlet's stack, for an operator chasing a stall."""
    from gevent.util import format_run_info

    print("greenlet dump:\n" + "\n".join(format_run_info()), file=sys.stderr, flush=True)


def _run_workers(cfg) -> int:
    """The supervisor: resolve the database once (embedded if no URL), then run N workers on it."""
    from gstratum.net import takeover
    from gstratum.net.supervisor import supervise

    try:   # the workers share the port among themselves, not with another server
        for spec in cfg.listeners():
            takeover.open_listener(spec.host, spec.port, share=False).close()
    except (takeover.PortInUse, OSError) as exc:
        log.error("start-up failed: %s", exc)
        return 1
    embedded = _embedded_postgres(cfg)
    try:
        url = embedded.url if embedded is not None else cfg.database_url
        return supervise(config_module.worker_count(cfg), url, sys.argv[1:], cfg)
    finally:
        if embedded is not None:
            embedded.release()


def cmd_config(args: argparse.Namespace) -> int:
    """The configuration `run` would use with the same flags, file and environment, as TOML."""
    import ujson

    cfg = _load_config(args)
    if cfg is None:
        return 2
    for key, value in config_module.effective(cfg).items():
        print(f"# {key} = (unset)" if value is None else f"{key} = {ujson.dumps(value, escape_forward_slashes=False)}")
    return 0


def cmd_blocknotify(args: argparse.Namespace) -> int:
    """One NOTIFY on the pool's blocknotify channel: every process fetches a template at once. Not a signal:
    SIGUSR1 already means drain, and the pool may run on several machines."""
    import psycopg2
    import ujson

    from gstratum.cluster.bus import Bus
    from gstratum.node.work import BLOCKNOTIFY_CHANNEL
    from gstratum.storage.embedded_pg import EmbeddedPostgresError, running_url

    url = args.database_url
    if not url:
        try:
            url = running_url(args.pgdata.resolve())
        except (EmbeddedPostgresError, OSError) as exc:
            print(f"blocknotify: {exc}", file=sys.stderr)
            return 2
        if url is None:
            print("blocknotify: set DATABASE_URL (no embedded PostgreSQL runs in --pgdata)", file=sys.stderr)
            return 2
    try:
        with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (Bus.channel_of(args.cluster, BLOCKNOTIFY_CHANNEL),
                                                     ujson.dumps({"block": (args.blockhash or "")[:64]})))
    except psycopg2.Error as exc:
        print(f"blocknotify: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


def cmd_sv2_key(args: argparse.Namespace) -> int:
    """The authority public key of --sv2-authority-key, in the encoding SRI and the firmware take for their
    `authority_pubkey` setting (the key is made, mode 0600, when the file is missing)."""
    from gstratum.protocol.sv2.errors import KeyFormatError
    from gstratum.protocol.sv2.keys import authority_public_key_string, load_or_create_authority_key

    try:
        secret, created = load_or_create_authority_key(str(args.sv2_authority_key))
    except (OSError, KeyFormatError) as exc:
        print(f"sv2-key: {args.sv2_authority_key}: {exc}", file=sys.stderr)
        return 1
    if created:
        print(f"sv2-key: created {args.sv2_authority_key} (mode 0600)", file=sys.stderr)
    print(authority_public_key_string(secret))
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from gstratum.client.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gstratum", description="Stratum V1 mining pool server")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pool server")
    config_module.add_server_flags(run)
    run.add_argument("--takeover", action="store_true",
                     help="bind the port beside a running server (SO_REUSEPORT) and make it drain its miners to us")
    run.set_defaults(func=cmd_run)
    client = sub.add_parser("client", help="connect, subscribe, authorize, validate; optionally mine")
    from gstratum.client.cli import add_flags

    add_flags(client)
    client.set_defaults(func=cmd_client)
    from gstratum.ops import commands as ops_cli

    stats = sub.add_parser("stats", help="print the pool and its top workers from the database")
    ops_cli.add_stats_flags(stats)
    stats.set_defaults(func=ops_cli.run_stats)
    admin = sub.add_parser("admin", help="operator actions through the HTTP API (needs GSTRATUM_ADMIN_TOKEN)")
    ops_cli.add_admin_flags(admin)
    admin.set_defaults(func=ops_cli.run_admin)
    config = sub.add_parser("config", help="show the effective configuration (secrets masked)")
    config_module.add_server_flags(config)
    config.add_argument("--print", dest="print_config", action="store_true", help="print it as TOML")
    config.set_defaults(func=cmd_config)
    blocknotify = sub.add_parser("blocknotify", help="tell every process of the pool that the node has a new block "
                                                     "(for bitcoind -blocknotify, when it has no ZMQ)")
    blocknotify.add_argument("blockhash", nargs="?", help="the %%s bitcoind passes (informational)")
    blocknotify.add_argument("--database-url", dest="database_url", default=os.environ.get("DATABASE_URL"),
                             help="the pool's database (default DATABASE_URL, else the embedded one in --pgdata, "
                                  "whose password only its owner can read). Prefer DATABASE_URL: a command line "
                                  "is visible to every local user")
    blocknotify.add_argument("--pgdata", type=Path, default=Path(".gstratum/pgdata"))
    blocknotify.add_argument("--cluster", default=os.environ.get("GSTRATUM_CLUSTER", "gstratum"))
    blocknotify.set_defaults(func=cmd_blocknotify)
    sv2_key = sub.add_parser("sv2-key", help="print the Stratum V2 authority public key miners pin")
    sv2_key.add_argument("--sv2-authority-key", dest="sv2_authority_key", type=Path,
                         default=Path(os.environ.get("GSTRATUM_SV2_AUTHORITY_KEY", ".gstratum/sv2-authority.key")))
    sv2_key.set_defaults(func=cmd_sv2_key)
    maintain = sub.add_parser("maintain", help="create and drop daily share partitions (run as the table owner)")
    ops_cli.add_maintain_flags(maintain)
    maintain.set_defaults(func=ops_cli.run_maintain)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

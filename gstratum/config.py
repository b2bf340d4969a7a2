"""Typed, validated server configuration from the environment (GSTRATUM_*, DATABASE_URL) and CLI flags.

Precedence: command-line flag > environment variable > default. Every value is checked once here, so the rest of
the code can trust it; a bad value stops start-up with a ConfigError naming the setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


@dataclass(frozen=True)
class ListenSpec:
    """One Stratum port: its own start and minimum difficulty (a low one for small devices, a high one for
    rentals), and TLS (stratum+ssl) when a PEM certificate and key are given."""

    host: str = "0.0.0.0"
    port: int = 3333
    difficulty: float | None = None        # default: the pool's --difficulty
    min_difficulty: float | None = None    # default: the pool's --min-difficulty
    tls_cert: Path | None = None
    tls_key: Path | None = None
    protocol: str = "v1"                    # "v1" (JSON lines) or "sv2" (Stratum V2: Noise, binary frames)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class Config:
    """Every setting of a server process; see README "Configuration"."""

    host: str = "0.0.0.0"
    port: int = 3333
    database_url: str | None = None
    listen_database_url: str | None = None   # LISTEN/NOTIFY + leader lock; default database_url (see README)
    pgdata: Path = Path(".gstratum/pgdata")
    notify_interval: float = 30.0
    difficulty: float = 1.0
    min_difficulty: float | None = None   # default: the starting difficulty or 1, whichever is lower
    max_difficulty: float = 2.0**40
    extranonce2_size: int = 4
    max_line: int = 16 * 1024
    max_connections: int = 20_000
    send_timeout: float = 10.0
    max_pending_output: int = 256 * 1024
    socket_sndbuf: int = 0            # SO_SNDBUF for miner sockets; 0 keeps the kernel's auto-tuning
    extranonce_block: int = 1000
    subscribe_wait: float = 5.0
    writer_batch: int = 5000
    writer_interval: float = 0.05
    writer_queue: int = 200_000
    writer_memory: int = 1_000_000    # rows held in memory while the spill journal cannot be written (disk full)
    log_level: str = "INFO"
    max_per_ip: int = 5000
    subscribe_timeout: float = 30.0
    idle_timeout: float = 600.0
    cost_soft: float = 500.0
    cost_hard: float = 2000.0
    journal_dir: Path = Path(".gstratum/journal")
    db_wait: float = 60.0
    resume_window: float = 3600.0
    drain_period: float = 10.0
    drain_deadline: float = 60.0
    pidfile: Path | None = None
    workers: str = "1"
    proxy_protocol: int = 0
    proxy_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")   # networks a PROXY header is accepted from
    http_host: str = "127.0.0.1"
    http_port: int = 8080             # 0: no HTTP side port
    admin_token: str | None = None    # GSTRATUM_ADMIN_TOKEN; without it the admin endpoints are off
    retention_days: int = 30
    log_format: str = "text"
    runtime_dir: Path = Path(".gstratum/run")
    fake_txs: int = 0
    nbits: str = "1d00ffff"
    clean_every: int = 4
    vardiff: int = 1
    target_share_interval: float = 10.0
    retarget_after: float = 60.0
    payout_script: str = "51"
    witness_commitment: int = 0
    cluster: str = "gstratum"         # pool namespace on the database: channels and leader lock
    public_host: str | None = None    # what client.reconnect names on a restart (default: nothing, see README)
    public_port: int = 0
    keepalive: float = 60.0           # TCP keepalive idle seconds for miner sockets (0: off)
    bitcoind: tuple[str, ...] = ()    # Bitcoin Core RPC URLs, most preferred first; empty: the random job source
    bitcoind_cookie: Path | None = None
    zmq_hashblock: tuple[str, ...] = ()
    payout_address: str | None = None
    solo: int = 0
    solo_fee: float = 0.0             # percent of the reward to --payout-address in solo mode
    pplns: int = 0                    # PPLNS paid from every coinbase (logins are ADDRESS[.WORKER])
    pplns_window: Decimal = Decimal(2)            # F: the window sums to F x the network difficulty
    pplns_window_difficulty: Decimal | None = None    # D: the window's sum directly (test networks)
    pool_fee: Decimal = Decimal(0)    # percent of each reward to --payout-address (PPLNS), an exact decimal
    pplns_min_output: int = 10_000    # sats: smaller amounts are carried as balances
    pplns_max_outputs: int = 25       # payee outputs per coinbase (see gstratum/mining/pplns.py for the derivation)
    coinbase_tag: str = "/gstratum/"
    template_refresh: float = 30.0    # seconds between fresh templates (new fees) on the same block
    max_template_age: float = 120.0   # older than this, the node's work is not fresh: not ready
    block_poll: float = 1.0           # getbestblockhash every this many seconds, beside ZMQ
    block_keeper_interval: float = 60.0   # seconds between the leader's checks of accepted blocks (confirmed/orphaned)
    sv2_port: int = 0                 # Stratum V2 on its own port (0: off), beside V1
    sv2_authority_key: Path = Path(".gstratum/sv2-authority.key")   # made with mode 0600 when missing
    sv2_cert_validity: float = 3600.0     # seconds a server certificate is valid (renewed at half of it)
    listen: tuple[ListenSpec, ...] = ()   # [[listen]] tables of the config file; empty: one port, host/port

    def __post_init__(self) -> None:
        if self.min_difficulty is None:   # vardiff never drives a miner below where it started (or 1) unasked
            object.__setattr__(self, "min_difficulty", min(1.0, self.difficulty))
        _check(0 <= self.port <= 65535, "port", "must be 0..65535")
        _check(self.notify_interval > 0, "notify_interval", "must be > 0")
        _check(1e-12 <= self.min_difficulty <= self.max_difficulty, "min_difficulty",
               "must be in [1e-12, max_difficulty]")
        _check(self.min_difficulty <= self.difficulty <= self.max_difficulty, "difficulty",
               "must be within [min_difficulty, max_difficulty]")
        _check(2 <= self.extranonce2_size <= 8, "extranonce2_size", "must be 2..8")
        _check(self.max_line >= 1024, "max_line", "must be >= 1024")
        _check(self.max_connections >= 1, "max_connections", "must be >= 1")
        _check(self.send_timeout > 0, "send_timeout", "must be > 0")
        _check(self.extranonce_block >= 1, "extranonce_block", "must be >= 1")
        _check(self.writer_batch >= 1 and self.writer_queue >= self.writer_batch, "writer_queue",
               "must be >= writer_batch >= 1")
        _check(self.writer_memory >= 1, "writer_memory", "must be >= 1 (a value below writer_queue means writer_queue)")
        _check(0 <= self.fake_txs <= 10_000, "fake_txs", "must be 0..10000")
        _check(_is_hex(self.nbits, 8), "nbits", "must be 8 hex digits")
        _check(self.clean_every >= 1, "clean_every", "must be >= 1")
        _check(self.target_share_interval > 0 and self.retarget_after > 0, "target_share_interval",
               "and retarget_after must be > 0")
        _check(_is_hex(self.payout_script) and 0 < len(self.payout_script) <= 20_000, "payout_script",
               "must be a hex script")
        _check(re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.cluster) is not None, "cluster",
               "must be 1-40 lowercase letters, digits or _, starting with a letter")
        _check(0 <= self.public_port <= 65535, "public_port", "must be 0..65535")
        _check(self.keepalive >= 0, "keepalive", "must be >= 0")
        for url in self.bitcoind:
            _check(url.startswith("http://"), "bitcoind", f"{url!r} must be http://[USER:PASS@]HOST:PORT")
        for endpoint in self.zmq_hashblock:
            _check(endpoint.startswith(("tcp://", "ipc://")), "zmq_hashblock", f"{endpoint!r} must be tcp:// or ipc://")
        _check(not self.solo or bool(self.bitcoind), "solo", "needs --bitcoind (solo miners are paid by real blocks)")
        _check(0 <= self.solo_fee < 100, "solo_fee", "must be a percentage in [0, 100)")
        _check(not (self.solo and self.solo_fee) or bool(self.payout_address), "solo_fee",
               "needs --payout-address to receive the fee")
        _check(not self.pplns or bool(self.bitcoind), "pplns", "needs --bitcoind (miners are paid by real blocks)")
        _check(not (self.pplns and self.solo), "pplns", "and --solo are two payout schemes: choose one")
        _check(not self.pplns or bool(self.payout_address), "pplns",
               "needs --payout-address (the fee and what is not paid out)")
        _check(self.pplns_window.is_finite() and self.pplns_window > 0, "pplns_window", "must be > 0")
        _check(self.pplns_window_difficulty is None or (self.pplns_window_difficulty.is_finite()
                                                        and self.pplns_window_difficulty > 0),
               "pplns_window_difficulty", "must be > 0")
        _check(self.pool_fee.is_finite() and 0 <= self.pool_fee < 100, "pool_fee",
               "must be a percentage in [0, 100)")
        _check(1 <= self.pplns_min_output <= 21_000_000 * 100_000_000, "pplns_min_output", "must be >= 1 sat")
        _check(1 <= self.pplns_max_outputs <= 1000, "pplns_max_outputs", "must be 1..1000")
        _check(not self.bitcoind or self.solo or bool(self.payout_address), "payout_address",
               "is needed with --bitcoind in pool mode (the coinbase must pay someone)")
        _check(len(self.coinbase_tag.encode()) <= 60, "coinbase_tag", "must be at most 60 bytes")
        _check(self.template_refresh > 0 and self.max_template_age > self.template_refresh, "template_refresh",
               "must be > 0 and below max_template_age")
        _check(self.block_poll > 0, "block_poll", "must be > 0")
        _check(self.block_keeper_interval > 0, "block_keeper_interval", "must be > 0")
        _check(0 <= self.sv2_port <= 65535, "sv2_port", "must be 0..65535")
        _check(60 <= self.sv2_cert_validity <= 2**31, "sv2_cert_validity", "must be at least 60 seconds")
        for spec in self.listen:
            _check(0 <= spec.port <= 65535, "listen.port", f"{spec.port} must be 0..65535")
            _check(spec.protocol in ("v1", "sv2"), "listen.protocol", f"port {spec.port}: v1 or sv2")
            _check(not (spec.protocol == "sv2" and spec.tls), "listen",
                   f"port {spec.port}: Stratum V2 is encrypted by its own Noise protocol, not TLS")
            _check((spec.tls_cert is None) == (spec.tls_key is None), "listen", "tls_cert and tls_key go together")
            _check(not (spec.tls and self.proxy_protocol), "listen",
                   f"port {spec.port}: TLS with --proxy-protocol is not supported (terminate TLS at the balancer)")
            low = spec.min_difficulty if spec.min_difficulty is not None else self.min_difficulty
            start = spec.difficulty if spec.difficulty is not None else self.difficulty
            _check(0 < low <= start <= self.max_difficulty, "listen.difficulty",
                   f"port {spec.port}: difficulty {start} must be within [min_difficulty {low}, max_difficulty]")

        for network in self.proxy_from:
            _check(_is_network(network), "proxy_from", f"{network!r} must be a network (CIDR) or an address")
        _check(bool(self.proxy_from) or not self.proxy_protocol, "proxy_from",
               "must name the load balancers' networks for --proxy-protocol")
        for name in ("database_url", "listen_database_url"):
            url = getattr(self, name)
            _check(url is None or url.startswith(("postgres://", "postgresql://")), name, "must be a postgresql:// URL")

    def listeners(self) -> tuple[ListenSpec, ...]:
        """Every Stratum port, each with its difficulty bounds filled in from the pool's."""
        specs = self.listen or (ListenSpec(self.host, self.port),)
        if self.sv2_port:
            specs = (*specs, ListenSpec(self.host, self.sv2_port, protocol="sv2"))
        return tuple(ListenSpec(s.host, s.port, s.difficulty if s.difficulty is not None else self.difficulty,
                                s.min_difficulty if s.min_difficulty is not None else self.min_difficulty,
                                s.tls_cert, s.tls_key, s.protocol) for s in specs)



def _is_hex(text: str, length: int | None = None) -> bool:
    if length is not None and len(text) != length:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return len(text) % 2 == 0


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _decimal(raw) -> Decimal:
    """An exact decimal from a flag's text, or a TOML number (read through its shortest repr: 2.5 is 2.5)."""
    try:
        value = Decimal(str(raw).strip())
    except ArithmeticError:
        raise ValueError(f"not a decimal number: {raw!r}") from None
    return value


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid setting {name}: {why}")




def _convert(name: str, kind, raw):
    if str(kind) == "tuple[str, ...]":   # repeated flags arrive as a list, the environment as a comma list
        return tuple(raw) if isinstance(raw, (list, tuple)) else tuple(v.strip() for v in str(raw).split(",") if v.strip())
    converter = {"int": int, "float": float, "float | None": float, "str": str, "Path": Path, "str | None": str,
                 "Decimal": _decimal, "Decimal | None": _decimal,
                 "Path | None": Path}.get(str(kind), str)
    try:
        return converter(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting {name}: {raw!r} ({exc})") from None


SWITCHES = ("vardiff", "solo", "witness_commitment", "proxy_protocol", "pplns")   # 0/1 settings: true/false in a file
SECRETS = ("database_url", "listen_database_url", "admin_token", "bitcoind")


def env_name(name: str) -> str:
    return "DATABASE_URL" if name == "database_url" else f"GSTRATUM_{name.upper()}"


def secret_environment(config: Config) -> dict[str, str]:
    """Every secret setting that has a value, as the environment variable that carries it (a list as a comma list).
    This is how a process hands secrets to its children: a command line is readable by every local user (`ps`,
    /proc/PID/cmdline), an environment only by the same user."""
    out = {}
    for name in SECRETS:
        value = getattr(config, name)
        if value:
            out[env_name(name)] = ",".join(value) if isinstance(value, tuple) else value
    return out


def from_sources(flags: argparse.Namespace | None = None, env: dict | None = None) -> Config:
    """Build a Config: defaults < the TOML file (--config / GSTRATUM_CONFIG) < GSTRATUM_<NAME> / DATABASE_URL <
    non-None flags. Every value goes through the same conversion and validation, wherever it came from."""
    env = os.environ if env is None else env
    config_file = getattr(flags, "config", None) or env.get("GSTRATUM_CONFIG")
    values = read_file(Path(config_file)) if config_file else {}
    for field in fields(Config):
        raw = getattr(flags, field.name, None) if flags is not None else None
        if raw is None:
            raw = env.get(env_name(field.name)) or None
        if raw is not None:
            values[field.name] = _convert(field.name, field.type, raw)
    try:
        return Config(**values)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}" if config_file else str(exc)) from None


_TOML_TYPES = {"int": (int,), "float": (int, float), "float | None": (int, float), "str": (str,), "str | None": (str,), "Path": (str,),
               "Decimal": (int, float, str), "Decimal | None": (int, float, str),
               "Path | None": (str,), "tuple[str, ...]": (list, str)}


def read_file(path: Path) -> dict:
    """The settings of a TOML file, keyed by the flags' long names with underscores (notify_interval = 30).
    An unknown key, a wrong type or a file that is not TOML is a ConfigError naming the file and the key."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    known = {field.name: field for field in fields(Config)}
    values = {}
    if "listen" in data:
        values["listen"] = _listen_tables(path, data.pop("listen"))
    for key, raw in data.items():
        field = known.get(key)
        if field is None:
            raise ConfigError(f"{path}: unknown key {key!r} (keys are the flags' long names with underscores, "
                              f"e.g. notify_interval)")
        allowed = _TOML_TYPES.get(str(field.type), (str,))
        if key in SWITCHES and isinstance(raw, bool):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, allowed):
            wanted = {"int": "an integer", "float": "a number", "tuple[str, ...]": "a list of strings"}.get(
                str(field.type), "a string")
            raise ConfigError(f"{path}: {key} must be {wanted}, got {raw!r}")
        values[key] = _convert(key, field.type, raw)
    return values


def _listen_tables(path: Path, tables) -> tuple[ListenSpec, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: listen must be [[listen]] tables")
    kinds = {"host": str, "port": int, "difficulty": (int, float), "min_difficulty": (int, float), "tls_cert": str,
             "tls_key": str, "protocol": str}
    specs = []
    for number, table in enumerate(tables, 1):
        for key, raw in table.items():
            if key not in kinds:
                raise ConfigError(f"{path}: listen #{number}: unknown key {key!r} (one of {', '.join(kinds)})")
            if isinstance(raw, bool) or not isinstance(raw, kinds[key]):
                raise ConfigError(f"{path}: listen #{number}: {key} has the wrong type: {raw!r}")
        values = {k: (Path(v) if k.startswith("tls_") else float(v) if "difficulty" in k else v)
                  for k, v in table.items()}
        specs.append(ListenSpec(**values))
    return tuple(specs)


def effective(config: Config) -> dict:
    """Every setting with its value, secrets masked (`python -m gstratum config --print`)."""
    out = {}
    for field in fields(Config):
        value = getattr(config, field.name)
        if field.name in SECRETS and value:
            value = ["***"] * len(value) if isinstance(value, tuple) else "***"
        elif isinstance(value, (Path, Decimal)):
            value = str(value)
        elif isinstance(value, tuple):
            value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
            value = [{k: str(x) if isinstance(x, Path) else x for k, x in v.items()} if isinstance(v, dict) else v
                     for v in value]
        out[field.name] = value
    return out


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The `run` sub-command's flags; defaults stay None so the environment can fill them."""
    add = parser.add_argument
    add("--config", type=Path, help="a TOML file of settings keyed by these flags' names with underscores "
                                    "(flags and GSTRATUM_* environment variables override it)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=int, help="Stratum TCP port (default 3333)")
    add("--database-url", dest="database_url",
        help="postgresql:// URL; without it an embedded PostgreSQL is started in --pgdata. A password in it is "
             "visible to every local user on a command line: prefer DATABASE_URL or the config file")
    add("--listen-database-url", dest="listen_database_url",
        help="PostgreSQL URL for the LISTEN connection (job stream, leader lock, admin and session notices); "
             "default --database-url. Set it to PostgreSQL itself when --database-url goes through PgBouncer in "
             "transaction mode, which cannot carry LISTEN or a session-level advisory lock")
    add("--pgdata", type=Path, help="data folder of the embedded PostgreSQL (default .gstratum/pgdata)")
    add("--notify-interval", dest="notify_interval", type=float, help="seconds between new jobs (default 30)")
    add("--difficulty", type=float, help="starting share difficulty of every miner (default 1)")
    add("--min-difficulty", dest="min_difficulty", type=float,
        help="lowest difficulty vardiff may set (default: --difficulty or 1, whichever is lower)")
    add("--extranonce2-size", dest="extranonce2_size", type=int,
        help="extranonce2 bytes given to miners, 2..8 (default 4; 8 for a proxy that splits it among devices)")
    add("--max-difficulty", dest="max_difficulty", type=float, help="highest difficulty")
    add("--max-connections", dest="max_connections", type=int, help="connection cap (default 20000)")
    add("--max-line", dest="max_line", type=int, help="longest accepted request line in bytes (default 16384)")
    add("--log-level", dest="log_level", help="DEBUG, INFO, WARNING (default INFO)")
    add("--max-per-ip", dest="max_per_ip", type=int, help="connections allowed from one address (default 5000)")
    add("--subscribe-timeout", dest="subscribe_timeout", type=float,
        help="close connections not subscribed within this many seconds (default 30)")
    add("--idle-timeout", dest="idle_timeout", type=float,
        help="close subscribed miners silent for this many seconds (default 600)")
    add("--journal-dir", dest="journal_dir", type=Path,
        help="spill journal folder for rows the database cannot take (default .gstratum/journal)")
    add("--resume-window", dest="resume_window", type=float,
        help="a miner reconnecting with its session id within this many seconds keeps its extranonce1 (3600)")
    add("--drain-period", dest="drain_period", type=float,
        help="on takeover, spread client.reconnect over this many seconds (default 10)")
    add("--pidfile", type=Path, help="pidfile used by --takeover (default .gstratum/gstratum-PORT.pid)")
    add("--workers", help="worker processes sharing the port with SO_REUSEPORT: a number or auto (default 1)")
    add("--proxy-protocol", dest="proxy_protocol", action="store_const", const=1,
        help="expect a HAProxy PROXY v1/v2 header on every connection and record the address it names")
    add("--proxy-from", dest="proxy_from", action="append", metavar="CIDR",
        help="with --proxy-protocol, accept connections only from these networks (the load balancers; repeatable; "
             "default 127.0.0.0/8 and ::1): anyone else could name any source address in a header")
    add("--http-host", dest="http_host", help="HTTP side port address: metrics, API, dashboard (127.0.0.1)")
    add("--http-port", dest="http_port", type=int, help="HTTP side port (default 8080; 0 turns it off)")
    add("--retention-days", dest="retention_days", type=int, help="drop daily share partitions older than this (30)")
    add("--log-format", dest="log_format", choices=["text", "json"], help="log lines as text or JSON")
    add("--runtime-dir", dest="runtime_dir", type=Path,
        help="where --workers processes leave their stats snapshots for the supervisor (.gstratum/run)")
    add("--fake-txs", dest="fake_txs", type=int, help="random txids in each job's merkle branch (default 0)")
    add("--nbits", help="network target of jobs, 8 hex (default 1d00ffff: difficulty 1; 207fffff makes nearly "
                            "every share a block candidate)")
    add("--clean-every", dest="clean_every", type=int, help="every Nth job is a new block, clean_jobs=true (4)")
    add("--vardiff", type=int, choices=[0, 1], help="per-miner variable difficulty on/off (default 1)")
    add("--target-share-interval", dest="target_share_interval", type=float,
        help="vardiff aims at one share per this many seconds (default 10)")
    add("--retarget-after", dest="retarget_after", type=float,
        help="vardiff retargets a miner at most once per this many seconds (default 60)")
    add("--payout-script", dest="payout_script", help="coinbase output script, hex (default 51, OP_TRUE)")
    add("--witness-commitment", dest="witness_commitment", type=int, choices=[0, 1],
        help="add a witness commitment output to the coinbase (default 0)")
    add("--cluster", help="pool name on the database (default gstratum): the processes of one pool share its job "
                          "stream and leader; two pools with different names can share one PostgreSQL")
    add("--public-host", dest="public_host",
        help="the address miners use to reach the pool (the load balancer's), sent in client.reconnect on a "
             "restart; without it the reconnect names no address and miners come back to the URL they use")
    add("--public-port", dest="public_port", type=int, help="the port that goes with --public-host")
    add("--keepalive", type=float, help="TCP keepalive idle seconds on miner sockets, to find dead peers (60)")
    add("--bitcoind", action="append", help="Bitcoin Core RPC URL http://[USER:PASS@]HOST:PORT; repeat for standby "
                                            "nodes, most preferred first (without it: randomized practice jobs)")
    add("--bitcoind-cookie", dest="bitcoind_cookie", type=Path,
        help="the node's .cookie file, for URLs without credentials (re-read when the node restarts)")
    add("--zmq-hashblock", dest="zmq_hashblock", action="append",
        help="the node's -zmqpubhashblock endpoint (repeatable); new blocks arrive at once, a poll stays as backup")
    add("--payout-address", dest="payout_address", help="pool mode: the address the coinbase pays (checked with "
                                                        "the node's validateaddress at start)")
    add("--solo", type=int, choices=[0, 1], nargs="?", const=1,
        help="solo mining: usernames are ADDRESS[.WORKER], each miner's coinbase pays its own address")
    add("--solo-fee", dest="solo_fee", type=float, help="solo mode: percent of each reward to --payout-address")
    add("--pplns", type=int, choices=[0, 1], nargs="?", const=1,
        help="PPLNS paid from the coinbase: logins are ADDRESS[.WORKER]; every job's coinbase pays the miners of the "
             "window in proportion to their accepted share difficulty, --payout-address the fee and what is not paid")
    add("--pplns-window", dest="pplns_window", help="F: the window is the newest accepted shares whose difficulty "
                                                     "adds up to F x the network difficulty (default 2)")
    add("--pplns-window-difficulty", dest="pplns_window_difficulty",
        help="D: the window's difficulty sum itself (test networks, where the network difficulty is tiny)")
    add("--pool-fee", dest="pool_fee", help="PPLNS: percent of each reward paid to --payout-address (default 0)")
    add("--pplns-min-output", dest="pplns_min_output", type=int,
        help="sats: a miner due less is not paid in this coinbase; it is carried as a balance (default 10000)")
    add("--pplns-max-outputs", dest="pplns_max_outputs", type=int,
        help="at most this many payee outputs per coinbase, the smallest dues carried (default 25: what real "
             "firmware takes, see README Payouts)")
    add("--coinbase-tag", dest="coinbase_tag", help="text in every coinbase scriptSig (default /gstratum/)")
    add("--template-refresh", dest="template_refresh", type=float,
        help="seconds between fresh templates on the same block, for new fees (default 30)")
    add("--max-template-age", dest="max_template_age", type=float,
        help="seconds after which the node's work counts as stale: readiness turns false (default 120)")
    add("--block-poll", dest="block_poll", type=float, help="getbestblockhash poll interval in seconds (default 1)")
    add("--sv2-port", dest="sv2_port", type=int,
        help="serve Stratum V2 (Noise-encrypted, binary) on this port beside V1 (default 0: off)")
    add("--sv2-authority-key", dest="sv2_authority_key", type=Path,
        help="the pool's authority secret key: 64 hex characters (or SRI's base58check secret), made with mode "
             "0600 when missing (default .gstratum/sv2-authority.key); `gstratum sv2-key` prints its public key")
    add("--sv2-cert-validity", dest="sv2_cert_validity", type=float,
        help="seconds a V2 server certificate is valid; renewed at half of it (default 3600)")
    add("--block-keeper-interval", dest="block_keeper_interval", type=float,
        help="seconds between the cluster leader's checks of accepted blocks: confirmed 100 deep, orphaned, back "
             "(default 60)")


def worker_count(cfg: Config) -> int:
    if cfg.workers == "auto":
        return os.cpu_count() or 1
    return int(cfg.workers)

"""The Stratum V2 client without a server process: the Noise handshake, SetupConnection, channels, jobs and
prevhashes, batched acknowledgements, errors, Reconnect and the firmware's limits, against a scripted pool end
(pure responder + codec over loopback TCP); the CPU miner against an honest in-process pool that checks every
share on its own."""
from __future__ import annotations

import socket
import time

import pytest

from gstratum.client.sv2 import (MAX_TARGET, Sv2ProtocolViolation, Sv2Rejected, Sv2State, parse_sv2_url)
from gstratum.client.sv2work import ChannelWork, mine
from gstratum.protocol.sv2 import codec, crypto
from gstratum.protocol.sv2.codec import SetupConnectionFlags
from gstratum.protocol.sv2.datatypes import int_to_u256
from gstratum.protocol.sv2.keys import encode_authority_public_key

from .sv2_pool import (AUTHORITY_KEY, NOW, REGTEST_NBITS, ROLLING_MASK, HonestPool, connected, easy_target,
                       identity, setup)

PREV = bytes(range(32))
ROOT = b"\x44" * 32


def open_standard(client, pool, target=easy_target(), prefix=b"\x00" * 12, channel_id=1):
    pool.send(codec.OpenStandardMiningChannelSuccess(1, channel_id, int_to_u256(target), prefix, 0))
    channel = client.open_standard_channel("alice.rig")
    return channel, pool.receive()


def activate(pool, channel_id=1, job_id=1, prev=PREV, ntime=NOW, version=0x20000000):
    pool.send(codec.NewMiningJob(channel_id, job_id, None, version, ROOT),
              codec.SetNewPrevHash(channel_id, job_id, prev, ntime, REGTEST_NBITS))


# --- handshake and set-up ----------------------------------------------------------------------------------------

def test_handshake_setup_channel_and_first_job():
    with connected(authority_public_key=AUTHORITY_KEY) as (client, pool):
        assert client.times.noise > 0 and client.times.noise_cpu > 0 and client.times.connect > 0
        sent = setup(client, pool, SetupConnectionFlags.REQUIRES_STANDARD_JOBS)
        assert (sent.protocol, sent.min_version, sent.max_version) == (0, 2, 2)
        assert sent.flags == SetupConnectionFlags.REQUIRES_STANDARD_JOBS
        assert (sent.endpoint_host, sent.endpoint_port) == client.peer
        channel, request = open_standard(client, pool, prefix=b"\x05" * 12)
        assert isinstance(request, codec.OpenStandardMiningChannel) and request.user_identity == "alice.rig"
        assert request.nominal_hash_rate == pytest.approx(1e12, rel=1e-6) and request.max_target == b"\xff" * 32
        assert channel.extranonce_prefix == b"\x05" * 12 and channel.target == easy_target()
        activate(pool)
        job = client.wait_for_job(channel)
        assert (job.job_id, job.merkle_root, job.ntime, job.prevhash.prev_hash) == (1, ROOT, NOW, PREV)
        assert job.prevhash.network_target == (0x7FFFFF << 8 * (0x20 - 3))


def test_a_future_job_is_not_mined_until_its_prevhash_arrives():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        pool.send(codec.NewMiningJob(1, 1, None, 0x20000000, ROOT))
        client.read_message()
        assert channel.active is None and channel.jobs[1].future
        assert ChannelWork(channel).search(1000) == (None, 0)
        pool.send(codec.SetNewPrevHash(1, 1, PREV, NOW, REGTEST_NBITS))
        client.read_message()
        assert channel.active is channel.jobs[1] and channel.activations == 1


def test_jobs_between_blocks_are_active_at_once_and_a_new_prevhash_drops_the_old_ones():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        activate(pool)
        pool.send(codec.NewMiningJob(1, 2, NOW + 5, 0x20000000, b"\x55" * 32))
        client.wait_until(lambda: channel.jobs_received == 2)
        assert channel.active.job_id == 2 and channel.active.ntime == NOW + 5
        pool.send(codec.NewMiningJob(1, 3, None, 0x20000000, b"\x66" * 32),
                  codec.SetNewPrevHash(1, 3, b"\x77" * 32, NOW + 10, REGTEST_NBITS))
        client.wait_until(lambda: channel.activations == 2)
        assert set(channel.jobs) == {3} and channel.active.prevhash.prev_hash == b"\x77" * 32


def test_the_authority_key_is_pinned():
    other = encode_authority_public_key(crypto.xonly_public_key(bytes.fromhex("33" * 32)))
    with pytest.raises(Sv2ProtocolViolation, match="authority"):
        with connected(authority_public_key=other):
            pass
    with pytest.raises(Sv2ProtocolViolation, match="valid from"):      # checked only when asked
        with connected(identity(now=NOW - 7200), authority_public_key=AUTHORITY_KEY, check_certificate_time=True):
            pass
    with connected(identity(now=NOW - 7200), authority_public_key=AUTHORITY_KEY) as (client, pool):
        assert client.certificate.not_valid_after < time.time()


def test_refusals_become_sv2_rejected():
    with connected() as (client, pool):
        pool.send(codec.SetupConnectionError(SetupConnectionFlags.REQUIRES_WORK_SELECTION,
                                             "unsupported-feature-flags"))
        with pytest.raises(Sv2Rejected) as refused:
            client.setup_connection(SetupConnectionFlags.REQUIRES_WORK_SELECTION)
        assert refused.value.error_code == "unsupported-feature-flags"
    with connected() as (client, pool):
        setup(client, pool)
        pool.send(codec.OpenMiningChannelError(1, "unknown-user"))
        with pytest.raises(Sv2Rejected, match="unknown-user"):
            client.open_extended_channel("not-an-address")
        pool.send(codec.OpenExtendedMiningChannelSuccess(2, 9, b"\xff" * 32, 4, b"\x01" * 8, 0))
        channel = client.open_extended_channel("bcrt1q.rig", min_extranonce_size=2)
        assert (channel.extranonce_size, channel.extranonce_prefix, channel.kind) == (4, b"\x01" * 8, "extended")
        assert pool.receive().min_extranonce_size == 2


# --- what a miner cannot accept ------------------------------------------------------------------------------------

def violation(*messages, firmware_limits=False, standard=True):
    """Open a channel with an active job, then send `messages`: the violation they raise."""
    with connected(firmware_limits=firmware_limits) as (client, pool):
        setup(client, pool)
        if standard:
            open_standard(client, pool, target=easy_target(1.0))
            activate(pool)
        else:
            pool.send(codec.OpenExtendedMiningChannelSuccess(1, 1, int_to_u256(easy_target(1.0)), 4, b"\x01" * 8, 0))
            client.open_extended_channel("x", max_target=easy_target(0.5))
        client.poll()
        pool.send(*messages)
        with pytest.raises(Sv2ProtocolViolation) as caught:
            while True:
                client.read_message(2.0)
        return str(caught.value)


def test_a_prevhash_for_a_job_never_sent_is_refused():
    assert "never sent" in violation(codec.SetNewPrevHash(1, 99, PREV, NOW, REGTEST_NBITS))


def test_a_prevhash_for_a_job_that_was_not_a_future_job_is_refused():
    assert "not sent as a future job" in violation(codec.NewMiningJob(1, 2, NOW, 0x20000000, ROOT),
                                                   codec.SetNewPrevHash(1, 2, PREV, NOW, REGTEST_NBITS))


def test_reused_job_ids_unknown_channels_and_wrong_job_kinds_are_refused():
    assert "reused" in violation(codec.NewMiningJob(1, 1, NOW, 0x20000000, ROOT))
    assert "not open" in violation(codec.NewMiningJob(2, 5, None, 0x20000000, ROOT))
    assert "NewExtendedMiningJob on standard channel" in violation(
        codec.NewExtendedMiningJob(1, 5, None, 0x20000000, True, (), b"", b""))


def test_an_active_job_before_any_prevhash_is_refused():
    assert "no prevhash yet" in violation(codec.NewExtendedMiningJob(1, 1, NOW, 0x20000000, True, (), b"", b""),
                                          standard=False)


def test_targets_above_the_channel_maximum_are_refused():
    assert "above its max_target" in violation(codec.SetTarget(1, int_to_u256(MAX_TARGET)), standard=False)
    assert "zero" in violation(codec.SetTarget(1, bytes(32)))


def test_messages_only_a_client_sends_are_refused():
    assert "only a client sends" in violation(codec.SubmitSharesStandard(1, 0, 1, 0, NOW, 0x20000000))


def test_an_extranonce_below_the_minimum_asked_is_refused():
    with connected() as (client, pool):
        setup(client, pool)
        pool.send(codec.OpenExtendedMiningChannelSuccess(1, 1, b"\xff" * 32, 1, b"\x01" * 8, 0))
        with pytest.raises(Sv2ProtocolViolation, match="below the min_extranonce_size 2"):
            client.open_extended_channel("x", min_extranonce_size=2)


def test_anything_before_setup_success_is_refused():
    state = Sv2State()
    with pytest.raises(Sv2ProtocolViolation, match="before SetupConnection.Success"):
        state.handle(codec.SetTarget(1, b"\x01" * 32), 0.0)
    with pytest.raises(Sv2ProtocolViolation, match="before any SetupConnection"):
        state.handle(codec.SetupConnectionSuccess(2, 0), 0.0)
    state.setup_sent(0)
    with pytest.raises(Sv2ProtocolViolation, match="used_version 3"):
        state.handle(codec.SetupConnectionSuccess(3, 0), 0.0)


def test_the_firmware_limits_frames_to_8192_bytes_and_paths_to_20_entries():
    def job(prefix_size=0, path=0, job_id=5):
        return codec.NewExtendedMiningJob(1, job_id, None, 0x20000000, True, (b"\x00" * 32,) * path,
                                          b"\x00" * prefix_size, b"")
    largest = 8192 - len(job().encode())
    assert len(job(largest).encode()) == 8192
    assert "8192" in violation(job(largest + 1), firmware_limits=True, standard=False)
    assert "21 merkle path entries" in violation(job(path=21), firmware_limits=True, standard=False)
    # the same messages are fine for a miner without those limits, and the limits themselves are allowed
    for limits in (False, True):
        with connected(firmware_limits=limits) as (client, pool):
            setup(client, pool)
            pool.send(codec.OpenExtendedMiningChannelSuccess(1, 1, b"\xff" * 32, 4, b"\x01" * 8, 0))
            channel = client.open_extended_channel("x")
            pool.send(job(largest, job_id=1), job(path=20, job_id=2))
            client.wait_until(lambda: channel.jobs_received == 2)
            if not limits:
                pool.send(job(largest + 1, job_id=3), job(path=21, job_id=4))
                client.wait_until(lambda: channel.jobs_received == 4)


# --- shares and their answers ---------------------------------------------------------------------------------------

def test_batched_acks_and_errors_are_matched_by_sequence_number():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        activate(pool)
        client.wait_for_job(channel)
        sequences = [client.submit_standard(1, 1, nonce, NOW, 0x20000000) for nonce in range(4)]
        assert sequences == [0, 1, 2, 3]
        assert [pool.receive().sequence_number for _ in range(4)] == sequences
        pool.send(codec.SubmitSharesError(1, 1, "duplicate-share"))
        pool.send(codec.SubmitSharesSuccess(1, 2, 2, 2))        # covers 0 and 2 (1 was refused)
        client.wait_until(lambda: len(client.outcomes) == 3)
        outcomes = client.take_outcomes()
        assert [(o.sequence_number, o.error_code) for o in outcomes] == [(1, "duplicate-share"), (0, None), (2, None)]
        assert all(o.round_trip >= 0 for o in outcomes) and list(channel.pending) == [3]
        assert channel.accepted == 2 and channel.rejected == {"duplicate-share": 1} and channel.shares_sum == 2
        pool.send(codec.SubmitSharesSuccess(1, 3, 1, 1))
        client.wait_until(lambda: client.outcomes)
        assert not channel.pending and client.take_outcomes()[0].sequence_number == 3


@pytest.mark.parametrize("answer, expected", [
    (codec.SubmitSharesSuccess(1, 5, 1, 1), "newest share sent is 1"),
    (codec.SubmitSharesSuccess(1, 1, 3, 3), "counts 3 accepted shares; 2 shares"),
    (codec.SubmitSharesError(1, 7, "stale-share"), "awaits no answer"),
])
def test_answers_for_shares_never_sent_are_refused(answer, expected):
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        activate(pool)
        client.wait_for_job(channel)
        client.submit_standard(1, 1, 0, NOW, 0x20000000)
        client.submit_standard(1, 1, 1, NOW, 0x20000000)
        pool.send(answer)
        with pytest.raises(Sv2ProtocolViolation, match=expected):
            client.read_message()


def test_an_ack_before_any_share_is_refused():
    assert "sent no share" in violation(codec.SubmitSharesSuccess(1, 0, 1, 1))


def test_a_probe_on_a_channel_we_do_not_have_gets_its_error_matched():
    with connected() as (client, pool):
        setup(client, pool)
        open_standard(client, pool)
        assert client.submit_standard(42, 1, 0, NOW, 0x20000000) == 0
        pool.send(codec.SubmitSharesError(42, 0, "invalid-channel-id"))
        outcome = client.wait_until(lambda: client.take_outcomes())[0]
        assert (outcome.channel_id, outcome.error_code) == (42, "invalid-channel-id")


def test_set_target_applies_at_once():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool, target=easy_target(1.0))
        pool.send(codec.SetTarget(1, int_to_u256(easy_target(4.0))))
        client.read_message()
        assert channel.target == easy_target(4.0)


def test_reconnect_and_close_channel():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        assert client.reconnect_target() is None
        pool.send(codec.Reconnect("", 0))
        client.read_message()
        assert client.reconnect_target() == client.peer                  # empty host, port 0: where we are
        pool.send(codec.Reconnect("pool.example", 3336))
        client.read_message()
        assert client.reconnect_target() == ("pool.example", 3336)
        pool.send(codec.CloseChannel(1, "bye"))
        client.read_message()
        assert channel.closed == "bye" and 1 not in client.state.channels


def test_a_closed_connection_is_a_connection_error():
    with connected() as (client, pool):
        setup(client, pool)
        pool.close()
        with pytest.raises(ConnectionError):
            client.read_message(2.0)


def test_parse_sv2_url():
    key = crypto.xonly_public_key(bytes.fromhex("22" * 32))
    assert parse_sv2_url("127.0.0.1:3336") == ("127.0.0.1", 3336, None)
    assert parse_sv2_url(f"stratum2+tcp://pool.example:34254/{AUTHORITY_KEY}") == ("pool.example", 34254, key)
    with pytest.raises(ValueError):
        parse_sv2_url("stratum+tcp://pool.example:3333")


# --- the CPU miner against an honest pool ---------------------------------------------------------------------------

@pytest.fixture
def honest_pool():
    pools = []

    def start(**options):
        listener = socket.create_server(("127.0.0.1", 0))
        pool = HonestPool(listener, **options)
        pool.start()
        pools.append((pool, listener))
        return pool, listener.getsockname()[1]

    yield start
    for pool, listener in pools:
        pool.stop.set()
        pool.join(5)
        listener.close()
        assert pool.failure is None, repr(pool.failure)


def mine_on(port, extended, **mine_options):
    from gstratum.client.sv2 import Sv2Client

    with Sv2Client.connect("127.0.0.1", port, authority_public_key=AUTHORITY_KEY) as client:
        client.setup_connection(0 if extended else SetupConnectionFlags.REQUIRES_STANDARD_JOBS)
        channel = (client.open_extended_channel("x") if extended else client.open_standard_channel("x"))
        client.wait_for_job(channel)
        first = mine(client, channel, **mine_options)
        second = mine(client, channel, **mine_options)      # the same job again: nothing found twice
        return first, second, channel


@pytest.mark.parametrize("extended", [False, True], ids=["standard", "extended"])
@pytest.mark.parametrize("rolling", [False, True], ids=["fixed-version", "version-rolling"])
def test_the_cpu_miner_finds_shares_an_independent_check_accepts(honest_pool, extended, rolling):
    pool, port = honest_pool(target=easy_target(1e-6), batch=3)
    first, second, channel = mine_on(port, extended, duration=30, max_shares=5, version_rolling=rolling)
    for report in (first, second):
        assert (report.accepted, report.rejected, report.unanswered, report.submitted) == (5, {}, 0, 5)
        assert report.blocks == 5          # regtest's target: every share is a block
        assert len(report.round_trips) == 5 and report.hashes > 0
    assert [code for _, code in pool.verdicts] == [None] * 10
    assert channel.accepted == 10 and not channel.pending


def test_versions_roll_inside_the_mask_and_extranonces_differ(honest_pool):
    pool, port = honest_pool(target=easy_target(1e-6), batch=1)
    seen = []
    from gstratum.client.sv2 import Sv2Client

    with Sv2Client.connect("127.0.0.1", port) as client:
        client.setup_connection()
        channel = client.open_extended_channel("x")
        client.wait_for_job(channel)
        report = mine(client, channel, duration=30, max_shares=6, version_rolling=True,
                      on_result=lambda share, outcome: seen.append((share, outcome)))
    assert report.accepted == 6 and len(seen) == 6 and all(outcome.accepted for _, outcome in seen)
    versions = {share.version for share, _ in seen}
    assert len(versions) == 6 and all((v ^ 0x20000000) & ~ROLLING_MASK == 0 for v in versions)
    assert len({share.extranonce for share, _ in seen}) == 6 and all(len(s.extranonce) == 4 for s, _ in seen)


def test_new_blocks_while_mining_make_stale_shares_and_mining_goes_on(honest_pool):
    # a new block after every accepted share: shares found on the old job before the new prevhash is read are
    # stale; the miner keeps going on the new job
    pool, port = honest_pool(target=easy_target(1e-6), batch=1, block_every=1)
    from gstratum.client.sv2 import Sv2Client

    with Sv2Client.connect("127.0.0.1", port) as client:
        client.setup_connection()
        channel = client.open_extended_channel("x")
        client.wait_for_job(channel)
        report = mine(client, channel, duration=30, max_shares=40, tries=200)
    assert report.accepted >= 2 and set(report.rejected) <= {"stale-share"}
    assert report.accepted + report.rejected_total == 40 and report.unanswered == 0
    assert pool.blocks >= 3 and channel.activations >= pool.blocks - 1     # the last may come after


def test_mining_stops_on_reconnect():
    with connected() as (client, pool):
        setup(client, pool)
        channel, _ = open_standard(client, pool)
        activate(pool)
        client.wait_for_job(channel)
        pool.send(codec.Reconnect("", 0))
        report = mine(client, channel, duration=10)
        assert report.stopped == "reconnect" and report.seconds < 5


# --- the command line -----------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("channel", ["standard", "extended"])
def test_the_client_command_mines_over_v2(honest_pool, channel):
    import subprocess
    import sys

    from .conftest import ROOT

    pool, port = honest_pool(target=easy_target(1e-6), batch=2)
    result = subprocess.run([sys.executable, "-m", "gstratum", "client", "--protocol", "v2", "--url",
                             f"stratum2+tcp://127.0.0.1:{port}/{AUTHORITY_KEY}", "--user", "alice.rig", "--channel",
                             channel, "--mine", "--duration", "2", "--version-rolling", "--firmware-limits"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "authority key pinned" in result.stdout and f"channel: {channel} id=7" in result.stdout
    assert " BLOCK in " in result.stdout and ": accepted" in result.stdout and "REJECTED" not in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("accepted=") and " rejected=0 " in summary and "unanswered=0" in summary
    assert int(summary.split()[0].split("=")[1]) == len(pool.verdicts) > 0


@pytest.mark.integration
def test_the_client_command_refuses_the_wrong_authority_key(honest_pool):
    import subprocess
    import sys

    from .conftest import ROOT

    _, port = honest_pool(target=easy_target(1e-6))
    other = encode_authority_public_key(crypto.xonly_public_key(bytes.fromhex("33" * 32)))
    result = subprocess.run([sys.executable, "-m", "gstratum", "client", "--protocol", "v2", "--url",
                             f"127.0.0.1:{port}", "--authority-pubkey", other], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 3 and "does not verify under the pinned authority key" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["standard", "extended"])
def test_loadtest_v2_against_the_bare_v2_responder(tmp_path, kind):
    """The load tool's V2 mode end to end against scripts/bench_baseline_sv2.py (acknowledging in batches), which
    needs no server: handshakes split into their parts, new blocks reaching every miner, batched acks matched."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT, free_port

    port = free_port()
    responder = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_baseline_sv2.py"), "--port", str(port),
                                  "--block-interval", "1", "--ack-delay", "0.1", "--difficulty", "1e-7"],
                                 stdout=subprocess.PIPE, text=True)
    try:
        ready = responder.stdout.readline()
        assert "listening" in ready, ready
        key = ready.split("authority ")[1].strip()
        out = tmp_path / "report.json"
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--protocol", "v2",
                                 "--channel", kind, "--port", str(port), "--miners", "100", "--procs", "2", "--ramp",
                                 "200", "--duration", "3", "--share-rate", "1", "--pipeline", "2", "--configure",
                                 "--authority-pubkey", key, "--json", str(out), "--server-pid", str(responder.pid)],
                                capture_output=True, text=True, timeout=120)
    finally:
        responder.kill()
        responder.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["subscribed"] == report["handshakes"] == 100, report["errors_sample"]
    assert report["errors"] == report["drops"] == report["connect_failures"] == 0, report["errors_sample"]
    # every share the miners sent was answered; a block change may make some stale at a real pool, never here
    assert report["shares_accepted"] > 0 and report["shares_rejected"] == 0 and report["unanswered_shares"] == 0
    assert report["jobs_reaching_all"] >= 1 and all(j["job_id"].startswith("block ") for j in report["jobs"])
    for part in ("connect_ms", "noise_ms", "setup_ms", "handshake_ms"):
        assert report[part]["p50"] > 0, part
    assert report["setup_ms"]["p50"] <= report["handshake_ms"]["p50"]
    assert report["noise_cpu_us"]["p50"] > 0 and report["client_cpu_us_per_handshake"] > 0
    assert "Noise handshake alone" in result.stdout and "| miners subscribed | 100 / 100 |" in result.stdout

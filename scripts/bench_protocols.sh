#!/usr/bin/env bash
# Stratum V1 and V2 side by side, in one run, against one gstratum process serving both (V1 on P, V2 on P2, the same
# core): the server's CPU per handshake (2,000 miners at 250/s, the V2 ramp this 2-core box sustains: the load
# tool's own Noise costs it ~1.8 ms a miner) with the Noise responder's share of it measured alone, and accepted
# shares per second with the server's CPU per share (1,000 miners, 20 shares/s each, vardiff off). The new-block
# latency is scripts/bench_node.py newblock --protocol v1|v2 --channel standard|extended (the fake node's ZMQ).
set -u
MAIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY=$MAIN/.venv/bin/python
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null
  $PY -c "import sys, pathlib; sys.path.insert(0, '$MAIN'); from gstratum.storage.embedded_pg import EmbeddedPostgres as E; E(pathlib.Path('$MAIN/.gstratum/bench-pgdata')).stop()"
}
trap cleanup EXIT
URL=$($PY -c "import sys; sys.path.insert(0,'$MAIN'); from gstratum.storage.embedded_pg import EmbeddedPostgres as E; print(E(__import__('pathlib').Path('$MAIN/.gstratum/bench-pgdata')).start().url)")
free() { $PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
WORK=$(mktemp -d)
echo "Noise responder alone (the handshake's crypto, in process):"
$PY - <<'PYEOF'
import resource, sys
sys.path.insert(0, ".")
from gstratum.protocol.sv2.certificate import ServerIdentity
from gstratum.protocol.sv2.noise import NoiseInitiator, NoiseResponder
identity = ServerIdentity.create(bytes(31) + b"\1", 0)
starts = [NoiseInitiator(None).start() for _ in range(300)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
for start in starts:
    NoiseResponder(identity).receive(start)
print(f"  {1e6 * (resource.getrusage(resource.RUSAGE_SELF).ru_utime - before) / len(starts):.0f} us CPU per handshake")
PYEOF
run_phase() {  # what protocol port miners ramp extra...
  what=$1; protocol=$2; port=$3; miners=$4; ramp=$5; shift 5
  $PY $MAIN/scripts/loadtest.py --protocol "$protocol" --port "$port" --miners "$miners" --procs 2 --ramp "$ramp" \
      --src-ips 8 --server-pid "$PID" --json "$WORK/$what-$protocol.json" "$@" > /dev/null 2>&1
  $PY - "$WORK/$what-$protocol.json" "$what" "$protocol" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
what, protocol = sys.argv[2:]
protocol += f" ({r['channel']} channels)" if r.get("channel") else ""
if what == "handshake":
    print(f"  {protocol}: subscribed {r['subscribed']}, handshake p50 {r['handshake_ms']['p50']:.1f} ms / p99 "
          f"{r['handshake_ms']['p99']:.1f} ms, server CPU per handshake {r.get('server_cpu_us_per_handshake')} us")
else:
    print(f"  {protocol}: {r['shares_per_second']:.0f} accepted shares/s, server CPU per share "
          f"{r.get('server_cpu_us_per_share_after_ramp')} us, rejected {r['shares_rejected']}")
PYEOF
}
for what in handshake shares; do
  P=$(free); P2=$(free)
  interval=60; extra=(--vardiff 0)
  (cd "$MAIN" && exec $PY -m gstratum run --host 127.0.0.1 --port "$P" --sv2-port "$P2" --http-port 0 \
     --difficulty 0.0000000001 --min-difficulty 0.0000000001 --notify-interval $interval --database-url "$URL" \
     --journal-dir "$WORK/journal-$what" --sv2-authority-key "$WORK/authority.key" "${extra[@]}") \
     > "$WORK/server-$what.log" 2>&1 &
  PID=$!; sleep 5
  echo "$what:"
  for kind in v1 v2:extended v2:standard; do
    protocol=${kind%%:*}; channel=${kind#*:}; [ "$channel" = v1 ] && channel=extended
    port=$P; [ $protocol = v2 ] && port=$P2
    if [ $what = handshake ]; then
      [ "$kind" = v2:standard ] && continue
      run_phase handshake $protocol "$port" 2000 250 --duration 3 --channel extended
    else run_phase shares $protocol "$port" 1000 250 --duration 20 --share-rate 20 --channel "$channel"; fi
  done
  kill "$PID"; wait "$PID" 2>/dev/null; PID=
done

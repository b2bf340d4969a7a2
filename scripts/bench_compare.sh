#!/usr/bin/env bash
# Before/after/bare, same hour (a commit REV in a git worktree, this tree, scripts/bench_baseline.py): handshake CPU at a 1,000/s ramp (no broadcast in the ramp), 10,000-miner fan-out, and accepted shares per second with the server's CPU per share (1,000 miners, 20 shares/s each, vardiff off).
set -u
MAIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY=$MAIN/.venv/bin/python; REV=${1:?usage: scripts/bench_compare.sh REV (the commit to compare with)}
BEFORE=$(mktemp -d)/before
cleanup() {
  git -C "$MAIN" worktree remove --force "$BEFORE" 2>/dev/null
  $PY -c "import sys, pathlib; sys.path.insert(0, '$MAIN'); from gstratum.storage.embedded_pg import EmbeddedPostgres as E; E(pathlib.Path('$MAIN/.gstratum/bench-pgdata')).stop()"
}
trap cleanup EXIT
URL=$($PY -c "import sys; sys.path.insert(0,'$MAIN'); from gstratum.storage.embedded_pg import EmbeddedPostgres as E; print(E(__import__('pathlib').Path('$MAIN/.gstratum/bench-pgdata')).start().url)")
git -C "$MAIN" worktree add -f "$BEFORE" "$REV" >/dev/null 2>&1 || { echo "cannot check out $REV"; exit 1; }
run() {  # name dir interval extra...
  name=$1; dir=$2; interval=$3; shift 3
  port=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  if [ "$name" = bare ]; then
    (cd $MAIN && exec $PY scripts/bench_baseline.py --port $port --notify-interval $interval) > /tmp/speed-$name.log 2>&1 &
  else
    (cd $dir && exec $PY -m gstratum run --host 127.0.0.1 --port $port --http-port 0 --difficulty 0.0000000001 \
       --notify-interval $interval --database-url $URL --journal-dir /tmp/speed-j-$name "$@") > /tmp/speed-$name.log 2>&1 &
  fi
  pid=$!; sleep 4
  echo "$pid $port"
}
for what in handshake fanout shares; do
  for name in before after bare; do
    dir=$MAIN; [ $name = before ] && dir=$BEFORE
    miners=10000
    if [ $what = handshake ]; then read pid port < <(run $name $dir 60); args="--duration 3"
    elif [ $what = fanout ]; then read pid port < <(run $name $dir 5); args="--duration 40"
    else read pid port < <(run $name $dir 30 --vardiff 0); miners=1000; args="--duration 20 --share-rate 20"; fi
    $PY $MAIN/scripts/loadtest.py --port $port --miners $miners --procs 2 --ramp 1000 $args --src-ips 8 --server-pid $pid --json /tmp/speed-$what-$name.json > /dev/null 2>&1
    kill $pid; wait $pid 2>/dev/null
    $PY - "$what" "$name" <<'PYEOF'
import json, re, sys, statistics
what, name = sys.argv[1:]
r = json.load(open(f"/tmp/speed-{what}-{name}.json"))
log = open(f"/tmp/speed-{name}.log").read()
fan = [(float(a), float(b)) for a, b in re.findall(r"miners=10000 fanout=([\d.]+)ms cpu=([\d.]+)ms", log)]
print(f"{what:9} {name:6} subscribed={r['subscribed']} hs_p50={r['handshake_ms']['p50']} hs_p99={r['handshake_ms']['p99']} "
      f"cpu_us/handshake={r.get('server_cpu_us_per_handshake')} shares/s={r.get('shares_per_second')} "
      f"cpu_us/share={r.get('server_cpu_us_per_share_after_ramp')} fanouts={len(fan)} "
      f"fanout_wall_median={statistics.median([f for f,_ in fan]) if fan else '-'} fanout_cpu_median={statistics.median([c for _,c in fan]) if fan else '-'}")
PYEOF
  done
done

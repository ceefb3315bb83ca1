#!/usr/bin/env bash
# Cluster measurements with the release binary (see README "Cluster figures").
#   tests/bench/cluster.sh forward [RUNS] [DUR]   reservation latency sent to the owner vs to a
#                                                 non-owner (forwarded), and forward batch sizes
#   tests/bench/cluster.sh handoff [KEYS]         a joiner takes half of KEYS keys (V/2 vnodes)
#                                                 from a loaded node under client load: time to
#                                                 finish the moves and the latency clients saw
# Nodes run on loopback in $WORK (default /tmp/stockring-cluster-bench); the load generator
# shares the machine's cores with them.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${STOCKRING_BIN:-target/release/stockring}
WORK=${WORK:-/tmp/stockring-cluster-bench}
[ -x "$BIN" ] || cargo build --release

node_config() { # name http cluster vnodes seeds
  cat >"$WORK/$1.toml" <<TOML
http_addr = "127.0.0.1:$2"
data_dir = "$WORK/$1"
log = "warn,stockring=info"
max_in_flight = 65536
[cluster]
enabled = true
node_name = "$1"
cluster_addr = "127.0.0.1:$3"
seeds = [$5]
cookie = "stockring-bench-cluster"
vnodes = $4
TOML
}

start() { # name
  "$BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  echo $! >"$WORK/$1.pid"
}

wait_ready() { # port
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node on $1 not ready" >&2; exit 1
}

moves() { # port
  curl -fsS "http://127.0.0.1:$1/v1/cluster" | python3 -c \
    'import sys,json; d=json.load(sys.stdin); print(len(d["moves_in_progress"]), " ".join("%s=%s" % (m["name"], m["vnodes"]) for m in d["members"]))'
}

stop_all() {
  for f in "$WORK"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
}

fresh() {
  stop_all 2>/dev/null || true
  rm -rf "$WORK"; mkdir -p "$WORK"
}

bench() { # port dur
  "$BIN" bench --target "http://127.0.0.1:$1" --workload uniform --keys 10000 \
    --clients 64 --duration-s "$2" --json-only | tail -1
}

case "${1:-forward}" in
  forward)
    RUNS=${2:-3}; DUR=${3:-10}
    fresh
    # V = 1: the single vnode stays on n1, so every request to n2 is forwarded.
    node_config n1 9301 9401 1 '"n1@127.0.0.1:9401"'
    node_config n2 9302 9402 1 '"n1@127.0.0.1:9401"'
    start n1; wait_ready 9301; start n2; wait_ready 9302
    sleep 1; echo "ring: $(moves 9301)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq 1 "$RUNS"); do
      echo "owner     run $r: $(bench 9301 "$DUR")"
      echo "non-owner run $r: $(bench 9302 "$DUR")"
    done
    echo "forward batch size on n2 (histogram):"
    curl -fsS http://127.0.0.1:9302/metrics | grep -E '^stockring_forward_batch_size(_sum|_count| )|^stockring_forward_batch_size_bucket' | head -20
    stop_all
    ;;
  handoff)
    KEYS=${2:-200000}
    fresh
    node_config n1 9301 9401 1024 '"n1@127.0.0.1:9401"'
    node_config n2 9302 9402 1024 '"n1@127.0.0.1:9401"'
    start n1; wait_ready 9301
    echo "seeding $KEYS keys on n1 ..."
    "$BIN" bench --target http://127.0.0.1:9301 --workload uniform --keys "$KEYS" \
      --clients 32 --duration-s 2 --run-id handoff --json-only | tail -1
    echo "load average before the join: $(cut -d' ' -f1-3 /proc/loadavg)"
    # Client load on the seeded keys for the whole handoff (half of them are on moving vnodes).
    "$BIN" bench --target http://127.0.0.1:9301 --workload uniform --keys "$KEYS" \
      --clients 32 --duration-s "${HANDOFF_LOAD_S:-20}" --run-id handoff --skip-seed \
      --json-only >"$WORK/bench.json" 2>&1 &
    BENCH=$!
    sleep 1
    T0=$(date +%s%N)
    start n2; wait_ready 9302
    T_READY=$(date +%s%N)
    while true; do
      m=$(moves 9301); set -- $m
      if [ "$1" = 0 ] && echo "$m" | grep -q "n2=512"; then break; fi
      sleep 0.1
    done
    T1=$(date +%s%N)
    echo "n2 ready after $(( (T_READY-T0)/1000000 )) ms; 512 of 1024 vnodes moved to n2 $(( (T1-T0)/1000000 )) ms after starting it"
    echo "ring: $(moves 9301)"
    curl -fsS http://127.0.0.1:9302/metrics | grep -E '^stockring_handoff_keys_total|^stockring_handoffs_total'
    wait $BENCH || true
    echo "client load during the handoff (bench started 1 s before n2, ran ${HANDOFF_LOAD_S:-20} s):"
    tail -1 "$WORK/bench.json"
    stop_all
    ;;
  *) echo "usage: $0 forward [RUNS] [DUR] | handoff [KEYS]" >&2; exit 64 ;;
esac

#!/usr/bin/env bash
# A local 3-node stockring cluster on loopback (config/node1..3.toml), for trying it out.
#   deploy/local-cluster.sh start    build (release), start node1..3, wait until ready
#   deploy/local-cluster.sh join     start node4 (config/node4.toml): a join
#   deploy/local-cluster.sh status   `stockring cluster status` via node1
#   deploy/local-cluster.sh stop     SIGTERM every node started here (they drain and exit)
# Data and logs go to ./data/nodeN and ./data/nodeN.log.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${STOCKRING_BIN:-target/release/stockring}

start_node() {
  local n=$1
  mkdir -p data
  "$BIN" serve --config "config/node$n.toml" >"data/node$n.log" 2>&1 &
  echo $! >"data/node$n.pid"
  echo "node$n: pid $(cat "data/node$n.pid"), http 127.0.0.1:808$n, log data/node$n.log"
}

wait_ready() {
  local n=$1
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:808$n/ready" >/dev/null 2>&1; then
      echo "node$n ready"
      return 0
    fi
    sleep 0.1
  done
  echo "node$n did not become ready; see data/node$n.log" >&2
  return 1
}

case "${1:-start}" in
  start)
    [ -x "$BIN" ] && [ -z "${REBUILD:-}" ] || cargo build --release
    for n in 1 2 3; do start_node "$n"; done
    for n in 1 2 3; do wait_ready "$n"; done
    "$BIN" cluster status --http 127.0.0.1:8081
    ;;
  join)
    start_node 4
    wait_ready 4
    ;;
  status)
    "$BIN" cluster status --http "127.0.0.1:${2:-8081}"
    ;;
  stop)
    for f in data/node*.pid; do
      [ -e "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    ;;
  *)
    echo "usage: $0 start|join|status|stop" >&2
    exit 64
    ;;
esac

#!/usr/bin/env bash
# A flash sale on one key with long ids, two builds side by side: ROUNDS rounds, each running
# the flash once on a fresh node of each build (interleaved, so the shared machine's drift hits
# both alike). The load generator is this build's, for both. Prints per run the throughput and
# latencies, the node's peak RSS, and the key's stored size (snapshot row; record segments from
# schema v5 on), then the medians per build.
#
#   BEFORE=/path/to/older/stockring tests/bench/flash_ids.sh [ROUNDS=2] [ATTEMPTS=1000000] [ID_LEN=100]
set -euo pipefail
ROUNDS=${1:-2}
ATTEMPTS=${2:-1000000}
ID_LEN=${3:-100}
NEW=target/release/stockring
BEFORE=${BEFORE:?set BEFORE to the older stockring binary}
cargo build --release --quiet
OUT=$(mktemp -d)
echo "load before: $(cat /proc/loadavg)"
one() { # label binary round
  local label=$1 bin=$2 round=$3 data
  data=$(mktemp -d)
  "$bin" serve --data-dir "$data" --http-addr 127.0.0.1:18095 >"$OUT/$label-$round.log" 2>&1 &
  local node=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18095/ready >/dev/null && break; sleep 0.1; done
  $NEW bench --json-only --target http://127.0.0.1:18095 --workload flash --clients 64 \
    --stock 10000 --attempts "$ATTEMPTS" --id-len "$ID_LEN" --run-id "r$round" \
    | grep '^{"bench"' >"$OUT/$label-$round.json"
  local rss
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$node/status")
  kill -TERM "$node"; wait "$node" || true
  python3 - "$data/stockring.db" "flash-r$round/w1" "$rss" "$OUT/$label-$round.json" "$label" <<'PY'
import json, sqlite3, sys
db, key, rss, js, label = sys.argv[1:]
conn = sqlite3.connect(db)
row = conn.execute("SELECT length(state) FROM snapshots WHERE key = ?", (key,)).fetchone()
try:
    seg = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(records)), 0), "
                       "COALESCE(MAX(length(records)), 0) FROM segments WHERE key = ?", (key,)).fetchone()
except sqlite3.OperationalError:
    seg = (0, 0, 0)
b = json.load(open(js))["bench"]
b.update(label=label, snapshot_row_bytes=row[0] if row else None, segments=seg[0],
         segment_bytes=seg[1], largest_segment=seg[2], peak_rss_kib=int(rss))
json.dump(b, open(js, "w"))
print(f"{label:7} {b['throughput_rps']:8.0f} req/s  p50 {b['p50_us']/1e3:6.2f} ms  p99 {b['p99_us']/1e3:6.2f} ms  "
      f"p99.9 {b['p999_us']/1e3:7.2f} ms  max {b['max_us']/1e3:7.1f} ms  pass {b['flash_pass']}  "
      f"snapshot {b['snapshot_row_bytes']} B  segments {seg[0]} ({seg[1]/1e6:.1f} MB, largest {seg[2]/1e3:.0f} KB)  "
      f"RSS {int(rss)/1024:.0f} MiB")
PY
  rm -rf "$data"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then one before "$BEFORE" "$r"; one after "$NEW" "$r";
  else one after "$NEW" "$r"; one before "$BEFORE" "$r"; fi
done
echo "load after: $(cat /proc/loadavg)"
python3 - "$OUT" <<'PY'
import json, glob, statistics, sys
runs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/*.json")]
for label in ("before", "after"):
    rs = [r for r in runs if r["label"] == label]
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"median {label}: {med('throughput_rps'):.0f} req/s, p50 {med('p50_us')/1e3:.2f} ms, "
          f"p99 {med('p99_us')/1e3:.2f} ms, p99.9 {med('p999_us')/1e3:.2f} ms, max {med('max_us')/1e3:.1f} ms")
PY

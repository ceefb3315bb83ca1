#!/usr/bin/env bash
# Benchmarks a release build of stockring against the in-memory null server (the HTTP ceiling
# of this machine) and the durable null server (the null server plus a group-committed, fsynced
# SQLite append per change: the floor of durability alone), RUNS times per workload, and prints
# the median of each figure.
# Usage: tests/bench/compare.sh [RUNS] [DURATION_S]      (run from the repository root)
set -euo pipefail
RUNS=${1:-3}
DUR=${2:-10}
BIN=target/release/stockring
cargo build --release --quiet
DATA=$(mktemp -d)
OUT=$(mktemp -d)
cleanup() { kill "$NODE" "$NULL" "$DNULL" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
$BIN serve --data-dir "$DATA" --http-addr 127.0.0.1:18090 >"$OUT/node.log" 2>&1 & NODE=$!
$BIN bench-null-server --http-addr 127.0.0.1:18091 >"$OUT/null.log" 2>&1 & NULL=$!
$BIN bench-null-server --http-addr 127.0.0.1:18092 --durable-dir "$DATA/null" >"$OUT/dnull.log" 2>&1 & DNULL=$!
sleep 1
echo "load before: $(cat /proc/loadavg)"
run() { # target workload extra-args...
  local target=$1 workload=$2; shift 2
  $BIN bench --json-only --target "http://127.0.0.1:$target" --workload "$workload" --clients 64 "$@" \
    | grep '^{"bench"' >>"$OUT/$target-$workload.jsonl"
}
for w in flash uniform zipf; do
  case $w in
    flash) args=(--stock 10000 --attempts 100000) ;;
    *) args=(--duration-s "$DUR" --keys 10000) ;;
  esac
  # Interleaved, so that the machine's drift (it is shared) hits the three servers alike.
  for i in $(seq "$RUNS"); do
    run 18090 "$w" "${args[@]}"
    run 18091 "$w" "${args[@]}"
    run 18092 "$w" "${args[@]}"
  done
done
echo "load after: $(cat /proc/loadavg)"
python3 - "$OUT" <<'PY'
import json, statistics, sys, glob, os
out = sys.argv[1]
print(f"{'server':9} {'workload':8} {'runs':>4} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'p999 ms':>8} {'errors':>6} flash")
ceil, floor = {}, {}
for target, name in (("18091", "null"), ("18092", "durable"), ("18090", "stockring")):
    for w in ("flash", "uniform", "zipf"):
        rows = [json.loads(l)["bench"] for l in open(os.path.join(out, f"{target}-{w}.jsonl"))]
        med = lambda k: statistics.median(r[k] for r in rows)
        rps = med("throughput_rps")
        if name == "null":
            ceil[w] = rps
        ratio = f" ({rps / ceil[w]:.2f} of ceiling" if name != "null" else ""
        if name == "durable":
            floor[w] = rps
            ratio += ")"
        elif name == "stockring":
            ratio += f", {rps / floor[w]:.2f} of durable)"
        flash = ",".join("PASS" if r["flash_pass"] else "FAIL" for r in rows) if w == "flash" else ""
        print(f"{name:9} {w:8} {len(rows):>4} {rps:>9.0f} {med('p50_us')/1000:>7.2f} {med('p99_us')/1000:>7.2f} "
              f"{med('p999_us')/1000:>8.2f} {sum(r['errors'] for r in rows):>6} {flash}{ratio}")
# Runs were interleaved: the ratio within each round is less exposed to the machine's drift.
rps = lambda t, w: [json.loads(l)["bench"]["throughput_rps"] for l in open(os.path.join(out, f"{t}-{w}.jsonl"))]
for w in ("flash", "uniform", "zipf"):
    s, n, d = rps("18090", w), rps("18091", w), rps("18092", w)
    pn = statistics.median(a / b for a, b in zip(s, n))
    pd = statistics.median(a / b for a, b in zip(s, d))
    dn = statistics.median(a / b for a, b in zip(d, n))
    print(f"paired medians, {w:8}: stockring/null {pn:.2f}  stockring/durable {pd:.2f}  durable/null {dn:.2f}")
PY
curl -s http://127.0.0.1:18090/metrics | grep -E '^stockring_group_commit(s_total|_seconds_sum|_seconds_count|_batch_size_sum|_batch_size_count)' || true

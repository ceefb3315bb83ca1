#!/usr/bin/env bash
# A long sweep of the deterministic simulation: seeds FIRST .. FIRST+COUNT-1 (plus the
# regression seeds), release build, split into one chunk per core. Prints every failing seed
# with its replay command; exits non-zero if any failed.
#
#   simulations/sweep.sh [COUNT=60000] [FIRST=0]
#   SIM=replication simulations/sweep.sh [COUNT] [FIRST]   # the replication simulation
#
# 60,000 seeds take under a minute on 2 cores (release build). Replay a failure with
#   STOCKRING_SIM_SEED=<seed> cargo test --test simulations membership -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-60000}
first=${2:-0}
jobs=$(nproc 2>/dev/null || echo 2)
case "${SIM:-membership}" in
  membership) target=simulations; test_fn=membership_and_handoff ;;
  replication) target=replication; test_fn=replication_seeds ;;
  *) echo "SIM must be membership or replication" >&2; exit 2 ;;
esac
cargo test --release --test "$target" --no-run >/dev/null
out=$(mktemp -d)
chunk=$(( (count + jobs - 1) / jobs ))
pids=()
for j in $(seq 0 $((jobs - 1))); do
  start=$((first + j * chunk))
  n=$(( count - j * chunk )); [ "$n" -gt "$chunk" ] && n=$chunk
  [ "$n" -le 0 ] && break
  STOCKRING_SIM_SEEDS=$n STOCKRING_SIM_FIRST=$start \
    cargo test --release --test "$target" "$test_fn" -- --nocapture \
    >"$out/chunk$j.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
grep -h "seeds in" "$out"/chunk*.log || true
if [ $rc -ne 0 ]; then
  grep -h "SIMULATION FAILED" "$out"/chunk*.log || cat "$out"/chunk*.log
  echo "sweep FAILED (logs in $out)"
  exit 1
fi
echo "sweep passed: seeds $first..$((first + count - 1))"
rm -rf "$out"

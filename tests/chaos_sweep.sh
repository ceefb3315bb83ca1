#!/usr/bin/env bash
# A sweep of chaos runs: COUNT runs of DURATION with seeds FIRST.., every fault kind, against the
# release build; one summary line per run and the per-kind availability of each, in
# chaos-out/sweep-<first>/summary.txt. Exit 1 if any run was not clean.
#
#   tests/chaos_sweep.sh [COUNT=20] [DURATION=60s] [FIRST=1] [EXTRA CHAOS FLAGS...]
set -uo pipefail
cd "$(dirname "$0")/.."
count=${1:-20}
duration=${2:-60s}
first=${3:-1}
shift $(( $# > 3 ? 3 : $# ))
cargo build --release --locked --quiet || exit 2
out=chaos-out/sweep-$first
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
bad=0
for seed in $(seq "$first" $((first + count - 1))); do
  start=$(date +%s)
  target/release/stockring chaos --seed "$seed" --duration "$duration" --out "$out/seed-$seed" "$@" \
    > "$out/seed-$seed.txt" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  load=$(cut -d' ' -f1 /proc/loadavg)
  line="seed $seed exit $rc ${took}s load $load: $(grep -E '^chaos: [0-9]+ calls' "$out/seed-$seed.txt") | $(grep -E '^VERDICT' "$out/seed-$seed.txt" || echo 'no verdict')"
  echo "$line" | tee -a "$summary"
  grep -E '^  (kill|pause|partition)' "$out/seed-$seed.txt" >> "$summary"
  grep -E '^  - ' "$out/seed-$seed.txt" >> "$summary"
  [ "$rc" = 0 ] || bad=1
  # Keep the evidence of a failing run; a clean run's node data is large and says nothing.
  [ "$rc" = 0 ] && rm -rf "$out/seed-$seed"/n*-data
done
echo "summary in $summary"
exit $bad

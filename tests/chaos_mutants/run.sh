#!/usr/bin/env bash
# Proof that `stockring chaos` bites: builds each mutant (a patch in this directory that breaks
# one guarantee), runs a chaos run whose nodes are that build (the runner and checker are the
# real build) with the seed and flags that caught it, and expects a NOT CLEAN verdict (exit 1).
# Prints one line per mutant.
#
#   tests/chaos_mutants/run.sh
#
# Needs a clean `src/` (the patches are applied to it and reverted). Each mutant build is an
# incremental release build (~2-4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The seed and flags each mutant was caught with (README, "The checker bites").
declare -A flags=(
  [reply-before-durable]="--seed 2 --duration 40s --faults kill,kill-leader --rate 600 --clients 32"
  [replay-answers-now]="--seed 1 --duration 30s"
  [receipt-applied-twice]="--seed 1 --duration 30s"
  [forward-loss-says-not-applied]="--seed 1 --duration 40s --faults pause,partition-one,partition-half"
)
git diff --quiet -- src || { echo "src/ has uncommitted changes: commit or stash them first" >&2; exit 2; }
mkdir -p target/mutants
for patch in tests/chaos_mutants/*.patch; do
  name=$(basename "$patch" .patch)
  git apply "$patch"
  trap 'git apply -R "$patch"' EXIT
  cargo build --release --locked --quiet
  cp target/release/stockring "target/mutants/$name"
  git apply -R "$patch"
  trap - EXIT
done
cargo build --release --locked --quiet
failed=0
for patch in tests/chaos_mutants/*.patch; do
  name=$(basename "$patch" .patch)
  set +e
  # shellcheck disable=SC2086 # the flags are words
  target/release/stockring chaos --bin "target/mutants/$name" ${flags[$name]:---seed 1} \
    --out "target/mutants/$name-out" > "target/mutants/$name.txt" 2>&1
  rc=$?
  set -e
  verdict=$(grep -E '^VERDICT' "target/mutants/$name.txt" || echo "no verdict")
  first=$(grep -E '^  - ' "target/mutants/$name.txt" | head -1 | cut -c1-160)
  if [ "$rc" = 1 ]; then
    echo "caught   $name (${flags[$name]:-}, exit $rc): $first"
  else
    echo "MISSED   $name (${flags[$name]:-}, exit $rc): $verdict"
    failed=1
  fi
done
exit $failed

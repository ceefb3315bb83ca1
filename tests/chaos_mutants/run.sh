#!/usr/bin/env bash
# Proof that `stockring chaos` bites: builds each mutant (a patch in this directory that breaks
# one guarantee), runs a chaos run whose nodes are that build (the runner and checker are the
# real build), and expects a NOT CLEAN verdict (exit 1). Prints one line per mutant.
#
#   tests/chaos_mutants/run.sh [SEED] [DURATION] [EXTRA CHAOS FLAGS...]
#
# Needs a clean `src/` (the patches are applied to it and reverted). Each mutant build is an
# incremental release build (~2-4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
seed=${1:-1}
duration=${2:-30s}
shift $(( $# > 2 ? 2 : $# ))
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
  target/release/stockring chaos --bin "target/mutants/$name" --seed "$seed" \
    --duration "$duration" --out "target/mutants/$name-out" "$@" > "target/mutants/$name.txt" 2>&1
  rc=$?
  set -e
  verdict=$(grep -E '^VERDICT' "target/mutants/$name.txt" || echo "no verdict")
  first=$(grep -E '^  - ' "target/mutants/$name.txt" | head -1 | cut -c1-160)
  if [ "$rc" = 1 ]; then
    echo "caught   $name (seed $seed, exit $rc): $first"
  else
    echo "MISSED   $name (seed $seed, exit $rc): $verdict"
    failed=1
  fi
done
exit $failed

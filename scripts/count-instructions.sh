#!/usr/bin/env bash
# Instructions executed by one single-threaded check of a kernel image, counted by cachegrind.
# Unlike wall time the count does not move with the machine's load, so two builds can be
# compared on a noisy machine; it does not see cache misses or page faults, so confirm a gain
# in time too (scripts/bench.sh, `stackval check --time`).
#
#   scripts/count-instructions.sh [BINARY [IMAGE]]
#
# BINARY defaults to target/release/stackval (built first), IMAGE to the cached Debian 6.1
# cloud vmlinux (fetched once by scripts/fetch-kernels.sh). Prints the total and the functions
# that execute the most. Takes 15–30 seconds. Installs valgrind with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
    echo "count-instructions: installing valgrind" >&2
    { apt-get update -qq && apt-get install -y -qq valgrind; } >/dev/null
fi
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=target/release/stackval
fi
image=${2:-$(scripts/fetch-kernels.sh 6.1 | awk '{print $2}')}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
    "$bin" check --quiet --no-progress --jobs 1 "$image" >/dev/null 2>&1 || true
total=$(awk '/^summary:/ {print $2}' "$out")
[ -n "$total" ] || { echo "count-instructions: cachegrind produced no count" >&2; exit 2; }
echo "count-instructions: $bin on $image: $total instructions executed (one thread)"
cg_annotate "$out" 2>/dev/null | grep -E '^ *[0-9,]+ \( *[0-9.]+%\) ' | sed -n '2,16p' |
    sed -E 's/ +/ /; s/\[[^]]*\]$//'

#!/usr/bin/env bash
# Fetch (once) Debian's cloud vmlinux images and check them with stackval.
#
#   scripts/check-kernel.sh [6.1|6.12|all] [stackval check options...]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-6.1}
[ $# -gt 0 ] && shift
cargo build --release --quiet
status=0
while read -r flavour image; do
    echo "== Debian $flavour cloud vmlinux: $image" >&2
    ./target/release/stackval check "$@" "$image" || status=$?
done < <(scripts/fetch-kernels.sh "$which")
exit "$status"

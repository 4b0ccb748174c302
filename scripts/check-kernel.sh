#!/usr/bin/env bash
# Fetch (once) Debian's vmlinux images and check them with stackval.
#
#   scripts/check-kernel.sh [6.1|6.12|all] [stackval check options...]
#   scripts/check-kernel.sh [6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours] [options...]
#   scripts/check-kernel.sh [bullseye|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt] [options...]
#
# `all` is the two cloud images; the second form checks Debian's other flavours of the same
# releases, the third Debian 11's 5.10, Debian 13's 6.12 and unstable's newest (see
# scripts/fetch-kernels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-6.1}
[ $# -gt 0 ] && shift
cargo build --release --quiet
status=0
while read -r flavour image; do
    echo "== Debian $flavour vmlinux: $image" >&2
    ./target/release/stackval check "$@" "$image" || status=$?
done < <(scripts/fetch-kernels.sh "$which")
exit "$status"

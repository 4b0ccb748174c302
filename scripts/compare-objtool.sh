#!/usr/bin/env bash
# objtool's warnings in the test kernel's build log against stackval's findings on the
# linked vmlinux of the same build.
#
#   scripts/compare-objtool.sh
#
# Builds the test kernel first if needed (scripts/build-test-kernel.sh, cached), runs
# `stackval check --frame-pointer --format json` on its vmlinux, and prints:
#   - every objtool warning (file.o: warning: objtool: func+0xoff: message) with the
#     stackval finding at the same function and of the same kind, or MISSING;
#   - every stackval finding objtool did not make, as EXTRA, with its explanation from
#     scripts/kbuild/extra-explained.tsv, or "(unexplained)" and which object defines the
#     function and whether objtool ran on it;
#   - the counts: objtool N, matched M, missing K, extra E.
# Exits 0 whatever the comparison shows (2 when the kernel or stackval could not run).
# The table is also kept in ${STACKVAL_CACHE:-~/.cache/stackval}/kbuild/compare.txt.
set -euo pipefail
. "$(dirname "$0")/kbuild/lib.sh"

info=$(bash "$KB_REPO/scripts/build-test-kernel.sh")
vmlinux=$(awk '$1 == "vmlinux" { print $2 }' <<< "$info")
log=$(awk '$1 == "log" { print $2 }' <<< "$info")
if [ ! -f "$vmlinux" ] || [ ! -f "$log" ]; then
    kb_die "build-test-kernel.sh gave no vmlinux or log"
fi

findings=$KB_CACHE/compare.stackval.json
rc=0
"$KB_STACKVAL" check --frame-pointer --no-progress --format json "$vmlinux" > "$findings" || rc=$?
[ "$rc" -le 1 ] || kb_die "stackval exited with $rc on $vmlinux"

incremental=
[ "$(awk '{ print $4 }' "$KB_TIMES" 2> /dev/null)" = from-scratch ] || incremental=--incremental

python3 "$KB_REPO/scripts/kbuild/compare.py" --log "$log" --findings "$findings" \
    --vmlinux "$vmlinux" --explain "$KB_REPO/scripts/kbuild/extra-explained.tsv" \
    --full "$KB_CACHE/compare-extra.tsv" $incremental | tee "$KB_CACHE/compare.txt"
exit 0

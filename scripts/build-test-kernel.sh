#!/usr/bin/env bash
# Build stackval's test kernel with stackval as its post-link step.
#
#   scripts/build-test-kernel.sh [--force]
#
# Takes Debian's linux-source-6.1 (downloaded and unpacked once), configures
# `make tinyconfig` + scripts/kbuild/test-kernel.config (64-bit, frame-pointer
# unwinder, objtool stack validation, RELOCATABLE so the link keeps its
# relocations, ...), applies scripts/kbuild/link-vmlinux-stackval.patch, builds
# stackval, then `make -j2 STACKVAL=1 STACKVAL_BIN=target/release/stackval vmlinux`.
#
# Cached: when the vmlinux was built from the same config fragment and patch (by content),
# nothing is rebuilt (the stackval step is re-run once, standalone, to time the
# current binary). --force deletes the build directory and builds from scratch.
# A changed fragment or patch without --force gives an incremental build.
#
# stdout, one "key value" per line (other scripts read it):
#   vmlinux <path>   log <path>   build <s>   link <s>   stackval <s>   stackval_now <s>
# Progress, warnings and the link steps go to stderr; the full log is kept.
# Environment: STACKVAL_CACHE, STACKVAL_KBUILD_JOBS (default 2),
# STACKVAL_KBUILD_VERBOSE=1 (whole make output on stderr),
# STACKVAL_LINUX_SOURCE_DEB (use this linux-source-6.1 .deb instead of apt),
# STACKVAL_BIN (use this stackval binary instead of building the checkout's).
set -euo pipefail
. "$(dirname "$0")/kbuild/lib.sh"

force=0
for arg; do
    case $arg in
        --force) force=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--force]" >&2; exit 2 ;;
    esac
done

kb_need_tools
kb_build_stackval
kb_unpack_tree
kb_apply_patch "$KB_TREE"

out=$KB_TREE/out
vmlinux=$out/vmlinux

# stackval_now: the stackval step alone, run now on the built image, in seconds.
stackval_now() {
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    "$KB_STACKVAL" check --frame-pointer --no-progress -q "$vmlinux" > /dev/null || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -le 1 ] || kb_die "stackval exited with $rc on $vmlinux"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
}

report() { # build link stackval kind
    local now
    now=$(stackval_now)
    echo "vmlinux $vmlinux"
    echo "log $KB_LOG"
    echo "build $1"
    echo "link $2"
    echo "stackval $3"
    echo "stackval_now $now"
    {
        echo "[kbuild] vmlinux:  $vmlinux"
        echo "[kbuild] log:      $KB_LOG"
        echo "[kbuild] build:    $1 s ($4, make -j$KB_JOBS vmlinux)"
        echo "[kbuild] link:     $2 s (vmlinux.o to the end of link-vmlinux.sh, stackval included)"
        echo "[kbuild] stackval: $3 s in the build's STACKVAL step; $now s now, standalone"
    } >&2
}

# The inputs are compared by content, not time: a fresh clone gives them new mtimes.
inputs=$(cat "$KB_CONFIG" "$KB_PATCH" | sha256sum | cut -d' ' -f1)
stamp=$KB_CACHE/build.inputs
if [ "$force" = 0 ] && [ -f "$vmlinux" ] && [ -f "$KB_TIMES" ] &&
   [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    kb_say "cached build is up to date (--force rebuilds from scratch)"
    read -r b l s kind < "$KB_TIMES"
    report "$b" "$l" "$s" "cached; measured by the $kind build"
    exit 0
fi

kind=incremental
if [ "$force" = 1 ]; then
    rm -rf "$out"
fi
# From scratch when no kernel object exists yet (tools/objtool and scripts/ do not count):
# then every object's objtool output is in this build's log.
if [ -z "$(find "$out" -name '*.o' ! -path "$out/tools/*" ! -path "$out/scripts/*" -print -quit 2> /dev/null)" ]; then
    kind=from-scratch
fi
rm -f "$KB_TIMES"
mkdir -p "$out"
: > "$KB_LOG"
kb_say "configuring $KB_TREE (tinyconfig + $(basename "$KB_CONFIG"))"
kb_configure "$KB_TREE" "$KB_LOG"

# Always relink, so that the log has this build's STACKVAL step to time.
rm -f "$vmlinux"
kb_say "building vmlinux ($kind, make -j$KB_JOBS STACKVAL=1); full log: $KB_LOG"
t0=$(date +%s.%N)
rc=0
kb_make "$KB_TREE" "$KB_LOG" "$KB_TIMED" STACKVAL=1 STACKVAL_BIN="$KB_STACKVAL" vmlinux || rc=$?
t1=$(date +%s.%N)
build=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }')
[ "$rc" -eq 0 ] || kb_die "make failed (exit $rc) after $build s; see $KB_LOG"
[ -f "$vmlinux" ] || kb_die "make succeeded but there is no $vmlinux"

read -r link sv < <(kb_step_times "$KB_TIMED")
echo "$build $link $sv $kind" > "$KB_TIMES"
echo "$inputs" > "$stamp"
report "$build" "$link" "$sv" "$kind"

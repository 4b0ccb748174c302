# shellcheck shell=bash disable=SC2034
# Shared by scripts/build-test-kernel.sh, scripts/compare-objtool.sh and
# scripts/source-faults.sh (sourced, not run). See docs/kbuild.md.
#
# Cache layout, under ${STACKVAL_CACHE:-~/.cache/stackval}/kbuild:
#   linux-source-6.1/          Debian's linux-source-6.1 tree, hook patch applied
#   linux-source-6.1/out/      its build directory (make O=out)
#   build.log, build.timed.log the last build's full log, and the same with
#                              seconds since the start of make on every line
#   build.times                the last build's measured times
#   faults/linux-source-6.1/   source-faults.sh's copy (sources hard-linked,
#                              out/ a real copy), faults/build.log
#
# The build directory is a direct child of the tree on purpose: kbuild then
# uses srctree=.. and writes only relative paths into its .cmd files, so the
# tree and its out/ can be copied elsewhere and rebuilt incrementally.

KB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KB_CACHE=${STACKVAL_CACHE:-$HOME/.cache/stackval}/kbuild
KB_TREE=$KB_CACHE/linux-source-6.1
KB_LOG=$KB_CACHE/build.log
KB_TIMED=$KB_CACHE/build.timed.log
KB_TIMES=$KB_CACHE/build.times
KB_PATCH=$KB_REPO/scripts/kbuild/link-vmlinux-stackval.patch
KB_CONFIG=$KB_REPO/scripts/kbuild/test-kernel.config
# STACKVAL_BIN: use this stackval binary instead of building the checkout's.
KB_STACKVAL=$KB_REPO/target/release/stackval
if [ -n "${STACKVAL_BIN:-}" ]; then
    KB_STACKVAL=$(realpath "$STACKVAL_BIN")
fi
KB_JOBS=${STACKVAL_KBUILD_JOBS:-2}

kb_say() { echo "[kbuild] $*" >&2; }
kb_die() { echo "[kbuild] error: $*" >&2; exit 2; }

# Install what a tiny kernel build needs, once: only missing packages.
kb_need_tools() {
    local pkgs="gcc make flex bison bc perl python3 cpio xz-utils rsync libelf-dev libssl-dev binutils patch"
    local missing=() p
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    kb_say "installing build dependencies: ${missing[*]}"
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then
        $sudo apt-get update -qq >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

# Build stackval (release) from this checkout, unless STACKVAL_BIN is set.
kb_build_stackval() {
    if [ -n "${STACKVAL_BIN:-}" ]; then
        [ -x "$KB_STACKVAL" ] || kb_die "STACKVAL_BIN=$STACKVAL_BIN is not an executable"
        kb_say "using STACKVAL_BIN=$KB_STACKVAL (not building the checkout)"
        return 0
    fi
    (cd "$KB_REPO" && cargo build --release --quiet) || kb_die "cargo build --release failed"
    [ -x "$KB_STACKVAL" ] || kb_die "no $KB_STACKVAL after cargo build"
}

# Unpack Debian's linux-source-6.1 into $KB_TREE, once. The .deb comes from
# $STACKVAL_LINUX_SOURCE_DEB when set, else `apt-get download linux-source-6.1`;
# a downloaded .deb is deleted after unpacking.
kb_unpack_tree() {
    [ -f "$KB_TREE/.stackval-source" ] && return 0
    mkdir -p "$KB_CACHE"
    local tmp deb
    tmp=$(mktemp -d "$KB_CACHE/.unpack.XXXXXX")
    if [ -n "${STACKVAL_LINUX_SOURCE_DEB:-}" ]; then
        deb=$STACKVAL_LINUX_SOURCE_DEB
        [ -f "$deb" ] || kb_die "STACKVAL_LINUX_SOURCE_DEB=$deb: no such file"
    else
        kb_say "downloading linux-source-6.1 (about 140 MB, once)"
        if ! (cd "$tmp" && apt-get download -qq linux-source-6.1 >&2 2>/dev/null); then
            local sudo=
            [ "$(id -u)" -eq 0 ] || sudo=sudo
            $sudo apt-get update -qq >&2
            (cd "$tmp" && apt-get download -qq linux-source-6.1 >&2)
        fi
        deb=$(ls "$tmp"/linux-source-6.1_*.deb)
    fi
    kb_say "unpacking $(basename "$deb")"
    (cd "$tmp" && dpkg-deb --fsys-tarfile "$deb" | tar x ./usr/src/linux-source-6.1.tar.xz)
    tar xJf "$tmp/usr/src/linux-source-6.1.tar.xz" -C "$tmp"
    [ -f "$tmp/linux-source-6.1/Makefile" ] || kb_die "$deb holds no linux-source-6.1 tree"
    basename "$deb" > "$tmp/linux-source-6.1/.stackval-source"
    rm -rf "$KB_TREE"
    mv "$tmp/linux-source-6.1" "$KB_TREE"
    rm -rf "$tmp"
}

# kb_apply_patch TREE: apply $KB_PATCH to TREE's scripts/link-vmlinux.sh,
# replacing an older version of it that was applied before.
kb_apply_patch() {
    local tree=$1 applied=$1/.stackval-applied.patch
    if [ -f "$applied" ]; then
        cmp -s "$applied" "$KB_PATCH" && return 0
        kb_say "replacing the hook patch applied to $tree"
        (cd "$tree" && patch -p1 -R -s --no-backup-if-mismatch < "$applied") ||
            kb_die "could not revert the old hook patch in $tree"
        rm -f "$applied"
    fi
    (cd "$tree" && patch -p1 -N -s --no-backup-if-mismatch < "$KB_PATCH") ||
        kb_die "the hook patch does not apply to $tree/scripts/link-vmlinux.sh"
    cp "$KB_PATCH" "$applied"
}

# kb_configure TREE: tinyconfig, then test-kernel.config over it, then
# olddefconfig; fails when an option the fragment sets to y did not stick.
kb_configure() {
    local tree=$1 log=$2
    (
        cd "$tree"
        make O=out tinyconfig
        scripts/kconfig/merge_config.sh -m -O out out/.config "$KB_CONFIG"
        make O=out olddefconfig
    ) >> "$log" 2>&1 || kb_die "configuration failed, see $log"
    local sym bad=
    for sym in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$KB_CONFIG"); do
        grep -qx "$sym=y" "$tree/out/.config" || bad="$bad $sym"
    done
    [ -z "$bad" ] || kb_die "options not enabled in $tree/out/.config:$bad"
}

# kb_make TREE LOG TIMED [make args...]: make -jN in TREE/out; the output goes
# to LOG (appended), to TIMED with seconds since the start on every line, and
# to stderr filtered to warnings, errors and the link steps (all of it with
# STACKVAL_KBUILD_VERBOSE=1). Returns make's exit status.
kb_make() {
    local tree=$1 log=$2 timed=$3
    shift 3
    set +e
    (cd "$tree" && make O=out -j"$KB_JOBS" "$@" 2>&1) |
        perl -e '
            use Time::HiRes qw(time);
            my ($log, $timed, $verbose) = @ARGV;
            open(my $L, ">>", $log) or die "$log: $!";
            open(my $T, ">", $timed) or die "$timed: $!";
            $L->autoflush(1); $T->autoflush(1); STDERR->autoflush(1);
            my $t0 = time;
            my $sv = 0;
            while (my $l = <STDIN>) {
                print $L $l;
                printf $T "%10.3f %s", time - $t0, $l;
                next unless $verbose
                    || $l =~ /warning|error|Error|^\s+(LD|KSYMS|SORTTAB|STACKVAL)\s|^stackval/;
                # stackval findings: the first 20 on the terminal, all of them in the log.
                if (!$verbose && $l =~ /^\S+: (warning|error): stackval: / && ++$sv > 20) {
                    next;
                }
                print STDERR $l;
            }
            printf STDERR "  ... and %d more stackval findings, in %s\n", $sv - 20, $log
                if $sv > 20;
            printf $T "%10.3f %s\n", time - $t0, "<end of make output>";
        ' "$log" "$timed" "${STACKVAL_KBUILD_VERBOSE:-}"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

# kb_step_times TIMED: "<final link s> <stackval step s>" from a timed log:
# the final link runs from "LD vmlinux.o" to the end of link-vmlinux.sh (the
# stackval summary line, the last thing it prints), the stackval step from
# "STACKVAL vmlinux" to that line. "-" for what the log does not show (an
# incremental build that did not relink vmlinux.o, or no STACKVAL step).
kb_step_times() {
    awk '
        $2 == "LD" && $3 == "vmlinux.o" { ld = $1 }
        $2 == "STACKVAL" && $3 == "vmlinux" { sv = $1; end = "" }
        sv != "" && end == "" && ($2 == "stackval:" || $2 == "<end") { end = $1 }
        END {
            if (sv == "" || end == "") { print "- -"; exit }
            if (ld == "") printf "- %.2f\n", end - sv
            else printf "%.2f %.2f\n", end - ld, end - sv
        }' "$1"
}

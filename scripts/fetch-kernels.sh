#!/usr/bin/env bash
# Fetch and cache the Debian debug vmlinux images that stackval is tested against.
#
#   scripts/fetch-kernels.sh [6.1|6.12|all]    (default: all: the two cloud images)
#   scripts/fetch-kernels.sh [6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours]
#   scripts/fetch-kernels.sh [bullseye|bullseye-generic|bullseye-rt|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt]
#
# The second form fetches Debian's other flavours of the same releases (generic amd64 and
# PREEMPT_RT configurations), which nothing runs by default.
# Prints one line per image: "<flavour> <path>". Only the vmlinux is unpacked from each
# -dbg package; the .deb is deleted afterwards. A second call finds the cache and is instant.
# Cache: $STACKVAL_CACHE (default ~/.cache/stackval)/kernels/<package-version>/vmlinux
set -euo pipefail

want=${1:-all}
cache=${STACKVAL_CACHE:-$HOME/.cache/stackval}/kernels
mkdir -p "$cache"

updated=
apt_update() {
    [ -z "$updated" ] || return 0
    updated=1
    apt-get update -qq >&2 || echo "fetch-kernels: apt-get update failed; using the package lists as they are" >&2
}

apt_ready() {
    # apt-cache needs the package lists: fetch them if they are missing or over a week old (a
    # stale list names packages the mirror no longer has, or lacks a release added since).
    # Lists that lack a wanted package are refreshed by newest_pkg.
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | head -1)
    if [ -z "$newest" ]; then
        apt_update
    fi
}

# newest_pkg REGEX: the newest package whose name matches, by Debian version order. A name
# the lists do not hold sends for fresh lists once before giving up.
newest_pkg() {
    local pkg
    pkg=$(apt-cache search --names-only "$1" | awk '{print $1}' | sort -V | tail -1)
    if [ -z "$pkg" ] && [ -z "$updated" ]; then
        apt_update
        pkg=$(apt-cache search --names-only "$1" | awk '{print $1}' | sort -V | tail -1)
    fi
    echo "$pkg"
}

fetch_one() { # flavour package-regex (anchored with ^...$)
    local flavour=$1 regex=$2
    # Reuse any cached image of this flavour when apt is not reachable or not needed.
    local pkg
    pkg=$(newest_pkg "$regex" || true)
    if [ -z "$pkg" ]; then
        local cached
        local name=${regex#^}
        cached=$(ls -d "$cache"/linux-image-*/vmlinux 2>/dev/null | grep -E "/${name%\$}/vmlinux\$" | sort -V | tail -1 || true)
        [ -n "$cached" ] || { echo "fetch-kernels: no package matches $regex" >&2; return 1; }
        echo "$flavour $cached"; return 0
    fi
    local dir=$cache/$pkg
    if [ ! -s "$dir/vmlinux" ]; then
        local tmp
        tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
        echo "fetch-kernels: downloading $pkg (a few hundred MB, once)" >&2
        (cd "$tmp" && apt-get download -qq "$pkg" >&2)
        unpack_vmlinux "$tmp" "$dir"
    fi
    echo "$flavour $dir/vmlinux"
}

# unpack_vmlinux TMP DIR: the vmlinux of the one .deb in TMP into DIR/vmlinux; TMP is removed.
# Newer packages (Debian's 7.x) ship /usr/lib/debug/boot/vmlinux-* as a symlink to
# ../lib/modules/<version>/vmlinux: the link's target is unpacked then.
unpack_vmlinux() {
    local tmp=$1 dir=$2 boot target
    (cd "$tmp" && dpkg-deb --fsys-tarfile ./*.deb | tar x --wildcards './usr/lib/debug/boot/vmlinux-*')
    boot=$(ls "$tmp"/usr/lib/debug/boot/vmlinux-* | head -1)
    if [ -L "$boot" ]; then
        target=$(realpath -m --relative-to="$tmp" "$(dirname "$boot")/$(readlink "$boot")")
        rm "$boot"
        (cd "$tmp" && dpkg-deb --fsys-tarfile ./*.deb | tar x "./$target")
        mv "$tmp/$target" "$boot"
    fi
    mkdir -p "$dir"
    mv "$boot" "$dir/vmlinux.part"
    mv "$dir/vmlinux.part" "$dir/vmlinux"
    chmod a-w "$dir/vmlinux"
    rm -rf "$tmp"
}

# fetch_pool FLAVOUR SUITE PACKAGE-REGEX: the newest matching package of a Debian suite this
# machine's apt does not list (trixie, sid), straight from the mirror's pool. Falls back to a
# cached image when the mirror cannot be read.
fetch_pool() {
    local flavour=$1 suite=$2 regex=$3 mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    local line pkg file dir tmp
    line=$(curl -fsS "$mirror/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc \
        | awk -v re="$regex" '/^Package: /{p = $2} /^Filename: / && p ~ re {print p, $2}' \
        | sort -V | tail -1 || true)
    if [ -z "$line" ]; then
        local cached
        cached=$(ls -d "$cache"/linux-image-*/ 2>/dev/null | sed 's|/$||; s|.*/||' | grep -E "$regex" | sort -V | tail -1 || true)
        [ -n "$cached" ] && [ -s "$cache/$cached/vmlinux" ] \
            || { echo "fetch-kernels: no package in $suite matches $regex" >&2; return 1; }
        echo "$flavour $cache/$cached/vmlinux"; return 0
    fi
    pkg=${line%% *} file=${line#* }
    dir=$cache/$pkg
    if [ ! -s "$dir/vmlinux" ]; then
        tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
        echo "fetch-kernels: downloading $pkg from $suite (a few hundred MB, once)" >&2
        curl -fsS -o "$tmp/$pkg.deb" "$mirror/$file"
        unpack_vmlinux "$tmp" "$dir"
    fi
    echo "$flavour $dir/vmlinux"
}

apt_ready
cloud61='^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$'
cloud612='^linux-image-6\.12\.[0-9]+.*-cloud-amd64-dbg$'
generic61='^linux-image-6\.1\.0-[0-9]+-amd64-dbg$'
generic612='^linux-image-6\.12\.[0-9]+.*[0-9]-amd64-dbg$'
rt61='^linux-image-6\.1\.0-[0-9]+-rt-amd64-dbg$'
rt612='^linux-image-6\.12\.[0-9]+.*-rt-amd64-dbg$'
case $want in
    6.1) fetch_one 6.1 "$cloud61" ;;
    6.12) fetch_one 6.12 "$cloud612" ;;
    all)
        fetch_one 6.1 "$cloud61"
        fetch_one 6.12 "$cloud612"
        ;;
    # Debian's other flavours of the same releases (the generic amd64 configuration and
    # PREEMPT_RT), not part of `all`: about 900 MB to download each, once.
    6.1-generic) fetch_one 6.1-generic "$generic61" ;;
    6.12-generic) fetch_one 6.12-generic "$generic612" ;;
    6.1-rt) fetch_one 6.1-rt "$rt61" ;;
    6.12-rt) fetch_one 6.12-rt "$rt612" ;;
    flavours)
        fetch_one 6.1-generic "$generic61"
        fetch_one 6.1-rt "$rt61"
        fetch_one 6.12-generic "$generic612"
        fetch_one 6.12-rt "$rt612"
        ;;
    # Debian 11's 5.10 (ORC v2, Xen hypercall page of stubs), and later releases, not part of `all`: Debian 13's 6.12 (built by gcc 14) and the newest
    # kernel of unstable (7.2 when this was written: a renumbered ORC, a __bug_table with a
    # format, FRED entry code).
    bullseye) fetch_pool bullseye bullseye '^linux-image-5\.10\.0-[0-9]+-cloud-amd64-dbg$' ;;
    bullseye-generic) fetch_pool bullseye-generic bullseye '^linux-image-5\.10\.0-[0-9]+-amd64-dbg$' ;;
    bullseye-rt) fetch_pool bullseye-rt bullseye '^linux-image-5\.10\.0-[0-9]+-rt-amd64-dbg$' ;;
    trixie) fetch_pool trixie trixie '^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-dbg$' ;;
    trixie-generic) fetch_pool trixie-generic trixie '^linux-image-6\.12\.[0-9]+\+deb13-amd64-dbg$' ;;
    trixie-rt) fetch_pool trixie-rt trixie '^linux-image-6\.12\.[0-9]+\+deb13-rt-amd64-dbg$' ;;
    sid) fetch_pool sid sid '^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-cloud-amd64-dbg$' ;;
    # Its generic and PREEMPT_RT flavours: about 1.2 GB to download each, once.
    sid-generic) fetch_pool sid-generic sid '^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64-dbg$' ;;
    sid-rt) fetch_pool sid-rt sid '^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-rt-amd64-dbg$' ;;
    *) echo "usage: $0 [6.1|6.12|all|6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours|bullseye|bullseye-generic|bullseye-rt|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt]" >&2; exit 2 ;;
esac

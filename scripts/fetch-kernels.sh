#!/usr/bin/env bash
# Fetch and cache Debian's cloud-amd64 debug vmlinux images that stackval is tested against.
#
#   scripts/fetch-kernels.sh [6.1|6.12|all]    (default: all)
#
# Prints one line per image: "<flavour> <path>". Only the vmlinux is unpacked from each
# -dbg package; the .deb is deleted afterwards. A second call finds the cache and is instant.
# Cache: $STACKVAL_CACHE (default ~/.cache/stackval)/kernels/<package-version>/vmlinux
set -euo pipefail

want=${1:-all}
cache=${STACKVAL_CACHE:-$HOME/.cache/stackval}/kernels
mkdir -p "$cache"

apt_ready() {
    # apt-cache needs the package lists; fetch them once if they are missing or stale.
    if [ -z "$(apt-cache search --names-only 'linux-image-6\.1\.0-.*-cloud-amd64-dbg' 2>/dev/null | head -1)" ]; then
        apt-get update -qq >&2
    fi
}

# newest_pkg REGEX: the newest package whose name matches, by Debian version order.
newest_pkg() {
    apt-cache search --names-only "$1" | awk '{print $1}' | sort -V | tail -1
}

fetch_one() { # flavour package-regex (anchored with ^...$)
    local flavour=$1 regex=$2
    # Reuse any cached image of this flavour when apt is not reachable or not needed.
    local pkg
    pkg=$(newest_pkg "$regex" || true)
    if [ -z "$pkg" ]; then
        local cached
        cached=$(ls -d "$cache"/linux-image-*/vmlinux 2>/dev/null | grep -E "/${regex#^}" | sort -V | tail -1 || true)
        [ -n "$cached" ] || { echo "fetch-kernels: no package matches $regex" >&2; return 1; }
        echo "$flavour $cached"; return 0
    fi
    local dir=$cache/$pkg
    if [ ! -s "$dir/vmlinux" ]; then
        local tmp
        tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
        echo "fetch-kernels: downloading $pkg (a few hundred MB, once)" >&2
        (cd "$tmp" && apt-get download -qq "$pkg" >&2)
        (cd "$tmp" && dpkg-deb --fsys-tarfile ./*.deb | tar x --wildcards './usr/lib/debug/boot/vmlinux-*')
        mkdir -p "$dir"
        mv "$tmp"/usr/lib/debug/boot/vmlinux-* "$dir/vmlinux.part"
        mv "$dir/vmlinux.part" "$dir/vmlinux"
        chmod a-w "$dir/vmlinux"
        rm -rf "$tmp"
    fi
    echo "$flavour $dir/vmlinux"
}

apt_ready
case $want in
    6.1) fetch_one 6.1 '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$' ;;
    6.12) fetch_one 6.12 '^linux-image-6\.12\.[0-9]+.*-cloud-amd64-dbg$' ;;
    all)
        fetch_one 6.1 '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$'
        fetch_one 6.12 '^linux-image-6\.12\.[0-9]+.*-cloud-amd64-dbg$'
        ;;
    *) echo "usage: $0 [6.1|6.12|all]" >&2; exit 2 ;;
esac

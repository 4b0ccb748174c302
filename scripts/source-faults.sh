#!/usr/bin/env bash
# Break the test kernel on purpose, in a copy of its tree, and show that objtool (in the
# build) and stackval (after the link) both report each fault.
#
#   scripts/source-faults.sh
#
# Faults:
#   (a) FRAME_BEGIN/FRAME_END removed from aesni_enc() in arch/x86/crypto/aesni-intel_asm.S,
#       an asm function that calls _aesni_enc1();
#   (b) a `ret` outside any function (after SYM_CODE_END) and
#   (c) an asm function that sets up a frame and jumps to __memcpy (another file's code)
#       with it still set up: both in arch/x86/lib/stackval_faults.S, copied from
#       scripts/kbuild/ and added to obj-y of arch/x86/lib/Makefile.
# The copy lives in ${STACKVAL_CACHE:-~/.cache/stackval}/kbuild/faults/: its sources are
# hard links to the test kernel's (a faulted file is a new file, never written through a
# link), its out/ starts as a copy of the test kernel's build, so a run rebuilds only the
# faulted objects and relinks (their .o files are deleted each run so that objtool runs on
# them again and its warnings are in this run's log: faults/build.log).
# Prints, for each fault, objtool's and stackval's reports; exits 1 when stackval missed a
# fault, 2 when the build or stackval could not run, else 0.
set -euo pipefail
. "$(dirname "$0")/kbuild/lib.sh"

info=$(bash "$KB_REPO/scripts/build-test-kernel.sh")
clean_vmlinux=$(awk '$1 == "vmlinux" { print $2 }' <<< "$info")
[ -f "$clean_vmlinux" ] || kb_die "build-test-kernel.sh gave no vmlinux"

fdir=$KB_CACHE/faults
copy=$fdir/linux-source-6.1
mkdir -p "$copy"
faulted=(arch/x86/crypto/aesni-intel_asm.S arch/x86/lib/Makefile arch/x86/lib/stackval_faults.S)

# Sources: hard links to the test kernel's tree, except the faulted files.
excl=(--exclude=/out/)
for f in "${faulted[@]}"; do excl+=("--exclude=/$f"); done
rsync -a --delete --link-dest="$KB_TREE/" "${excl[@]}" "$KB_TREE/" "$copy/"
if [ ! -f "$copy/out/.config" ]; then
    kb_say "copying the test kernel's build directory into $copy/out (once)"
    rm -rf "$copy/out"
    cp -a "$KB_TREE/out" "$copy/out"
    # tools/objtool is built with absolute paths, so the copy rebuilds it, and a newer
    # objtool makes kbuild rebuild every object. Rebuild it now, then give all of the
    # copy's tools/ the original objtool's time: same sources, and older than every object.
    kb_say "rebuilding objtool for the copy's paths"
    (cd "$copy" && make O=out -j"$KB_JOBS" tools/objtool) >> "$fdir/setup.log" 2>&1 ||
        kb_die "could not build objtool in $copy; see $fdir/setup.log"
    find "$copy/out/tools" -exec touch -h -r "$KB_TREE/out/tools/objtool/objtool" {} +
fi

# put_file DEST < content: replace DEST only when its content changes (a new inode, so the
# test kernel's file behind a hard link is never touched; an unchanged file keeps its mtime).
put_file() {
    local dest=$copy/$1 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat > "$tmp"
    if cmp -s "$tmp" "$dest" 2> /dev/null; then
        rm -f "$tmp"
    else
        chmod 644 "$tmp"
        mv -f "$tmp" "$dest"
    fi
}

# (a) aesni_enc() without FRAME_BEGIN/FRAME_END: exactly one of each between its
# SYM_FUNC_START and SYM_FUNC_END.
python3 - "$KB_TREE/arch/x86/crypto/aesni-intel_asm.S" <<'EOF' | put_file arch/x86/crypto/aesni-intel_asm.S
import sys
lines = open(sys.argv[1]).read().split("\n")
start = lines.index("SYM_FUNC_START(aesni_enc)")
end = lines.index("SYM_FUNC_END(aesni_enc)", start)
body = lines[start:end]
assert [l.strip() for l in body].count("FRAME_BEGIN") == 1, "aesni_enc: FRAME_BEGIN"
assert [l.strip() for l in body].count("FRAME_END") == 1, "aesni_enc: FRAME_END"
assert any(l.split()[:1] == ["call"] for l in body), "aesni_enc calls nothing"
body = [l if l.strip() not in ("FRAME_BEGIN", "FRAME_END") else
        "\t/* stackval source fault (a): " + l.strip() + " removed */" for l in body]
sys.stdout.write("\n".join(lines[:start] + body + lines[end:]))
EOF
# (b) and (c): a new object in arch/x86/lib.
put_file arch/x86/lib/stackval_faults.S < "$KB_REPO/scripts/kbuild/stackval_faults.S"
{ cat "$KB_TREE/arch/x86/lib/Makefile"; echo 'obj-y += stackval_faults.o'; } |
    put_file arch/x86/lib/Makefile

# objtool runs when an object is built: rebuild the faulted objects every run.
rm -f "$copy/out/arch/x86/crypto/aesni-intel_asm.o" "$copy/out/arch/x86/lib/stackval_faults.o"

log=$fdir/build.log
: > "$log"
kb_say "building the faulty copy (make -j$KB_JOBS STACKVAL=1 vmlinux); log: $log"
t0=$(date +%s.%N)
rc=0
kb_make "$copy" "$log" "$fdir/build.timed.log" STACKVAL=1 STACKVAL_BIN="$KB_STACKVAL" vmlinux || rc=$?
t1=$(date +%s.%N)
[ "$rc" -eq 0 ] || kb_die "the faulty copy did not build (make exit $rc); see $log"
kb_say "faulty copy built in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"

vmlinux=$copy/out/vmlinux
check_json() { # image output
    local rc=0
    "$KB_STACKVAL" check --frame-pointer --no-progress -q --format json "$1" > "$2" || rc=$?
    [ "$rc" -le 1 ] || kb_die "stackval exited with $rc on $1"
}
check_json "$clean_vmlinux" "$fdir/clean.stackval.json"
check_json "$vmlinux" "$fdir/faulty.stackval.json"
echo
cd "$KB_REPO/scripts/kbuild"
PYTHONDONTWRITEBYTECODE=1 exec python3 faults.py --log "$log" --findings "$fdir/faulty.stackval.json" \
    --clean-findings "$fdir/clean.stackval.json" --vmlinux "$vmlinux"

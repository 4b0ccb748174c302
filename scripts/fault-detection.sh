#!/usr/bin/env bash
# Fault injection on Debian's kernels: damage N functions of a copy of each vmlinux and count
# how many of them stackval reports.
#
#   scripts/fault-detection.sh [--count N] [--seed S] [--kinds K,...] [--no-fail] [--save DIR]
#                              [6.1|6.12|all|6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours|bullseye|bullseye-generic|bullseye-rt|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt]
#
# For each image (default: all): build stackval, fetch the image (scripts/fetch-kernels.sh),
# check the undamaged image (the baseline), inject N faults (default 200, seed 1) into ONE copy
# with scripts/inject-faults.py (--kinds: a subset of its mutation kinds), check the copy, and
# judge each fault:
#   DETECTED  a finding not in the baseline whose containing function is the damaged function
#             (or its .cold part), or whose message says "(on a path from DAMAGED())", or, for
#             ret-in-padding, a finding at the address of the ret written into the padding;
#   FALSE     a finding not in the baseline that no fault explains (an undamaged function).
# Prints a table per mutation kind, the missed faults (with what stackval reported near them),
# the false findings and one line per image:
#   detection: D/N (P%), false findings in undamaged functions: F
# Exits 1 when a fault was missed or a false finding appeared (unless --no-fail), 2 when
# something could not run. The damaged copies (~600 MB each) live in a temporary directory
# under ${STACKVAL_CACHE:-~/.cache/stackval}/faults/ and are deleted at the end; --save DIR
# keeps the small files (baseline, fault list, findings, report) in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

count=200 seed=1 fail=1 save='' which=all kinds=''
while [ $# -gt 0 ]; do
    case $1 in
        --count) count=$2; shift 2 ;;
        --count=*) count=${1#*=}; shift ;;
        --seed) seed=$2; shift 2 ;;
        --seed=*) seed=${1#*=}; shift ;;
        --kinds) kinds=$2; shift 2 ;;
        --kinds=*) kinds=${1#*=}; shift ;;
        --no-fail) fail=0; shift ;;
        --save) save=$2; shift 2 ;;
        --save=*) save=${1#*=}; shift ;;
        6.1|6.12|all|6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours|bullseye|bullseye-generic|bullseye-rt|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt) which=$1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "usage: $0 [--count N] [--seed S] [--kinds K,...] [--no-fail] [--save DIR] [6.1|6.12|all|6.1-generic|6.12-generic|6.1-rt|6.12-rt|flavours|bullseye|bullseye-generic|bullseye-rt|trixie|trixie-generic|trixie-rt|sid|sid-generic|sid-rt]" >&2
           exit 2 ;;
    esac
done

cargo build --release --quiet
stackval=$PWD/target/release/stackval
cache=${STACKVAL_CACHE:-$HOME/.cache/stackval}
mkdir -p "$cache/faults"
work=$(mktemp -d "$cache/faults/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ -z "$save" ] || mkdir -p "$save"

# check IMAGE OUT: stackval's findings as JSON lines; exit status 0 or 1 is fine, 2 is not.
check() {
    local rc=0
    "$stackval" check --no-progress --quiet --format json "$1" > "$2" 2> "$2.stderr" || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "fault-detection: stackval could not check $1 (exit $rc):" >&2
        cat "$2.stderr" >&2
        exit 2
    fi
}

images=$(scripts/fetch-kernels.sh "$which") || { echo "fault-detection: no kernel image" >&2; exit 2; }
status=0
summary=()
while read -r flavour image; do
    [ -n "$flavour" ] || continue
    echo "== Debian $flavour cloud vmlinux: $image"
    base=$work/$flavour.baseline.json
    damaged=$work/$flavour.vmlinux
    check "$image" "$base"
    echo "baseline: $(grep -c '^{' "$base" || true) findings in the undamaged image"
    python3 scripts/inject-faults.py "$image" "$damaged" --count "$count" --seed "$seed" \
        --exclude-json "$base" ${kinds:+--kinds "$kinds"}
    check "$damaged" "$work/$flavour.findings.json"
    rm -f "$damaged"
    rc=0
    python3 - "$base" "$damaged.json" "$work/$flavour.findings.json" \
        > "$work/$flavour.report" <<'EOF' || rc=$?
import collections, json, re, sys

base_path, faults_path, findings_path = sys.argv[1:4]

def lines(path):
    with open(path) as fh:
        return [json.loads(l) for l in fh if l.strip().startswith("{")]

def key(f):
    return (f["kind"], f["address"])

baseline = {key(f) for f in lines(base_path)}
meta = json.load(open(faults_path))
faults = meta["faults"]
findings = [f for f in lines(findings_path) if key(f) not in baseline]

by_addr, by_name = {}, {}
for i, d in enumerate(faults):
    by_addr[int(d["function_address"], 16)] = i
    for n in [d["function"]] + d.get("aliases", []):
        by_name[n] = i
by_ret = {int(d["ret_address"], 16): i for i, d in enumerate(faults) if "ret_address" in d}
PATH = re.compile(r"\(on a path from ([^()\s]+)\(\)\)")

hits = collections.defaultdict(list)
owner = {}
false = []

def where_of(f):
    loc = f.get("location") or (f"{f['function']}()+{int(f.get('offset') or 0):#x}"
                                if f.get("function") else f.get("section", ""))
    return f"{loc} ({f['address']})"
for f in findings:
    addr = int(f["address"], 16)
    who = set()
    if f.get("function") is not None:
        start = addr - int(f.get("offset") or 0)
        if start in by_addr:
            who.add(by_addr[start])
        name = f["function"].split(".cold")[0]
        if name in by_name:
            who.add(by_name[name])
    m = PATH.search(f.get("message", ""))
    if m and m.group(1) in by_name:
        who.add(by_name[m.group(1)])
    if addr in by_ret:
        who.add(by_ret[addr])
    for i in who:
        hits[i].append(f)
    owner[id(f)] = who
    if not who:
        false.append(f)

kinds = sorted({d["mutation"] for d in faults})
inj, det = collections.Counter(), collections.Counter()
missed = []
for i, d in enumerate(faults):
    inj[d["mutation"]] += 1
    if hits[i]:
        det[d["mutation"]] += 1
    else:
        missed.append(d)

def near(d):
    """Findings (any) near the fault: in the function or within 64 bytes of the patch."""
    lo = int(d["function_address"], 16)
    hi = lo + d["function_size"]
    pa = int(d.get("ret_address", d.get("orc_ip", d["address"])), 16)
    return [f for f in findings
            if lo - 64 <= int(f["address"], 16) < hi + 64 or abs(int(f["address"], 16) - pa) < 64]

# Which kinds of finding caught each mutation (a fault counts once per finding kind).
caught = collections.defaultdict(collections.Counter)
for i, d in enumerate(faults):
    for kind in {f["kind"] for f in hits[i]}:
        caught[d["mutation"]][kind] += 1
print(f"{'mutation':<16} {'injected':>8} {'detected':>8}  reported as (faults per finding kind)")
for k in kinds:
    how = ", ".join(f"{v} {kd}" for kd, v in caught[k].most_common())
    print(f"{k:<16} {inj[k]:>8} {det[k]:>8}  {how}")
n, dn = sum(inj.values()), sum(det.values())
print(f"{'total':<16} {n:>8} {dn:>8}")
print(f"missed faults: {len(missed)}")
for d in missed:
    where = d.get("ret_address", d.get("orc_ip", d["address"]))
    what = d.get("instruction") or d.get("padding") or ""
    if d["mutation"] == "orc-offset":
        what = f"ORC sp_offset {d['sp_offset'][0]} -> {d['sp_offset'][1]} at ip {d['orc_ip']}"
    print(f"  {d['function']}() at {d['function_address']}  {d['mutation']}  {where}  "
          f"({what}: {d['original']} -> {d['new']})")
    nb = near(d)
    if not nb:
        print("    stackval: nothing in or near the function")
    for f in nb:
        other = [faults[j]["function"] for j in owner.get(id(f), ())]
        why = f"  [explained by the fault in {', '.join(other)}()]" if other else ""
        print(f"    stackval: {where_of(f)} {f['kind']}: {f['message']}{why}")
print(f"false findings in undamaged functions: {len(false)}")
for f in false:
    print(f"  {where_of(f)} {f['kind']}: {f['message']}")
pct = 100.0 * dn / n if n else 0.0
print(f"detection: {dn}/{n} ({pct:.1f}%), false findings in undamaged functions: {len(false)}")
sys.exit(0 if dn == n and not false else 1)
EOF
    [ "$rc" -le 1 ] || { cat "$work/$flavour.report"; echo "fault-detection: evaluation failed" >&2; exit 2; }
    cat "$work/$flavour.report"
    summary+=("$flavour: $(tail -1 "$work/$flavour.report")")
    [ "$rc" -eq 0 ] || status=1
    if [ -n "$save" ]; then
        for f in baseline.json findings.json report; do cp "$work/$flavour.$f" "$save/$flavour.$f"; done
        cp "$damaged.json" "$save/$flavour.faults.json"
    fi
    echo
done <<< "$images"

if [ "${#summary[@]}" -gt 1 ]; then
    printf '%s\n' "${summary[@]}"
fi
[ "$fail" -eq 1 ] || exit 0
exit "$status"

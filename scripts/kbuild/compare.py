#!/usr/bin/env python3
"""objtool's warnings in a kernel build log against stackval's findings on the linked vmlinux.

    compare.py --log build.log --findings stackval.json --out OUTDIR [--explain FILE]

Run by scripts/compare-objtool.sh and scripts/source-faults.sh; see docs/kbuild.md.

objtool runs on one object file at a time and names a location as `func+0xoff` inside the
object; stackval names it `func()+0xoff` inside the linked image. An objtool warning and a
stackval finding match when they name the same function (".cold" parts included) and the same
kind of problem; the offset is shown but not required to agree. Matching is one-to-one.
"""

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

# objtool (Linux 6.1 and older) wording -> stackval kind. First match wins.
OBJTOOL_KINDS = [
    ("call without frame pointer save/setup", "call_without_frame"),
    ("sibling call from callable instruction with modified stack frame", "sibling_call"),
    ("sibling call from callable instruction with changed frame pointer", "sibling_call"),
    ("return with modified stack frame", "return_modified_frame"),
    ("return instruction outside of a callable function", "return_outside_function"),
    ("unsupported instruction in callable function", "kernel_entry_exit"),
    ("kernel entry/exit from callable instruction", "kernel_entry_exit"),
    ("frame pointer state mismatch", "frame_pointer_mismatch"),
    ("stack state mismatch", "stack_state_mismatch"),
    ("unreachable instruction", "unreachable_instruction"),
    ("can't decode instruction", "cant_decode"),
    ("can't find starting instruction", "no_starting_instruction"),
    ("falls through to next function", "falls_through"),
    ("unexpected end of section", "end_of_section"),
    ("can't find jump dest", "bad_jump_destination"),
    ("undefined stack state", "undefined_stack_state"),
    ("unsupported stack pointer realignment", "unsupported_realignment"),
    ("unknown stack-related", "unknown_stack_instruction"),
    ("unsupported stack register modification", "unsupported_stack_modification"),
]

# stackval kinds folded together for matching (objtool 6.1 has one sibling-call wording).
STACKVAL_FAMILY = {
    "sibling_call_changed_frame": "sibling_call",
    "sibling_call_modified_frame": "sibling_call",
}

WARN_RE = re.compile(r"^(?P<obj>\S+?): warning: objtool: (?P<rest>.*)$")
LOC_RE = re.compile(r"^(?P<func>[^\s:]+?)(?:\(\))?\+0x(?P<off>[0-9a-f]+): (?P<msg>.*)$")
FALLS_RE = re.compile(r"^(?P<func>\S+?)\(\) (?P<msg>falls through to next function.*)$")
FUNC_RE = re.compile(r"^(?P<func>[^\s:]+?)\(\): (?P<msg>.*)$")


def objtool_kind(msg):
    for text, kind in OBJTOOL_KINDS:
        if text in msg:
            return kind
    return None


def parse_log(path):
    """objtool warnings, in log order, without duplicates and without backtrace lines."""
    seen = set()
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = WARN_RE.match(line.rstrip("\n"))
            if not m:
                continue
            rest = m.group("rest")
            if rest.startswith(" "):  # "  func+0x12: (branch)" backtrace lines
                continue
            w = {"obj": m.group("obj"), "func": None, "offset": None, "message": rest}
            for rx in (LOC_RE, FALLS_RE, FUNC_RE):
                lm = rx.match(rest)
                if lm:
                    w["func"] = lm.group("func")
                    w["message"] = lm.group("msg")
                    if "off" in lm.groupdict():
                        w["offset"] = int(lm.group("off"), 16)
                    break
            w["kind"] = objtool_kind(w["message"])
            key = (w["obj"], w["func"], w["offset"], w["message"])
            if key not in seen:
                seen.add(key)
                out.append(w)
    return out


def parse_findings(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                d["family"] = STACKVAL_FAMILY.get(d["kind"], d["kind"])
                out.append(d)
    return out


def fn_name(f):
    """stackval's function, or for code outside functions the symbol its location names."""
    if f.get("function"):
        return f["function"]
    loc = f.get("location") or ""
    return re.sub(r"(\(\))?\+0x[0-9a-f]+$", "", loc) or None


def match(warnings, findings):
    """One-to-one: same function and kind family; an equal offset is preferred."""
    by_key = defaultdict(list)
    for i, f in enumerate(findings):
        by_key[(fn_name(f), f["family"])].append(i)
    used = set()
    pairs = []
    for w in warnings:
        cands = [i for i in by_key.get((w["func"], w["kind"]), []) if i not in used]
        best = None
        for i in cands:
            if findings[i]["offset"] == w["offset"]:
                best = i
                break
        if best is None and cands:
            best = cands[0]
        if best is not None:
            used.add(best)
        pairs.append((w, best))
    extra = [i for i in range(len(findings)) if i not in used]
    return pairs, extra


def symbol_index(build_dir):
    """function name -> objects of the build that define it (nm of every kernel object)."""
    objs = []
    for root, dirs, files in os.walk(build_dir):
        rel = os.path.relpath(root, build_dir)
        if rel.split(os.sep)[0] in ("tools", "scripts", "usr") and rel != ".":
            dirs[:] = []
            continue
        for name in files:
            if name.endswith(".o") and not name.startswith(".tmp_") and name != "vmlinux.o":
                objs.append(os.path.relpath(os.path.join(root, name), build_dir))
    index = defaultdict(list)
    for k in range(0, len(objs), 400):
        chunk = objs[k : k + 400]
        res = subprocess.run(["nm", "-A", "--defined-only"] + chunk, cwd=build_dir,
                             capture_output=True, text=True)
        for line in res.stdout.splitlines():
            try:
                obj, rest = line.split(":", 1)
                _addr, typ, sym = rest.split()
            except ValueError:
                continue
            if typ in "tTwW":
                index[sym].append(obj)
    return index


def objtool_ran(build_dir, obj):
    cmd = os.path.join(build_dir, os.path.dirname(obj), "." + os.path.basename(obj) + ".cmd")
    try:
        with open(cmd, errors="replace") as f:
            return "objtool/objtool" in f.readline()
    except OSError:
        return None


def load_explanations(path):
    """Rules 'category <TAB> function-glob <TAB> kind-glob <TAB> insn-regex <TAB> text'."""
    rules = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 5:
                    cat, fglob, kglob, rx, text = parts[:5]
                    rules.append((cat, fglob, kglob, None if rx == "*" else re.compile(rx), text))
    return rules


def instructions(vmlinux, addrs):
    """objdump's text of the instruction at each address."""
    want = {int(a, 16) for a in addrs}
    out = {}
    if not want:
        return out
    proc = subprocess.Popen(["objdump", "-d", "-w", "--no-show-raw-insn", vmlinux],
                            stdout=subprocess.PIPE, text=True, errors="replace")
    for line in proc.stdout:
        if not line.startswith("ffffffff") or ":\t" not in line:
            continue
        a, _, text = line.partition(":\t")
        try:
            addr = int(a, 16)
        except ValueError:
            continue
        if addr in want:
            out[addr] = " ".join(text.split())
    proc.wait()
    return out


def explain(f, insn, rules, index_fn, build_dir):
    """(category, explanation) for an EXTRA finding."""
    name = fn_name(f) or ""
    for cat, fglob, kglob, rx, text in rules:
        if (fnmatch.fnmatchcase(name, fglob)
                and fnmatch.fnmatchcase(STACKVAL_FAMILY.get(f["kind"], f["kind"]), kglob)
                and (rx is None or rx.search(insn or ""))):
            return cat, text
    objs = index_fn().get(name, [])
    if not objs:
        return "unexplained", "defined in no object file of the build"
    notes = []
    for o in objs:
        ran = objtool_ran(build_dir, o)
        if ran is False:
            notes.append(f"{o}: objtool not run on it (OBJECT_FILES_NON_STANDARD)")
        elif ran:
            notes.append(f"{o}: objtool ran on it and said nothing")
        else:
            notes.append(f"{o}: no .cmd file")
    return "unexplained", "; ".join(notes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--findings", required=True)
    ap.add_argument("--vmlinux", required=True)
    ap.add_argument("--explain")
    ap.add_argument("--incremental", action="store_true")
    ap.add_argument("--full", help="write every EXTRA finding, one per line, to this file")
    ap.add_argument("--group", type=int, default=8,
                    help="print an explanation shared by more findings than this once")
    args = ap.parse_args()
    build_dir = os.path.dirname(os.path.abspath(args.vmlinux))

    warnings = parse_log(args.log)
    findings = parse_findings(args.findings)
    pairs, extra = match(warnings, findings)
    rules = load_explanations(args.explain)
    insns = instructions(args.vmlinux, [findings[i]["address"] for i in extra])
    cache = {}

    def index_fn():
        if "index" not in cache:
            cache["index"] = symbol_index(build_dir)
        return cache["index"]

    print(f"objtool warnings from the build log: {args.log}")
    if args.incremental:
        print("  note: the log is from an incremental build; objects it did not rebuild left no")
        print("  objtool output in it (scripts/build-test-kernel.sh --force rebuilds all)")
    print(f"stackval findings on the linked image: {args.findings}")
    print()
    print("== objtool warnings and the matching stackval findings")
    if not warnings:
        print("  (none: objtool warned about no object of this build)")
    missing = no_rule = 0
    for w, i in pairs:
        loc = f"{w['func']}+{w['offset']:#x}" if w["offset"] is not None else (w["func"] or "-")
        print(f"  objtool   {w['obj']}: {loc}: {w['message']}")
        if i is None:
            missing += 1
            if w["kind"] is None:
                no_rule += 1
                print("  MISSING   (stackval has no rule for this objtool check)")
            else:
                print("  MISSING")
        else:
            f = findings[i]
            same = "same offset" if f["offset"] == w["offset"] else "other offset"
            print(f"  stackval  {f['location']}: {f['message']}  [{f['address']}, {same}]")

    rows = []
    for i in extra:
        f = findings[i]
        insn = insns.get(int(f["address"], 16), "")
        cat, why = explain(f, insn, rules, index_fn, build_dir)
        rows.append((f, insn, cat, why))
    groups = defaultdict(list)
    for r in rows:
        groups[(r[2], r[3])].append(r)

    print()
    print("== stackval findings objtool did not make (EXTRA), with the explanation")
    if not rows:
        print("  (none)")
    order = {"bug": 0, "annotation": 1, "cross-file": 2, "other": 3, "unexplained": 4}
    for (cat, why), members in sorted(groups.items(), key=lambda g: (order.get(g[0][0], 9), -len(g[1]))):
        if len(members) > args.group:
            kinds = Counter(m[0]["kind"] for m in members)
            print(f"  EXTRA x{len(members)}  "
                  + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ", e.g.:")
            for f, insn, _, _ in members[:3]:
                print(f"            {f['address']} {f['location']}: {f['message']}   <{insn}>")
        else:
            for f, insn, _, _ in members:
                print(f"  EXTRA     {f['address']} {f['location']}: {f['message']}   <{insn}>")
        print(f"    {cat}: {why}")
    if args.full:
        with open(args.full, "w") as out:
            for f, insn, cat, why in rows:
                out.write(f"EXTRA\t{f['address']}\t{f['location']}\t{f['kind']}\t{insn}\t{cat}\t{why}\n")
        print()
        print(f"  every EXTRA finding, one per line: {args.full}")

    cats = Counter(r[2] for r in rows)
    print()
    print("== counts")
    matched = len(pairs) - missing
    print(f"objtool {len(warnings)}, matched {matched}, missing {missing}"
          f" ({no_rule} without a stackval rule), extra {len(rows)}"
          + (" (" + ", ".join(f"{c} {cats[c]}" for c in sorted(cats, key=lambda c: order.get(c, 9))) + ")"
             if rows else ""))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Did objtool (in the build) and stackval (after the link) report each injected fault?

    faults.py --log faults/build.log --findings faulty.json --clean-findings clean.json
              --vmlinux faults/.../vmlinux

Run by scripts/source-faults.sh. Exit status 1 when stackval missed a fault, else 0.
"""

import argparse
import subprocess
import sys

from compare import fn_name, parse_findings, parse_log

FAULTS = [
    {
        "id": "a",
        "what": "FRAME_BEGIN/FRAME_END removed from aesni_enc(), which calls _aesni_enc1()"
                " (arch/x86/crypto/aesni-intel_asm.S)",
        "objtool": lambda w: w["func"] == "aesni_enc" and w["kind"] == "call_without_frame",
        "stackval": lambda f, ctx: fn_name(f) == "aesni_enc" and f["kind"] == "call_without_frame",
    },
    {
        "id": "b",
        "what": "`ret` outside any function, after SYM_CODE_END(stackval_fault_code)"
                " (arch/x86/lib/stackval_faults.S)",
        # objtool 6.1 has no ret-outside-a-function check any more; with CONFIG_RETHUNK it
        # reports every unannotated ret, wherever it is, as a 'naked' return.
        "objtool": lambda w: w["obj"].endswith("stackval_faults.o") and (
            w["kind"] == "return_outside_function" or "'naked' return" in w["message"]),
        "stackval": lambda f, ctx: int(f["address"], 16) == ctx["stray_ret"]
        and f["kind"] == "return_outside_function",
    },
    {
        "id": "c",
        "what": "stackval_fault_jump(): push %rbp; mov %rsp,%rbp; jmp __memcpy"
                " (arch/x86/lib/memcpy_64.S) (arch/x86/lib/stackval_faults.S)",
        "objtool": lambda w: w["func"] == "stackval_fault_jump" and w["kind"] == "sibling_call",
        "stackval": lambda f, ctx: fn_name(f) == "stackval_fault_jump"
        and f["family"] == "sibling_call",
    },
]


def symbols(vmlinux):
    out = {}
    res = subprocess.run(["nm", "-S", vmlinux], capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        p = line.split()
        if len(p) == 4:
            out[p[3]] = (int(p[0], 16), int(p[1], 16))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--findings", required=True)
    ap.add_argument("--clean-findings", required=True)
    ap.add_argument("--vmlinux", required=True)
    args = ap.parse_args()

    warnings = parse_log(args.log)
    findings = parse_findings(args.findings)
    clean = parse_findings(args.clean_findings)
    syms = symbols(args.vmlinux)
    if "stackval_fault_code" not in syms or "aesni_enc" not in syms:
        print("faults: the faulty image lacks stackval_fault_code or aesni_enc", file=sys.stderr)
        return 2
    start, size = syms["stackval_fault_code"]
    ctx = {"stray_ret": start + size}

    missed = 0
    rows = []
    for fault in FAULTS:
        ow = [w for w in warnings if fault["objtool"](w)]
        sf = [f for f in findings if fault["stackval"](f, ctx)]
        before = [f for f in clean if fault["stackval"](f, ctx)]
        print(f"fault ({fault['id']}): {fault['what']}")
        for w in ow:
            loc = f"{w['func']}+{w['offset']:#x}" if w["offset"] is not None else w["func"]
            print(f"  objtool   yes  {w['obj']}: warning: objtool: {loc}: {w['message']}")
        if not ow:
            print("  objtool   NO")
        for f in sf:
            print(f"  stackval  yes  {f['address']} {f['location']}: {f['message']}")
        if not sf:
            missed += 1
            print("  stackval  NO")
        if before:
            print(f"  note: the unfaulted image already had {len(before)} such finding(s)")
        rows.append((fault["id"], bool(ow), bool(sf)))
        print()

    print("fault  objtool  stackval")
    for fid, o, s in rows:
        print(f"  ({fid})  {'yes' if o else 'NO ':7}  {'yes' if s else 'NO'}")
    print(f"{len(FAULTS)} faults: objtool reported {sum(r[1] for r in rows)},"
          f" stackval reported {sum(r[2] for r in rows)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

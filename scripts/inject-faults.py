#!/usr/bin/env python3
"""Damage functions of an x86-64 vmlinux on purpose, to measure what stackval catches.

    scripts/inject-faults.py IMAGE OUT --count N --seed S [--kinds K,...]
                             [--exclude-json BASELINE.json]

Copies IMAGE to OUT (IMAGE is only read) and damages N distinct functions of .text chosen by
the seed, each with ONE mutation, then writes what it did to OUT.json. See
docs/fault-injection.md for the method; in short the mutation kinds are:

  nop-push        a push of a callee-saved register in the prologue -> nop of the same length
  nop-pop         a pop of a callee-saved register right before a return -> nop
  ret-to-nop      the function's last instruction, a return, -> nop (the function falls through)
  ret-in-padding  a ret written into the padding after the function (outside every symbol)
  undecodable     one reachable instruction overwritten with opcodes invalid in 64-bit mode
  sysret          one reachable instruction (>= 3 bytes) -> sysretq (or >= 2 bytes -> iretq)
  epilogue-add    the imm8 of an epilogue's `add $N,%rsp` -> N-8 or N+8
  orc-offset      the sp_offset of an ORC entry (sp_reg SP) at a reachable ip of the function +-8

Mutation sites are instructions reached from the function's entry by fall-through and direct
jumps (calls return unless the callee is a known noreturn function), so no fault lands in dead
code. An orc-offset entry must cover code of the damaged function only. A function whose whole
range the ORC table marks undefined (STACK_FRAME_NON_STANDARD code, which objtool does not
walk either) only gets the undecodable mutation: decoding is the one check that applies there.

The kinds are taken round-robin (fault i gets kind i mod len(kinds)), each from the next
function of a seeded permutation of the eligible functions to which that kind applies, so a
run of 200 faults has 25 of each kind. Damaged functions are kept apart: no two are
neighbours in the address order and none calls or jumps to another directly, so that the
faults can all live in one copy and be judged by one stackval run.

Needs only python3 and binutils' objdump (instruction boundaries: each candidate function's
bytes are disassembled as a raw blob, many blobs per objdump run).
"""
import argparse
import bisect
import json
import mmap
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

KINDS = ["nop-push", "nop-pop", "ret-to-nop", "ret-in-padding", "undecodable", "sysret",
         "epilogue-add", "orc-offset"]

# Functions that never return: objtool's global_noreturns[] of 6.1 and tools/objtool/noreturns.h
# (with arch/x86/include/asm/noreturns.h) of 6.12. Code after a call to one of them is dead.
NORETURN = {
    "__fortify_panic", "__invalid_creds", "__kunit_abort", "__module_put_and_kthread_exit",
    "__reiserfs_panic", "__stack_chk_fail", "__tdx_hypercall_failed",
    "__ubsan_handle_builtin_unreachable", "arch_call_rest_init", "arch_cpu_idle_dead",
    "cpu_bringup_and_idle", "cpu_startup_entry", "do_exit", "do_group_exit", "do_task_dead",
    "ex_handler_msr_mce", "fortify_panic", "hlt_play_dead", "hv_ghcb_terminate",
    "kthread_complete_and_exit", "kthread_exit", "kunit_try_catch_throw", "lbug_with_loc",
    "machine_real_restart", "make_task_dead", "mpt_halt_firmware", "nmi_panic_self_stop", "panic",
    "panic_smp_self_stop", "rest_init", "rewind_stack_and_make_dead", "sev_es_terminate",
    "snp_abort", "start_kernel", "stop_this_cpu", "usercopy_abort", "x86_64_start_kernel",
    "x86_64_start_reservations", "xen_cpu_bringup_again", "xen_start_kernel",
}

CALLEE_SAVED_PUSH = {b"\x53": "rbx", b"\x55": "rbp", b"\x41\x54": "r12", b"\x41\x55": "r13",
                     b"\x41\x56": "r14", b"\x41\x57": "r15"}
CALLEE_SAVED_POP = {b"\x5b": "rbx", b"\x5d": "rbp", b"\x41\x5c": "r12", b"\x41\x5d": "r13",
                    b"\x41\x5e": "r14", b"\x41\x5f": "r15"}
NOP = {1: b"\x90", 2: b"\x66\x90", 5: b"\x0f\x1f\x44\x00\x00"}
# One-byte opcodes that are invalid in 64-bit mode (push/pop es/cs/ss/ds, daa, das, aaa, aas,
# pusha, popa). Not 0xd4/0xd5/0x62/0xc4/0xc5: they are (or are becoming) prefixes.
INVALID64 = [0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61]
PROLOGUE_INSNS = 12
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
ORC_REG_SP = 5


def die(msg):
    print("inject-faults: " + msg, file=sys.stderr)
    sys.exit(2)


class Elf:
    """The few parts of a 64-bit little-endian ELF image this script needs."""

    def __init__(self, path):
        try:
            self.file = open(path, "rb")
        except OSError as err:
            die(f"{path}: {err.strerror}")
        self.m = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        m = self.m
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            die(f"{path}: not a 64-bit little-endian ELF file")
        (_, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", m, 16)
        if machine != 62:
            die(f"{path}: not x86-64")
        self.sections = []
        for i in range(shnum):
            (name, typ, flags, addr, off, size, link, info, _, entsize) = struct.unpack_from(
                "<IIQQQQIIQQ", m, shoff + i * shentsize)
            self.sections.append(dict(idx=i, name_off=name, type=typ, flags=flags, addr=addr,
                                      off=off, size=size, link=link))
        strtab = self.sections[shstrndx]["off"]
        for s in self.sections:
            s["name"] = self.cstr(strtab + s["name_off"])
        self.by_name = {s["name"]: s for s in self.sections}

    def cstr(self, off):
        return self.m[off:self.m.find(b"\0", off)].decode("utf-8", "replace")

    def symbols(self):
        symtab = next((s for s in self.sections if s["type"] == 2), None)
        if symtab is None:
            die("the image has no symbol table")
        strtab = self.sections[symtab["link"]]["off"]
        out = []
        for i in range(symtab["size"] // 24):
            name, info, _, shndx, value, size = struct.unpack_from(
                "<IBBHQQ", self.m, symtab["off"] + i * 24)
            if name:
                out.append((self.cstr(strtab + name), info & 0xF, shndx, value, size))
        return out


class Insn:
    __slots__ = ("addr", "len", "bytes", "mnem", "ops", "target")

    def __init__(self, addr, length, raw, mnem, ops, target):
        self.addr, self.len, self.bytes, self.mnem, self.ops, self.target = (
            addr, length, raw, mnem, ops, target)

    def __repr__(self):
        return f"{self.addr:#x}: {self.bytes.hex()} {self.mnem} {self.ops}"


LINE = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
PREFIXES = {"rex", "rex.W", "rex.B", "rex.R", "rex.X", "rex.WB", "rex.WR", "rex.WX", "rex.RB",
            "rex.WRB", "rex.WXB", "rex.XB", "rex.RX", "rex.WRX", "rex.RXB", "rex.WRXB",
            "data16", "addr32", "cs", "ds", "es", "ss", "fs", "gs", "lock", "rep", "repz",
            "repnz", "repe", "repne", "notrack", "bnd", "xacquire", "xrelease"}


def disassemble(blobs, tmpdir):
    """blobs: list of (addr, bytes). Returns one list of Insn per blob (None if objdump's
    instructions do not tile the blob exactly)."""
    paths = []
    for i, (_, data) in enumerate(blobs):
        p = os.path.join(tmpdir, f"b{i}.bin")
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    out = subprocess.run(["objdump", "-D", "-z", "-w", "--no-show-raw-insn", "-b", "binary",
                          "-m", "i386:x86-64"] + paths, check=True, capture_output=True,
                         text=True).stdout
    per_file = {}
    cur = None
    for line in out.splitlines():
        if line.endswith("file format binary"):
            cur = per_file.setdefault(line.split(":")[0], [])
            continue
        mt = LINE.match(line)
        if mt and cur is not None:
            cur.append((int(mt.group(1), 16), mt.group(2).strip()))
    result = []
    for i, (base, data) in enumerate(blobs):
        rows = per_file.get(paths[i], [])
        insns = []
        ok = bool(rows) and rows[0][0] == 0
        for j, (off, text) in enumerate(rows):
            end = rows[j + 1][0] if j + 1 < len(rows) else len(data)
            if end <= off:
                ok = False
                break
            words = text.split()
            while len(words) > 1 and words[0] in PREFIXES:
                words = words[1:]
            mnem = words[0] if words else ""
            ops = " ".join(words[1:])
            target = None
            tm = re.match(r"^(0x[0-9a-f]+)", ops)
            if tm and (mnem.startswith("j") or mnem.startswith("call") or mnem.startswith("loop")):
                target = (int(tm.group(1), 16) + base) & 0xFFFFFFFFFFFFFFFF
            # An undecodable byte, or a prefix objdump printed on its own line: leave the
            # function alone rather than guess its instruction boundaries.
            if "(bad)" in text or mnem in PREFIXES or mnem.startswith(".byte"):
                ok = False
            insns.append(Insn(base + off, end - off, data[off:end], mnem, ops, target))
        os.unlink(paths[i])
        result.append(insns if ok else None)
    return result


def nop_len(data, p):
    """Length of the nop (0x90, 66 90, 0f 1f /0 with any 66/2e prefixes) at data[p], else 0."""
    q = p
    while q < len(data) and data[q] in (0x66, 0x2E) and q - p < 6:
        q += 1
    if q < len(data) and data[q] == 0x90:
        return q + 1 - p
    if q + 2 < len(data) and data[q] == 0x0F and data[q + 1] == 0x1F:
        modrm = data[q + 2]
        mod, rm = modrm >> 6, modrm & 7
        if (modrm >> 3) & 7 != 0 or mod == 3:
            return 0
        n = 3 + (1 if rm == 4 else 0) + {0: 0, 1: 1, 2: 4}[mod]
        if mod == 0 and rm == 5:
            n += 4
        return q + n - p if q + n <= len(data) else 0
    return 0


class Image:
    def __init__(self, path, exclude_funcs):
        self.elf = Elf(path)
        e = self.elf
        self.text = e.by_name.get(".text")
        if self.text is None:
            die("the image has no .text")
        t = self.text
        syms = e.symbols()
        self.name_addr = {}
        addrs_of_name = {}
        names_at = {}
        sized = []
        starts = set()
        for name, typ, shndx, value, size in syms:
            if shndx != t["idx"]:
                continue
            if typ in (STT_NOTYPE, STT_FUNC, STT_OBJECT):
                starts.add(value)
            if size > 0 and typ in (STT_FUNC, STT_OBJECT):
                sized.append((value, value + size))
            if typ == STT_FUNC or typ == STT_NOTYPE:
                self.name_addr.setdefault(name, value)
            if typ == STT_FUNC:
                addrs_of_name.setdefault(name, set()).add(value)
                if size > 0:
                    names_at.setdefault(value, []).append((name, size))
        self.starts = sorted(starts)
        sized.sort()
        self.sized_starts = [a for a, _ in sized]
        self.sized_maxend = []
        mx = 0
        for _, b in sized:
            mx = max(mx, b)
            self.sized_maxend.append(mx)
        self.thunk = self.name_addr.get("__x86_return_thunk")
        self.noreturn = {self.name_addr[n] for n in NORETURN if n in self.name_addr}
        lo, hi = t["addr"], t["addr"] + t["size"]
        self.funcs = []  # (addr, size, names)
        self.func_starts = sorted(names_at)
        for addr in self.func_starts:
            entries = names_at[addr]
            names = sorted({n for n, _ in entries})
            size = max(s for _, s in entries)
            if not (lo <= addr and addr + size <= hi):
                continue
            if any(n.startswith("__pfx_") or n.startswith("__cfi_") or ".cold" in n for n in names):
                continue
            if addr in exclude_funcs:
                continue
            # A name used at two addresses could not be told apart in stackval's messages.
            if any(len(addrs_of_name[n]) > 1 for n in names):
                continue
            self.funcs.append((addr, size, names))
        self.index_of = {}
        self.load_orc()

    def covered(self, a, b):
        """True when some sized symbol overlaps [a, b)."""
        i = bisect.bisect_left(self.sized_starts, b) - 1
        return i >= 0 and self.sized_maxend[i] > a

    def read(self, addr, n):
        t = self.text
        o = t["off"] + addr - t["addr"]
        return bytes(self.elf.m[o:o + n])

    def next_func_start(self, addr):
        i = bisect.bisect_right(self.func_starts, addr)
        return self.func_starts[i] if i < len(self.func_starts) else None

    def prev_func_start(self, addr):
        i = bisect.bisect_left(self.func_starts, addr) - 1
        return self.func_starts[i] if i >= 0 else None

    def load_orc(self):
        e = self.elf
        ip, u = e.by_name.get(".orc_unwind_ip"), e.by_name.get(".orc_unwind")
        self.orc = []  # sorted (ip, index)
        self.orc_call_type = None
        if not ip or not u or ip["type"] != 1 or u["type"] != 1:
            return
        n = ip["size"] // 4
        if u["size"] != 6 * n:
            return
        raw_ip = struct.unpack_from(f"<{n}i", e.m, ip["off"])
        self.orc_ip_sec, self.orc_sec = ip, u
        types = {}
        lo, hi = self.text["addr"], self.text["addr"] + self.text["size"]
        for i in range(n):
            addr = (ip["addr"] + 4 * i + raw_ip[i]) & 0xFFFFFFFFFFFFFFFF
            if lo <= addr < hi:
                self.orc.append((addr, i))
        self.orc.sort()
        self.orc_ips = [a for a, _ in self.orc]
        for _, i in self.orc[:: max(1, len(self.orc) // 20000)]:
            _, _, fl = self.orc_entry(i)
            if fl & 0xF == ORC_REG_SP:
                types[fl >> 8] = types.get(fl >> 8, 0) + 1
        # The most common type of SP-based entries is the "call" type (0 in the v2 layout
        # of 6.1, 2 in the v3 layout of 6.3+).
        self.orc_call_type = max(types, key=types.get) if types else None

    def orc_entry(self, i):
        return struct.unpack_from("<hhH", self.elf.m, self.orc_sec["off"] + 6 * i)

    def orc_in(self, a, b, with_next=False):
        """ORC entries whose ip is in [a, b), with the next entry's ip if with_next."""
        i = bisect.bisect_left(self.orc_ips, a)
        j = bisect.bisect_left(self.orc_ips, b)
        if not with_next:
            return self.orc[i:j]
        ips = self.orc_ips
        return [(ip, idx, ips[k + 1] if k + 1 < len(ips) else None)
                for k, (ip, idx) in enumerate(self.orc[i:j], start=i)]

    def orc_undefined_over(self, a, b):
        """Whether the image marks [a, b) as non-standard code: the ORC entry in force at a
        and every entry inside are undefined (sp_reg UNDEFINED: STACK_FRAME_NON_STANDARD or
        UNWIND_HINT_UNDEFINED code, which objtool does not walk)."""
        if not self.orc:
            return False
        i = bisect.bisect_right(self.orc_ips, a) - 1
        if i < 0 or self.orc_entry(self.orc[i][1])[2] & 0xF != 0:
            return False
        return all(self.orc_entry(idx)[2] & 0xF == 0 for _, idx in self.orc_in(a + 1, b))


class Func:
    def __init__(self, img, addr, size, names, insns):
        self.addr, self.size, self.names, self.insns = addr, size, names, insns
        self.name = names[0]
        self.end = addr + size
        self.at = {ins.addr: i for i, ins in enumerate(insns)}
        self.targets = set()  # direct call/jump targets outside the function
        self.reach = self.reachable(img)
        self.nonstandard = img.orc_undefined_over(addr, self.end)

    def is_return(self, img, ins):
        return ins.bytes == b"\xc3" or (ins.bytes[0] == 0xE9 and ins.len == 5
                                        and ins.target == img.thunk and img.thunk is not None)

    def reachable(self, img):
        """Instructions reached from the entry by fall-through and direct jumps inside the
        function (an under-approximation: switch tables, ud2-warnings and .cold parts that
        jump back are not followed)."""
        seen = set()
        work = [0] if self.insns else []
        for ins in self.insns:
            if ins.target is not None and not (self.addr <= ins.target < self.end):
                self.targets.add(ins.target)
        while work:
            i = work.pop()
            while i is not None and i not in seen and i < len(self.insns):
                seen.add(i)
                ins = self.insns[i]
                m, b = ins.mnem, ins.bytes
                nxt = i + 1
                if self.is_return(img, ins) or b[:1] in (b"\xc3", b"\xc2", b"\xcc") or \
                        b[:2] == b"\x0f\x0b" or m.startswith("sysret") or m.startswith("iret") \
                        or m in ("ud1", "ud0", "ud2", "hlt", "int3"):
                    nxt = None
                elif m.startswith("j") or m.startswith("loop"):
                    if ins.target is not None and ins.target in self.at:
                        work.append(self.at[ins.target])
                    if m.startswith("jmp"):
                        nxt = None
                elif m.startswith("call"):
                    if ins.target in img.noreturn:
                        nxt = None
                i = nxt
        return seen


def choose(img, f, kind, rng, used_padding):
    """One mutation of KIND for function F, or None when the kind does not apply."""
    insns, reach = f.insns, f.reach
    # Code the image marks as non-standard is not walked by objtool, so a stack fault there is
    # out of any validator's reach; decoding is the one check that applies to it.
    if f.nonstandard and kind != "undecodable":
        return None
    base = dict(function=f.name, aliases=f.names[1:], function_address=hex(f.addr),
                function_size=f.size, mutation=kind)
    if f.nonstandard:
        base["nonstandard"] = True

    def mk(addr, orig, new, **extra):
        d = dict(base, address=hex(addr), original=orig.hex(), new=new.hex())
        d.update(extra)
        return d

    def nop_one(cands, regs, mnemonic):
        # One of the candidate push/pop instructions, replaced by a nop of its length.
        if not cands:
            return None
        ins = insns[rng.choice(cands)]
        return mk(ins.addr, ins.bytes, NOP[ins.len], instruction=f"{mnemonic} %{regs[ins.bytes]}")

    if kind == "nop-push":
        return nop_one([i for i in range(min(PROLOGUE_INSNS, len(insns)))
                        if i in reach and insns[i].bytes in CALLEE_SAVED_PUSH],
                       CALLEE_SAVED_PUSH, "push")
    if kind == "nop-pop":
        return nop_one([i for i in range(len(insns) - 1) if i in reach
                        and insns[i].bytes in CALLEE_SAVED_POP and f.is_return(img, insns[i + 1])],
                       CALLEE_SAVED_POP, "pop")
    if kind == "ret-to-nop":
        i = len(insns) - 1
        if i < 1 or i not in reach or not f.is_return(img, insns[i]):
            return None
        ins = insns[i]
        return mk(ins.addr, ins.bytes, NOP[ins.len],
                  instruction="ret" if ins.len == 1 else "jmp __x86_return_thunk")
    if kind == "ret-in-padding":
        nxt = img.next_func_start(f.addr)
        i = bisect.bisect_right(img.starts, f.end - 1)
        gap_end = img.starts[i] if i < len(img.starts) else img.text["addr"] + img.text["size"]
        if nxt is not None:
            gap_end = min(gap_end, nxt)
        if gap_end <= f.end or img.covered(f.end, gap_end) or f.end in used_padding:
            return None
        gap = img.read(f.end, gap_end - f.end)
        if all(c == 0xCC for c in gap):
            k = rng.randrange(1, len(gap)) if len(gap) > 1 else 0
            return mk(f.end + k, gap[k:k + 1], b"\xc3", padding="int3",
                      padding_range=[hex(f.end), hex(gap_end)], ret_address=hex(f.end + k))
        nops, p = [], 0
        while p < len(gap):
            n = nop_len(gap, p)
            if n == 0:
                return None
            nops.append((p, n))
            p += n
        # Not at the very first byte after the function when avoidable: the ret should sit in
        # the middle of the padding.
        choices = [(p, n) for p, n in nops if p > 0 or n > 1] or nops
        p, n = rng.choice(choices)
        k = 0 if n == 1 else rng.randrange(1, n) if p == 0 else rng.randrange(0, n)
        new = b"\x90" * k + b"\xc3" + b"\xcc" * (n - k - 1)
        return mk(f.end + p, gap[p:p + n], new, padding="nop",
                  padding_range=[hex(f.end), hex(gap_end)], ret_address=hex(f.end + p + k))
    if kind == "undecodable":
        cands = [i for i in range(1, len(insns) - 1) if i in reach and 2 <= insns[i].len <= 4]
        if not cands:
            cands = [i for i in range(1, len(insns) - 1) if i in reach and insns[i].len <= 6]
        if not cands:
            return None
        ins = insns[rng.choice(cands)]
        new = bytes(rng.choice(INVALID64) for _ in range(ins.len))
        return mk(ins.addr, ins.bytes, new, instruction=f"{ins.mnem} {ins.ops}".strip())
    if kind == "sysret":
        big = [i for i in range(1, len(insns)) if i in reach and insns[i].len >= 3]
        small = [i for i in range(1, len(insns)) if i in reach and insns[i].len == 2]
        use_iret = (rng.random() < 0.25 and (big or small)) or not big
        cands = (big + small) if use_iret else big
        if not cands:
            return None
        ins = insns[rng.choice(cands)]
        new = (b"\x48\xcf" if use_iret else b"\x48\x0f\x07")
        new += b"\x90" * (ins.len - len(new))
        return mk(ins.addr, ins.bytes, new, instruction=f"{ins.mnem} {ins.ops}".strip(),
                  written="iretq" if use_iret else "sysretq")
    if kind == "epilogue-add":
        cands = []
        for i, ins in enumerate(insns):
            if i not in reach or len(ins.bytes) != 4 or ins.bytes[:3] != b"\x48\x83\xc4":
                continue
            j = i + 1
            while j < len(insns) and insns[j].bytes in CALLEE_SAVED_POP:
                j += 1
            if j < len(insns) and f.is_return(img, insns[j]):
                cands.append(i)
        if not cands:
            return None
        ins = insns[rng.choice(cands)]
        n = ins.bytes[3]
        if n >= 0x80:
            return None
        opts = [v for v in (n - 8, n + 8) if 0 <= v <= 0x7F]
        v = rng.choice(opts)
        return mk(ins.addr + 3, ins.bytes[3:], bytes([v]), instruction=f"add ${n:#x},%rsp",
                  instruction_address=hex(ins.addr), new_instruction=f"add ${v:#x},%rsp")
    if kind == "orc-offset":
        if not img.orc or img.orc_call_type is None:
            return None
        cands = []
        for ip, idx, nxt in img.orc_in(f.addr, f.end, with_next=True):
            # The entry must cover reached code of this function only: objtool merges equal
            # entries, so one at the end of a function can run on into the next function.
            if ip not in f.at or f.at[ip] not in reach or nxt is None or nxt > f.end:
                continue
            sp, bp, fl = img.orc_entry(idx)
            if fl & 0xF == ORC_REG_SP and fl >> 8 == img.orc_call_type:
                cands.append((ip, idx, sp))
        if not cands:
            return None
        ip, idx, sp = rng.choice(cands)
        nsp = sp + rng.choice((-8, 8))
        if nsp <= 0:
            nsp = sp + 8
        u = img.orc_sec
        d = dict(base, address=hex(u["addr"] + 6 * idx), original=struct.pack("<h", sp).hex(),
                 new=struct.pack("<h", nsp).hex(), orc_ip=hex(ip), orc_index=idx,
                 sp_offset=[sp, nsp], file_offset=u["off"] + 6 * idx)
        return d
    raise ValueError(kind)


def file_offset(img, fault):
    if "file_offset" in fault:
        return fault["file_offset"]
    t = img.text
    return t["off"] + int(fault["address"], 16) - t["addr"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=KINDS, metavar="KIND",
                    help="mutation kinds to use (space- or comma-separated; default: all)")
    ap.add_argument("--exclude-json", help="stackval --format json output of the undamaged "
                    "image: functions with a finding there are not damaged")
    ap.add_argument("--replay", metavar="FAULTS.json",
                    help="apply the faults of an earlier OUT.json instead of choosing new ones "
                    "(--count, --seed, --kinds, --exclude-json are then ignored)")
    ap.add_argument("--only", nargs="+", metavar="FUNCTION", default=[],
                    help="with --replay: only the faults in these functions")
    args = ap.parse_args()
    kinds = [k for arg in args.kinds for k in arg.replace(" ", ",").split(",") if k]
    kinds = list(dict.fromkeys(kinds))
    for k in kinds:
        if k not in KINDS:
            die(f"unknown kind {k!r}; kinds: {', '.join(KINDS)}")
    if os.path.abspath(args.out) == os.path.abspath(args.image) or (
            os.path.exists(args.out) and os.path.samefile(args.out, args.image)):
        die("OUT must not be IMAGE")

    exclude = set()
    if args.exclude_json:
        with open(args.exclude_json) as fh:
            for line in fh:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                f = json.loads(line)
                if f.get("function") is not None:
                    exclude.add(int(f["address"], 16) - int(f.get("offset") or 0))

    if args.replay:
        with open(args.replay) as fh:
            faults = json.load(fh)["faults"]
        if args.only:
            faults = [d for d in faults if d["function"] in args.only]
            if not faults:
                die("--only matches no fault of " + args.replay)
        write(args, Image(args.image, set()), faults)
        return
    img = Image(args.image, exclude)
    if "orc-offset" in kinds and not img.orc:
        print("inject-faults: no ORC table; orc-offset is not applicable", file=sys.stderr)
        kinds.remove("orc-offset")
    rng = random.Random(args.seed)
    order = list(range(len(img.funcs)))
    rng.shuffle(order)

    faults = []
    damaged = {}  # addr -> Func
    used_padding = set()
    pool = []  # disassembled, not yet damaged, in permutation order
    cursor = 0
    tmpdir = tempfile.mkdtemp(prefix="inject-faults.")
    BATCH = 256

    def refill():
        nonlocal cursor
        batch = []
        while cursor < len(order) and len(batch) < BATCH:
            addr, size, names = img.funcs[order[cursor]]
            cursor += 1
            batch.append((addr, size, names))
        if not batch:
            return False
        res = disassemble([(a, img.read(a, s)) for a, s, _ in batch], tmpdir)
        for (a, s, names), insns in zip(batch, res):
            if insns:
                pool.append(Func(img, a, s, names, insns))
        return True

    def compatible(f):
        # Not a neighbour of (and no direct call/jump to or from) another damaged function.
        nb = {img.next_func_start(f.addr), img.prev_func_start(f.addr)}
        if nb & damaged.keys():
            return False
        if f.targets & damaged.keys():
            return False
        return not any(f.addr in g.targets for g in damaged.values())

    try:
        k = 0
        while len(faults) < args.count and kinds:
            kind = kinds[k % len(kinds)]
            k += 1
            start = 0  # pool entries before start were tried for this kind already
            placed = False
            while not placed:
                for pi in range(start, len(pool)):
                    f = pool[pi]
                    if not compatible(f):
                        continue
                    fault = choose(img, f, kind, rng, used_padding)
                    if fault is None:
                        continue
                    pool.pop(pi)
                    faults.append(fault)
                    damaged[f.addr] = f
                    if kind == "ret-in-padding":
                        used_padding.add(f.end)
                    placed = True
                    break
                if placed:
                    break
                start = len(pool)
                if not refill():
                    print(f"inject-faults: no more functions for {kind}", file=sys.stderr)
                    kinds.remove(kind)
                    k -= 1
                    break
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    if len(faults) < args.count:
        print(f"inject-faults: only {len(faults)} faults could be placed", file=sys.stderr)
    write(args, img, faults)


def write(args, img, faults):
    """Copy the image to args.out, apply the faults (checking the bytes they replace) and write
    the list to args.out + ".json"."""
    tmp_out = args.out + ".part"
    shutil.copyfile(args.image, tmp_out)
    os.chmod(tmp_out, 0o644)
    with open(tmp_out, "r+b") as fh:
        for fault in faults:
            off = file_offset(img, fault)
            orig, new = bytes.fromhex(fault["original"]), bytes.fromhex(fault["new"])
            assert len(orig) == len(new)
            fh.seek(off)
            if fh.read(len(orig)) != orig:
                fh.close()
                os.unlink(tmp_out)
                die(f"{fault['function']}: bytes at {fault['address']} are not the expected ones")
            fh.seek(off)
            fh.write(new)
    os.replace(tmp_out, args.out)
    faults.sort(key=lambda d: int(d["function_address"], 16))
    meta = dict(image=os.path.abspath(args.image), out=os.path.abspath(args.out),
                seed=None if args.replay else args.seed, replay=args.replay, count=len(faults), kinds=sorted({d["mutation"] for d in faults}),
                faults=faults)
    with open(args.out + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    by = {}
    for d in faults:
        by[d["mutation"]] = by.get(d["mutation"], 0) + 1
    print(f"inject-faults: {len(faults)} faults in {args.out} ("
          + ", ".join(f"{v} {k}" for k, v in sorted(by.items())) + f"); list in {args.out}.json",
          file=sys.stderr)


if __name__ == "__main__":
    main()

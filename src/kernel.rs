//! The kernel's own tables of alternative control flow, read from the image's bytes.
//!
//! objtool learns where code can go beyond its branches from the tables the kernel patches
//! at run time; in a final image those tables are still there:
//!
//! - `__jump_table` (static branches): a nop that may become a jump, or the reverse;
//! - `__ex_table`: an instruction that may fault and continue at a fixup;
//! - `.altinstructions`: instructions that may be replaced by code in `.altinstr_replacement`;
//! - `__bug_table`: a `ud2` that is a WARN() and continues, rather than a BUG() that does not;
//! - `.orc_unwind_ip` / `.orc_unwind`: the unwind table itself, for verification.
//!
//! All entries are self-relative 32-bit offsets, so they are read from the section bytes and
//! never from relocations: `sorttable` re-sorts `__ex_table` and the ORC tables after the link,
//! which leaves their relocations stale. Layouts that changed between kernel versions are
//! recognised from the image itself (section sizes, the `.orc_header` section) and checked
//! entry by entry; each layout cites the kernel header it mirrors.

use rustc_hash::FxHashMap as HashMap;

use rayon::prelude::*;

use crate::decode::{AddrIndex, InsnId, Insns, Kind};
use crate::image::Image;

/// Per-instruction flags.
pub const JUMP_LABEL: u8 = 1;
pub const EX_FAULT: u8 = 2;
pub const ALT_START: u8 = 4;
pub const WARN_UD2: u8 = 8;
/// The last instruction of an alternative's replacement.
pub const ALT_EXIT: u8 = 16;
/// Listed in `.return_sites`: a `jmp __x86_return_thunk` that is the function's return.
pub const RETURN_SITE: u8 = 32;
/// Listed in `.retpoline_sites`: a call or jump through `__x86_indirect_thunk_*`, an
/// indirect call or tail call written as a direct branch.
pub const RETPOLINE_SITE: u8 = 64;
/// Inside an alternative's original instructions, after the first: objtool (6.x) merges the
/// unwind states of all of a group's versions by offset, so the ORC entry here may describe
/// a replacement instead.
pub const ALT_BODY: u8 = 128;

/// One alternative for the instructions `orig..orig_end`.
#[derive(Clone, Copy, Debug)]
pub struct Alt {
    /// First replacement instruction; `None` for an empty replacement (the original becomes nops).
    pub repl: Option<InsnId>,
    /// Where execution continues after the original instructions.
    pub orig_end: InsnId,
    /// The original instructions are not validated, as objtool does not: the !POPCNT
    /// fallback `call __sw_hweight*` (tools/objtool/arch/x86/special.c), a call without a
    /// frame that the kernel accepts because __sw_hweight preserves every register.
    pub skip_orig: bool,
}

/// `X86_FEATURE_POPCNT` (arch/x86/include/asm/cpufeatures.h: word 4, bit 23).
const X86_FEATURE_POPCNT: u16 = 4 * 32 + 23;

/// One ORC entry, decoded (see arch/x86/include/asm/orc_types.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrcEntry {
    pub sp_offset: i16,
    pub bp_offset: i16,
    pub sp_reg: u8,
    pub bp_reg: u8,
    pub kind: OrcType,
    pub signal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrcType {
    Undefined,
    EndOfStack,
    Call,
    Regs,
    RegsPartial,
}

/// ORC base registers as [`OrcEntry`] holds them: the kernel's earlier numbers (6.12 and
/// before), plus `AX`, which came with the numbering that replaced them (see [`RENUMBERED`]).
/// Numbers no kernel defines stay as they are, and name no register.
pub mod orc_reg {
    pub const UNDEFINED: u8 = 0;
    pub const PREV_SP: u8 = 1;
    pub const DX: u8 = 2;
    pub const DI: u8 = 3;
    pub const BP: u8 = 4;
    pub const SP: u8 = 5;
    pub const R10: u8 = 6;
    pub const R13: u8 = 7;
    pub const BP_INDIRECT: u8 = 8;
    pub const SP_INDIRECT: u8 = 9;
    pub const AX: u8 = 16;
}

/// The later numbering of ORC base registers (Debian's 7.2 kernel has it; 6.12 the earlier
/// one), indexed by the number in the table, as [`orc_reg`] numbers them: `AX` was added at
/// 1, `SP` and `BP` moved to 3 and 4, `DI` to 5, `PREV_SP` to 8 and the two indirect bases to
/// 9 and 10. The entry's layout did not change, and `.orc_header` holds a hash of the
/// definitions, not a version: [`renumbered`] tells the two apart from the entries.
const RENUMBERED: [u8; 16] = [
    orc_reg::UNDEFINED,
    orc_reg::AX,
    orc_reg::DX,
    orc_reg::SP,
    orc_reg::BP,
    orc_reg::DI,
    orc_reg::R10,
    orc_reg::R13,
    orc_reg::PREV_SP,
    orc_reg::SP_INDIRECT,
    orc_reg::BP_INDIRECT,
    11,
    12,
    13,
    14,
    15,
];

/// The image's ORC table, sorted by address.
pub struct Orc {
    pub ips: Vec<u64>,
    pub entries: Vec<OrcEntry>,
    /// "v3" (Linux 6.4+: type:3, signal:1), "v3, registers renumbered" (the same with the
    /// later register numbers, [`RENUMBERED`]) or "v2" (type:2, end:1).
    pub layout: &'static str,
    /// Where each block's entries start, so that a lookup reads one slot and searches the
    /// block's entry or two instead of a binary search over the whole table (about nineteen
    /// dependent reads for Debian 6.1's 385 k entries), half a million times per check: the
    /// walks' ORC checks search whenever a path lands away from the entry last used.
    index: AddrIndex,
}

impl Orc {
    pub fn new(ips: Vec<u64>, entries: Vec<OrcEntry>, layout: &'static str) -> Orc {
        debug_assert!(ips.is_sorted() && ips.len() == entries.len());
        // About one block per entry.
        let span = ips.last().zip(ips.first()).map_or(0, |(hi, lo)| hi - lo);
        let mut shift = 4;
        while span >> shift > ips.len() as u64 {
            shift += 1;
        }
        let index = AddrIndex::over(&ips, shift);
        Orc {
            ips,
            entries,
            layout,
            index,
        }
    }

    /// How many entries are at or before `addr`.
    fn count_upto(&self, addr: u64) -> usize {
        let (a, z) = self.index.candidates(addr);
        a + self.ips[a..z].partition_point(|&ip| ip <= addr)
    }

    /// Whether `[lo, hi)` is covered only by entries that give the unwinder no way through
    /// (undefined or end of stack): the one in force at `lo` and every one inside.
    pub fn undefined_over(&self, lo: u64, hi: u64) -> bool {
        let undefined = |e: &OrcEntry| matches!(e.kind, OrcType::Undefined | OrcType::EndOfStack);
        // One search: the entry in force at `lo` is the one before the first after it, and
        // for nearly every function it is defined.
        let a = self.count_upto(lo);
        if a == 0 || !undefined(&self.entries[a - 1]) {
            return false;
        }
        let b = a + self.ips[a..].partition_point(|&ip| ip < hi);
        self.entries[a..b].iter().all(undefined)
    }

    /// The entry starting exactly at `addr`.
    pub fn at(&self, addr: u64) -> Option<&OrcEntry> {
        self.ips.binary_search(&addr).ok().map(|i| &self.entries[i])
    }

    /// The entry that covers `addr`: the last one at or before it.
    pub fn lookup(&self, addr: u64) -> Option<(u64, &OrcEntry)> {
        let i = self.count_upto(addr);
        (i > 0).then(|| (self.ips[i - 1], &self.entries[i - 1]))
    }

    /// [`Orc::lookup`] for a caller that looks up nearby addresses in turn: `hint` holds where
    /// the previous lookup ended, and the entry there or the next one usually answers without
    /// a search.
    pub fn lookup_near(&self, addr: u64, hint: &mut usize) -> Option<(u64, &OrcEntry)> {
        let fits = |i: usize| {
            i > 0
                && i <= self.ips.len()
                && self.ips[i - 1] <= addr
                && self.ips.get(i).is_none_or(|&n| n > addr)
        };
        let i = if fits(*hint) {
            *hint
        } else if fits(*hint + 1) {
            *hint + 1
        } else {
            self.count_upto(addr)
        };
        *hint = i;
        (i > 0).then(|| (self.ips[i - 1], &self.entries[i - 1]))
    }
}

#[derive(Default)]
pub struct Tables {
    /// Flags per instruction, indexed by `InsnId`.
    pub flags: Vec<u8>,
    pub jump_labels: HashMap<InsnId, InsnId>,
    pub ex_fixups: HashMap<InsnId, Vec<InsnId>>,
    pub alts: HashMap<InsnId, Vec<Alt>>,
    /// Last instruction of each replacement -> where its original continues.
    pub alt_exits: HashMap<InsnId, InsnId>,
    pub orc: Option<Orc>,
    pub summary: Vec<String>,
    /// Flags set while one table is read, applied to `flags` when the tables are merged.
    marks: Vec<(InsnId, u8)>,
}

impl Tables {
    pub fn flags(&self, id: InsnId) -> u8 {
        self.flags.get(id as usize).copied().unwrap_or(0)
    }
}

fn s32(b: &[u8], off: usize) -> i64 {
    i32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as i64
}

fn rel(base: u64, off: i64) -> u64 {
    base.wrapping_add(off as u64)
}

pub fn read(image: &Image<'_>, insns: &Insns) -> Tables {
    // The tables are independent: each is read into its own part, in parallel, and the parts
    // are merged in a fixed order.
    let readers: [&(dyn Fn(&mut Tables) + Sync); 7] = [
        &|t| jump_table(image, insns, t),
        &|t| ex_table(image, insns, t),
        &|t| alternatives(image, insns, t),
        &|t| bug_table(image, insns, t),
        &|t| sites(image, insns, t, "return_sites", RETURN_SITE),
        &|t| sites(image, insns, t, "retpoline_sites", RETPOLINE_SITE),
        &|t| t.orc = orc(image),
    ];
    let parts: Vec<Tables> = readers
        .par_iter()
        .map(|read| {
            let mut part = Tables::default();
            read(&mut part);
            part
        })
        .collect();
    let mut t = Tables {
        flags: vec![0; insns.len()],
        ..Default::default()
    };
    for part in parts {
        for (id, flag) in part.marks {
            t.flags[id as usize] |= flag;
        }
        absorb(&mut t.jump_labels, part.jump_labels, |m, k, v| {
            m.insert(k, v);
        });
        absorb(&mut t.ex_fixups, part.ex_fixups, |m, k, v| {
            m.entry(k).or_default().extend(v)
        });
        absorb(&mut t.alts, part.alts, |m, k, v| {
            m.insert(k, v);
        });
        absorb(&mut t.alt_exits, part.alt_exits, |m, k, v| {
            m.insert(k, v);
        });
        t.orc = t.orc.or(part.orc);
        t.summary.extend(part.summary);
    }
    if let Some(o) = &t.orc {
        t.summary
            .push(format!("orc: {} entries ({})", o.ips.len(), o.layout));
    }
    t
}

/// Adds `from`'s entries to `into` with `add`, or takes `from` whole while `into` is empty: each
/// map has one reader, and inserting all its entries again into a map growing from nothing, on
/// one thread, made the merge 35-50 ms for the 256 MB synthetic image (13-17 ms taken whole).
fn absorb<K: std::hash::Hash + Eq, V>(
    into: &mut HashMap<K, V>,
    from: HashMap<K, V>,
    add: impl Fn(&mut HashMap<K, V>, K, V),
) {
    if into.is_empty() {
        *into = from;
    } else {
        for (k, v) in from {
            add(into, k, v);
        }
    }
}

/// `struct jump_entry { s32 code; s32 target; long key; }` (include/linux/jump_label.h).
fn jump_table(image: &Image<'_>, insns: &Insns, t: &mut Tables) {
    let Some((base, bytes)) = image.table("__jump_table") else {
        return;
    };
    let (mut ok, mut bad) = (0, 0);
    for (i, e) in bytes.chunks_exact(16).enumerate() {
        let at = base + 16 * i as u64;
        let code = rel(at, s32(e, 0));
        let target = rel(at + 4, s32(e, 4));
        match (insns.at(code), insns.at(target)) {
            (Some(c), Some(d)) if matches!(insns.get(c).kind, Kind::Nop | Kind::Jump) => {
                t.marks.push((c, JUMP_LABEL));
                t.jump_labels.insert(c, d);
                ok += 1;
            }
            _ => bad += 1,
        }
    }
    t.summary
        .push(format!("jump labels: {ok} ({bad} unresolved)"));
}

/// `struct exception_table_entry { int insn, fixup, data; }` (arch/x86/include/asm/extable.h).
fn ex_table(image: &Image<'_>, insns: &Insns, t: &mut Tables) {
    let Some((base, bytes)) = image.table("__ex_table") else {
        return;
    };
    let (mut ok, mut bad) = (0, 0);
    for (i, e) in bytes.chunks_exact(12).enumerate() {
        let at = base + 12 * i as u64;
        let insn = rel(at, s32(e, 0));
        let fixup = rel(at + 4, s32(e, 4));
        match (insns.at(insn), insns.at(fixup)) {
            (Some(a), Some(f)) => {
                t.marks.push((a, EX_FAULT));
                t.ex_fixups.entry(a).or_default().push(f);
                ok += 1;
            }
            _ => bad += 1,
        }
    }
    t.summary
        .push(format!("exception fixups: {ok} ({bad} unresolved)"));
}

/// `struct alt_instr` (arch/x86/include/asm/alternative.h): `s32 instr_offset; s32 repl_offset;`
/// then `u16 cpuid; u8 instrlen; u8 replacementlen;` (12 bytes, up to Linux 6.2) or
/// `u32 ft_flags; u8 instrlen; u8 replacementlen;` (14 bytes, Linux 6.3+).
fn alternatives(image: &Image<'_>, insns: &Insns, t: &mut Tables) {
    let Some((base, bytes)) = image
        .table("altinstructions")
        .or_else(|| image.table(".altinstructions"))
    else {
        return;
    };
    // (original, replacement, original length, replacement length, feature)
    type RawAlt = (u64, u64, u8, u8, u16);
    let parse = |stride: usize| -> Option<Vec<RawAlt>> {
        if bytes.is_empty() || bytes.len() % stride != 0 {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() / stride);
        for (i, e) in bytes.chunks_exact(stride).enumerate() {
            let at = base + (stride * i) as u64;
            let orig = rel(at, s32(e, 0));
            let repl = rel(at + 4, s32(e, 4));
            let (ilen, rlen) = (e[stride - 2], e[stride - 1]);
            // Every original must be code, and every replacement must lie in executable bytes.
            let code = |a: u64| image.section_at(a).is_some_and(|s| s.exec);
            if !code(orig) || (rlen > 0 && !code(repl)) {
                return None;
            }
            // The feature number is the low 16 bits in both layouts (`cpuid` or `ft_flags`).
            let feature = u16::from_le_bytes([e[8], e[9]]);
            out.push((orig, repl, ilen, rlen, feature));
        }
        Some(out)
    };
    let (layout, entries) = match (parse(14), parse(12)) {
        (Some(e), None) => ("14-byte alt_instr", e),
        (None, Some(e)) => ("12-byte alt_instr", e),
        (Some(e14), Some(e12)) => {
            // Both strides fit: the kernel version decides (ft_flags arrived in 6.3).
            if kernel_at_least(image, 6, 3) {
                ("14-byte alt_instr", e14)
            } else {
                ("12-byte alt_instr", e12)
            }
        }
        (None, None) => {
            t.summary
                .push("alternatives: unrecognised .altinstructions layout".into());
            return;
        }
    };
    let (mut ok, mut bad) = (0, 0);
    for (orig, repl, ilen, rlen, feature) in entries {
        let (Some(o), Some(end)) = (insns.at(orig), insns.at(orig + ilen as u64)) else {
            bad += 1;
            continue;
        };
        let repl_id = if rlen == 0 {
            None
        } else if let Some(r) = insns.at(repl) {
            let last = insns.lower_bound(repl + rlen as u64).saturating_sub(1);
            if insns.get(last).end() == repl + rlen as u64 && last >= r {
                t.marks.push((last, ALT_EXIT));
                t.alt_exits.insert(last, end);
            }
            Some(r)
        } else {
            bad += 1;
            continue;
        };
        t.marks.push((o, ALT_START));
        for b in o + 1..end {
            t.marks.push((b, ALT_BODY));
        }
        t.alts.entry(o).or_default().push(Alt {
            repl: repl_id,
            orig_end: end,
            skip_orig: feature == X86_FEATURE_POPCNT,
        });
        ok += 1;
    }
    t.summary
        .push(format!("alternatives: {ok} ({bad} unresolved, {layout})"));
}

/// `.return_sites` and `.retpoline_sites`: arrays of `s32` self-relative addresses of the
/// branches objtool found to the return thunk and the retpoline thunks (written by objtool's
/// create_return_sites_sections()/create_retpoline_sites_sections(), read by
/// apply_returns()/apply_retpolines() in arch/x86/kernel/alternative.c).
fn sites(image: &Image<'_>, insns: &Insns, t: &mut Tables, name: &str, flag: u8) {
    let Some((base, bytes)) = image
        .table(name)
        .or_else(|| image.table(&format!(".{name}")))
    else {
        return;
    };
    let (mut ok, mut bad) = (0, 0);
    for (i, e) in bytes.chunks_exact(4).enumerate() {
        let addr = rel(base + 4 * i as u64, s32(e, 0));
        match insns.at(addr) {
            Some(id) if matches!(insns.get(id).kind, Kind::Jump | Kind::JumpCond | Kind::Call) => {
                t.marks.push((id, flag));
                ok += 1;
            }
            _ => bad += 1,
        }
    }
    t.summary.push(format!("{name}: {ok} ({bad} unresolved)"));
}

/// `struct bug_entry` (include/asm-generic/bug.h) with relative pointers: `s32 bug_addr_disp;
/// [s32 format_disp;] [s32 file_disp; u16 line;] u16 flags;`, padded to 4 bytes. The format
/// came to x86-64 after 6.12 (Debian's 7.2 has it): 16 bytes with CONFIG_DEBUG_BUGVERBOSE,
/// 12 without; before it 12 and 8. BUGFLAG_WARNING is bit 0. A WARN with arguments points
/// its entry at a call (to `__WARN_trap`), not at a ud2: those entries mark nothing.
fn bug_table(image: &Image<'_>, insns: &Insns, t: &mut Tables) {
    let Some((base, bytes)) = image.table("__bug_table") else {
        return;
    };
    // The stride: the shortest under which the first entries all point at instructions
    // (read at a wrong one, some fields read as addresses are the format's or the file's and
    // point at strings), or, where none does (entries for code not decoded), the one under
    // which the most point at ud2s.
    let sample = |stride: usize| {
        if bytes.is_empty() || bytes.len() % stride != 0 {
            return (false, 0);
        }
        let (mut all, mut ud2) = (true, 0);
        for (i, e) in bytes.chunks_exact(stride).enumerate().take(64) {
            match insns.at(rel(base + (stride * i) as u64, s32(e, 0))) {
                Some(id) => ud2 += usize::from(insns.get(id).kind == Kind::Ud2),
                None => all = false,
            }
        }
        (all, ud2)
    };
    let strides = [8, 12, 16].map(|s| (s, sample(s)));
    let stride = strides
        .iter()
        .find(|(_, (all, _))| *all)
        .or_else(|| strides.iter().rev().max_by_key(|(_, (_, ud2))| *ud2))
        .map_or(8, |&(s, _)| s);
    // The flags end the entry, except in the 12-byte entry with a format and no file, where
    // padding follows them: there the last two bytes are zero in every entry, where before
    // they held the flags of every WARN.
    let flags_at = if stride == 12 && bytes.chunks_exact(12).all(|e| e[10] == 0 && e[11] == 0) {
        8
    } else {
        stride - 2
    };
    let (mut warn, mut bug, mut bad) = (0, 0, 0);
    for (i, e) in bytes.chunks_exact(stride).enumerate() {
        let addr = rel(base + (stride * i) as u64, s32(e, 0));
        let flags = u16::from_le_bytes([e[flags_at], e[flags_at + 1]]);
        match insns.at(addr) {
            Some(id) if insns.get(id).kind == Kind::Ud2 => {
                if flags & 1 != 0 {
                    t.marks.push((id, WARN_UD2));
                    warn += 1;
                } else {
                    bug += 1;
                }
            }
            _ => bad += 1,
        }
    }
    t.summary.push(format!(
        "bug table: {warn} warnings, {bug} bugs ({bad} unresolved)"
    ));
}

/// `.orc_unwind_ip` (s32 self-relative addresses) and `.orc_unwind` (6-byte `struct orc_entry`:
/// `s16 sp_offset; s16 bp_offset;` then `sp_reg:4, bp_reg:4, type:2, end:1` before Linux 6.4, or
/// `sp_reg:4, bp_reg:4, type:3, signal:1` from 6.4, which also added `.orc_header`).
fn orc(image: &Image<'_>) -> Option<Orc> {
    let (ip_base, ip_bytes) = image
        .table("orc_unwind_ip")
        .or_else(|| image.table(".orc_unwind_ip"))?;
    let (_, entry_bytes) = image
        .table("orc_unwind")
        .or_else(|| image.table(".orc_unwind"))?;
    let n = ip_bytes.len() / 4;
    if n == 0 || entry_bytes.len() < n * 6 {
        return None;
    }
    let v3 = image.section_by_name(".orc_header").is_some();
    let renumbered = v3 && renumbered(&entry_bytes[..6 * n]);
    let reg = |r: u16| {
        let r = (r & 0xf) as u8;
        if renumbered {
            RENUMBERED[r as usize]
        } else {
            r
        }
    };
    let ip_at = |i: usize| rel(ip_base + 4 * i as u64, s32(ip_bytes, 4 * i));
    let entry_at = |i: usize| {
        let e = &entry_bytes[6 * i..6 * i + 6];
        let bits = u16::from_le_bytes([e[4], e[5]]);
        let (sp_reg, bp_reg) = (reg(bits), reg(bits >> 4));
        let (kind, signal) = if v3 {
            let k = match (bits >> 8) & 7 {
                0 => OrcType::Undefined,
                1 => OrcType::EndOfStack,
                2 => OrcType::Call,
                3 => OrcType::Regs,
                _ => OrcType::RegsPartial,
            };
            (k, bits >> 11 & 1 != 0)
        } else {
            let k = match (bits >> 8) & 3 {
                0 => OrcType::Call,
                1 => OrcType::Regs,
                _ => OrcType::RegsPartial,
            };
            // Before 6.4 an undefined entry is a CALL entry with sp_reg UNDEFINED, and
            // `end` marks the end of the stack.
            let k = match (k, sp_reg, bits >> 10 & 1 != 0) {
                (_, _, true) => OrcType::EndOfStack,
                (OrcType::Call, orc_reg::UNDEFINED, _) => OrcType::Undefined,
                (k, _, _) => k,
            };
            (k, matches!(k, OrcType::Regs | OrcType::RegsPartial))
        };
        OrcEntry {
            sp_offset: i16::from_le_bytes([e[0], e[1]]),
            bp_offset: i16::from_le_bytes([e[2], e[3]]),
            sp_reg,
            bp_reg,
            kind,
            signal,
        }
    };
    // The build sorts the table (scripts/sorttable), so it is read straight into place, in
    // parallel; an unsorted one is sorted here, keeping entries with their addresses.
    let (ips, entries) = sorted_by_address(
        (0..n).into_par_iter().map(ip_at).collect(),
        (0..n).into_par_iter().map(entry_at).collect(),
    );
    let layout = match (v3, renumbered) {
        (false, _) => "v2",
        (true, false) => "v3",
        (true, true) => "v3, registers renumbered",
    };
    Some(Orc::new(ips, entries, layout))
}

/// Whether a 6.4+ table (`type:3`) numbers its base registers the later way ([`RENUMBERED`]).
/// The commonest entry in any kernel is a function's entry state, a call-type entry with the
/// CFA at rsp+8: its base register is SP, 5 in the earlier numbering and 3 in the later one,
/// where 3 was DI, a base only entry code's register frames use (`type=regs`, never at
/// offset 8). A sample of the table decides, the way more of its call-type entries at offset 8
/// go.
fn renumbered(entries: &[u8]) -> bool {
    const CALL: u16 = 2;
    let n = entries.len() / 6;
    let step = (n / 8192).max(1);
    let (mut sp3, mut sp5) = (0usize, 0usize);
    for e in entries.chunks_exact(6).step_by(step) {
        let bits = u16::from_le_bytes([e[4], e[5]]);
        if i16::from_le_bytes([e[0], e[1]]) != 8 || (bits >> 8) & 7 != CALL {
            continue;
        }
        match bits & 0xf {
            3 => sp3 += 1,
            5 => sp5 += 1,
            _ => {}
        }
    }
    sp3 > sp5
}

/// ORC entries ordered by address, entries with equal addresses kept in table order.
fn sorted_by_address(ips: Vec<u64>, entries: Vec<OrcEntry>) -> (Vec<u64>, Vec<OrcEntry>) {
    if ips.is_sorted() {
        return (ips, entries);
    }
    let mut order: Vec<usize> = (0..ips.len()).collect();
    order.sort_by_key(|&i| ips[i]);
    order.iter().map(|&i| (ips[i], entries[i])).unzip()
}

fn kernel_at_least(image: &Image<'_>, major: u32, minor: u32) -> bool {
    let Some(rel) = image.kernel_release() else {
        return true;
    };
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (ma, mi) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_maps_keep_every_entry() {
        let part = |pairs: &[(InsnId, InsnId)]| -> HashMap<InsnId, Vec<InsnId>> {
            pairs.iter().map(|&(k, v)| (k, vec![v])).collect()
        };
        let add = |m: &mut HashMap<InsnId, Vec<InsnId>>, k, v: Vec<InsnId>| {
            m.entry(k).or_default().extend(v)
        };
        let mut merged = HashMap::default();
        absorb(&mut merged, part(&[(1, 10), (2, 20)]), add);
        absorb(&mut merged, part(&[(2, 21), (3, 30)]), add);
        absorb(&mut merged, HashMap::default(), add);
        let mut got: Vec<_> = merged.into_iter().collect();
        got.sort();
        assert_eq!(got, [(1, vec![10]), (2, vec![20, 21]), (3, vec![30])]);
    }

    #[test]
    fn nearby_lookups_agree_with_a_full_search() {
        let small: Vec<u64> = vec![0x100, 0x104, 0x110, 0x111, 0x200];
        check_nearby(small, (0xf0..0x210).collect());
        // Far jumps both ways from every hint, across a larger table.
        let big: Vec<u64> = (0..300u64).map(|k| 0x1000 + k * 0x10 + (k % 3)).collect();
        let mut x = 12345u64;
        let addrs: Vec<u64> = (0..400)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                0xff0 + (x >> 33) % 0x1300
            })
            .collect();
        check_nearby(big, addrs);
        // Blocks wider than the entries' spacing, entries sharing an address, an empty table.
        check_nearby(
            vec![0x1000, 0x1000, 0x1001, 0x9000, 0x9000, 0x100000],
            (0xff0..0x1010).collect(),
        );
        let empty = Orc::new(Vec::new(), Vec::new(), "v3");
        assert_eq!(empty.lookup(0x1000), None);
    }

    /// A table whose block index is built in several parallel stretches.
    #[test]
    fn lookups_in_a_large_table_agree_with_a_full_search() {
        let mut x = 99u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut ip = 0xffff_ffff_8100_0000u64;
        let ips: Vec<u64> = (0..100_000)
            .map(|_| {
                // Mostly a few bytes apart, now and then a hole of up to 64 KB.
                ip += if next() % 50 == 0 {
                    next() % 65536
                } else {
                    next() % 24
                };
                ip
            })
            .collect();
        let entries = ips
            .iter()
            .map(|&ip| entry(OrcType::Call, ip as i16))
            .collect();
        let orc = Orc::new(ips, entries, "v3");
        assert!(orc.index.blocks() > 3 << 14, "several stretches");
        let (lo, hi) = (orc.ips[0] - 100, orc.ips[orc.ips.len() - 1] + 100);
        for _ in 0..200_000 {
            let addr = lo + next() % (hi - lo);
            assert_eq!(orc.lookup(addr), full_search(&orc, addr), "{addr:#x}");
        }
    }

    /// An entry of `kind`, told apart from others by its `sp_offset`.
    fn entry(kind: OrcType, sp_offset: i16) -> OrcEntry {
        OrcEntry {
            sp_offset,
            bp_offset: 0,
            sp_reg: 0,
            bp_reg: 0,
            kind,
            signal: false,
        }
    }

    #[test]
    fn unsorted_tables_are_sorted_keeping_pairs() {
        let e = |sp_offset: i16| entry(OrcType::Call, sp_offset);
        let (ips, entries) = sorted_by_address(vec![30, 10, 20, 10], vec![e(3), e(1), e(2), e(4)]);
        assert_eq!(ips, [10, 10, 20, 30]);
        assert_eq!(entries, [e(1), e(4), e(2), e(3)]);
        let (ips, entries) = sorted_by_address(vec![1, 2], vec![e(1), e(2)]);
        assert_eq!((ips, entries), (vec![1, 2], vec![e(1), e(2)]));
    }

    #[test]
    fn undefined_over_needs_every_entry_in_range_undefined() {
        let e = |kind: OrcType| entry(kind, 0);
        let (u, c) = (OrcType::Undefined, OrcType::Call);
        let orc = Orc::new(
            vec![0x10, 0x20, 0x30, 0x40, 0x50],
            vec![e(u), e(OrcType::EndOfStack), e(c), e(u), e(u)],
            "v3",
        );
        assert!(
            !orc.undefined_over(0x08, 0x12),
            "no entry in force at the start"
        );
        assert!(orc.undefined_over(0x10, 0x30));
        assert!(orc.undefined_over(0x18, 0x21));
        assert!(!orc.undefined_over(0x18, 0x31), "a call entry inside");
        assert!(!orc.undefined_over(0x30, 0x38), "a call entry in force");
        assert!(
            !orc.undefined_over(0x38, 0x48),
            "a call entry in force at the start"
        );
        assert!(orc.undefined_over(0x40, 0x1000));
    }

    /// [`Orc::lookup`] by a binary search of the whole table, without the block index.
    fn full_search(orc: &Orc, addr: u64) -> Option<(u64, &OrcEntry)> {
        let i = orc.ips.partition_point(|&ip| ip <= addr);
        (i > 0).then(|| (orc.ips[i - 1], &orc.entries[i - 1]))
    }

    fn check_nearby(ips: Vec<u64>, addrs: Vec<u64>) {
        let entries = ips
            .iter()
            .map(|&ip| entry(OrcType::Call, ip as i16))
            .collect();
        let orc = Orc::new(ips, entries, "v3");
        // The block index against a search of the whole table, around every entry too.
        let around = orc
            .ips
            .iter()
            .flat_map(|&ip| [ip.saturating_sub(1), ip, ip + 1]);
        for addr in addrs.iter().copied().chain(around).chain([0, u64::MAX]) {
            assert_eq!(orc.lookup(addr), full_search(&orc, addr), "{addr:#x}");
        }
        for start in 0..orc.ips.len() + 3 {
            let mut hint = start;
            // Forward, backward and jumping around, from every starting hint.
            let first = addrs[0];
            for &addr in addrs.iter().chain(addrs.iter().rev()).chain([&first]) {
                assert_eq!(
                    orc.lookup_near(addr, &mut hint),
                    orc.lookup(addr),
                    "{addr:#x}"
                );
            }
        }
    }
}

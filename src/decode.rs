//! Decoding: every executable byte of the image is decoded once into a compact [`Insn`]: its
//! length, what kind of control flow it is, the resolved target of a direct branch, and the one
//! stack-pointer effect ([`StackOp`]) the stack-state walk needs. iced-x86 decodes whatever the
//! simple forms of `quick` do not (about one in forty of a kernel's instructions, among
//! them every one that names the stack pointer as a register); the two agree wherever both
//! apply, which the tests show.
//!
//! Sections are cut at the boundaries of top-level symbols so that a stray byte of data in one place cannot shift
//! the instruction stream of the next function, and the pieces are decoded in parallel. A byte
//! sequence that does not decode becomes a one-byte [`Kind::Invalid`] and decoding resumes at
//! the next byte; whether that matters is for the checks to say.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind as IcedOp, Register,
};
use rayon::prelude::*;

use crate::image::{Image, SymKind};

mod quick;

/// Dense index of an instruction in [`Insns::list`].
pub type InsnId = u32;

/// `Insn::target_id` of an instruction with no resolved target.
pub const NO_INSN: InsnId = InsnId::MAX;

/// The order groups the kinds that the hottest tests ask for, so that each is one range check:
/// those that only go on to the next instruction ([`crate::graph::goes_on`]) first, with
/// `Other` at 0 (an all-zero [`Insn`] is a valid one); then the direct branches
/// ([`Insn::is_branch`]), followed by the two other kinds the side lists keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Other,
    Nop,
    /// `mov table(,%idx,8), %reg`: a load that may feed an indirect jump through a switch table.
    TableLoad,
    Int3,
    Halt,
    /// 64-bit iretq: a context switch, except sync_core()'s iret-to-self inside a function.
    Iretq,
    Call,
    Jump,
    JumpCond,
    Return,
    JumpIndirect,
    CallIndirect,
    /// syscall, sysret, sysenter, sysexit, 32-bit iret, far return: kernel entry or exit.
    ContextSwitch,
    Ud2,
    /// `ljmp`: a jump to another code segment (real mode, 32-bit code): it never comes back.
    FarJump,
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpKind {
    None,
    /// Push of something other than a general register (immediate, memory, flags, segment).
    Push,
    PushReg,
    /// Pop into something other than a general register.
    Pop,
    PopReg,
    /// `add/sub $imm, %rsp` or `lea imm(%rsp), %rsp`: rsp += imm.
    AddSp,
    /// `and $imm, %rsp`: stack realignment.
    AndSp,
    /// `mov %rsp, %reg`.
    MovSpTo,
    /// `mov %reg, %rsp`.
    MovToSp,
    /// `lea imm(%base), %rsp`.
    LeaSpFrom,
    /// `lea imm(%rsp), %reg`.
    LeaFromSp,
    /// `mov %reg, imm(%base)` with base rsp or rbp: a register saved on the stack.
    Store,
    /// `mov imm(%base), %reg` with base rsp or rbp: a register restored from the stack.
    Load,
    Leave,
    /// `enter $imm, $0`.
    Enter,
    /// `mov mem, %rsp`: a switch to another stack laid out like this one (`__switch_to_asm`).
    LoadSp,
    /// `add/sub %reg, %rsp`: a variable-sized allocation.
    AddSpReg,
    /// Any other write to rsp.
    UnknownSp,
}

/// General registers in x86 encoding order.
pub mod reg {
    pub const AX: u8 = 0;
    pub const CX: u8 = 1;
    pub const DX: u8 = 2;
    pub const BX: u8 = 3;
    pub const SP: u8 = 4;
    pub const BP: u8 = 5;
    pub const SI: u8 = 6;
    pub const DI: u8 = 7;
    pub const R12: u8 = 12;
    pub const R15: u8 = 15;
    pub const NONE: u8 = 0xff;
    pub const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    pub fn name(r: u8) -> &'static str {
        NAMES.get(r as usize).copied().unwrap_or("?")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackOp {
    pub kind: OpKind,
    pub reg: u8,
    pub base: u8,
    pub imm: i32,
}

impl StackOp {
    pub const NONE: StackOp = StackOp {
        kind: OpKind::None,
        reg: reg::NONE,
        base: reg::NONE,
        imm: 0,
    };
    fn new(kind: OpKind, reg: u8, base: u8, imm: i64) -> Self {
        StackOp {
            kind,
            reg,
            base,
            imm: imm.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        }
    }
}

/// One decoded instruction in 16 bytes (a whole kernel has millions: every byte here is
/// megabytes to fill and to read back). A direct branch has no stack effect, so its target
/// shares a field with a stack operation's immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// The address, sign-extended from 32 bits: an x86-64 kernel is linked in the top 2 GiB
    /// of the address space (`-mcmodel=kernel`), and [`Image::parse`] refuses code elsewhere
    /// (below 2 GiB, where test programs live, fits too). See [`fits_addr`].
    addr32: i32,
    /// A direct branch's target instruction once decoding has resolved it ([`NO_INSN`] when
    /// none starts there), and its target minus its end before; for an indirect jump or
    /// [`Kind::TableLoad`] through `disp(,%idx,8)`, the table's address (a sign-extended
    /// 32-bit displacement); otherwise the stack operation's immediate.
    data: u32,
    pub len: u8,
    pub kind: Kind,
    op_kind: OpKind,
    op_reg: u8,
    op_base: u8,
    /// For a direct branch to a function's entry, that function plus one (24 bits, little
    /// endian), noted once the functions are known ([`Insn::set_callee`]); otherwise 0. The
    /// walks resolve most calls from it without reading the target's owner, a cache miss
    /// each. It fills what would be padding.
    callee: [u8; 3],
}

const _: () = assert!(std::mem::size_of::<Insn>() == 16);

/// Whether `addr` can be an instruction's address: a 32-bit value sign-extended, which every
/// x86-64 kernel address is (`-mcmodel=kernel` links the kernel in the top 2 GiB).
pub fn fits_addr(addr: u64) -> bool {
    addr as i64 == addr as i32 as i64
}

impl Insn {
    /// `target`: a direct branch's target or a table's address (see the `data` field). `addr`
    /// must [`fits_addr`].
    pub fn new(addr: u64, len: u8, kind: Kind, target: u64, op: StackOp) -> Insn {
        debug_assert!(fits_addr(addr), "instruction address {addr:#x}");
        let mut insn = Insn {
            addr32: addr as i32,
            data: op.imm as u32,
            len,
            kind,
            op_kind: op.kind,
            op_reg: op.reg,
            op_base: op.base,
            callee: [0; 3],
        };
        if insn.is_branch() || matches!(kind, Kind::JumpIndirect | Kind::TableLoad) {
            // They have no stack effect: the field is theirs.
            debug_assert_eq!(op.kind, OpKind::None);
        }
        if insn.is_branch() {
            let rel = target.wrapping_sub(insn.end()) as i64;
            match i32::try_from(rel) {
                Ok(rel) => insn.data = rel as u32,
                // A near branch always reaches within 2 GiB; anything else is not followed.
                _ => {
                    insn.data = 0;
                    insn.kind = match kind {
                        Kind::Call => Kind::CallIndirect,
                        _ => Kind::JumpIndirect,
                    }
                }
            }
        } else if matches!(kind, Kind::JumpIndirect | Kind::TableLoad) {
            // The CPU sign-extends a 32-bit displacement; one that does not round-trip is not
            // a table address we can read.
            insn.data = i32::try_from(target as i64).unwrap_or(0) as u32;
        }
        insn
    }

    pub fn addr(&self) -> u64 {
        self.addr32 as i64 as u64
    }

    pub fn end(&self) -> u64 {
        self.addr() + self.len as u64
    }

    /// How many machine instructions this entry is: one, or each byte of a run of int3 fill
    /// or of nop padding (see [`INT3_RUN`], [`NOP_PADDING`]).
    pub fn stands_for(&self) -> u64 {
        match self.kind {
            Kind::Int3 => self.len as u64,
            Kind::Nop if self.len as usize >= NOP_PADDING => self.len as u64,
            _ => 1,
        }
    }

    pub fn is_branch(&self) -> bool {
        matches!(self.kind, Kind::Jump | Kind::JumpCond | Kind::Call)
    }

    /// A direct branch's target address, before decoding resolves it (and overwrites it with
    /// the target instruction: [`Insn::target_id`]).
    fn unresolved_target(&self) -> u64 {
        debug_assert!(self.is_branch());
        self.end().wrapping_add(self.data as i32 as i64 as u64)
    }

    /// For an indirect jump or [`Kind::TableLoad`] through `disp(,%idx,8)`, the table's
    /// address; otherwise 0.
    pub fn table(&self) -> u64 {
        if matches!(self.kind, Kind::JumpIndirect | Kind::TableLoad) {
            self.data as i32 as i64 as u64
        } else {
            0
        }
    }

    /// The instruction a direct branch lands on, or [`NO_INSN`].
    pub fn target_id(&self) -> InsnId {
        if self.is_branch() {
            self.data
        } else {
            NO_INSN
        }
    }

    /// The function whose entry this direct branch lands on, if noted.
    pub fn callee(&self) -> Option<u32> {
        let [a, b, c] = self.callee;
        u32::from_le_bytes([a, b, c, 0]).checked_sub(1)
    }

    /// Notes that this direct branch lands on function `f`'s entry; false (and nothing noted)
    /// when `f` does not fit in 24 bits.
    pub fn set_callee(&mut self, f: u32) -> bool {
        debug_assert!(self.is_branch());
        let [a, b, c, d] = (f.wrapping_add(1)).to_le_bytes();
        if d != 0 || f == u32::MAX {
            return false;
        }
        self.callee = [a, b, c];
        true
    }

    fn set_target_id(&mut self, id: InsnId) {
        debug_assert!(self.is_branch());
        self.data = id;
    }

    /// The instruction's one stack-pointer effect.
    pub fn op(&self) -> StackOp {
        StackOp {
            kind: self.op_kind,
            reg: self.op_reg,
            base: self.op_base,
            // A branch's or a table's field is not an immediate; they have no stack effect.
            imm: if self.op_kind == OpKind::None {
                0
            } else {
                self.data as i32
            },
        }
    }
}

/// The instruction array. A whole image's instructions (200+ MB for a distribution kernel) live
/// in one anonymous mapping with transparent huge pages requested, so filling it costs a few
/// hundred page faults rather than tens of thousands; small lists (tests) are plain vectors.
pub struct InsnList {
    storage: Storage,
    /// The first slot, found once: the list is read at every step of every walk, and a view
    /// through `storage` would be a branch and an offset each time. Neither a vector that is
    /// only truncated nor a mapping remapped in place moves its memory.
    first: std::ptr::NonNull<Insn>,
    len: usize,
}

// SAFETY: the list owns its memory as a `Vec` does (the pointer is into `storage`, which no
// one else can reach), so it moves between and is shared by threads as a `Vec<Insn>` is.
unsafe impl Send for InsnList {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for InsnList {}

enum Storage {
    Vec(Vec<Insn>),
    /// The slots start `start` bytes into the mapping, on a huge-page boundary.
    Map {
        map: memmap2::MmapMut,
        start: usize,
    },
}

/// The transparent huge page size on x86-64: the list starts on such a boundary, so that its
/// first 2 MB can be a huge page too.
const HUGE_PAGE: usize = 2 << 20;

/// An all-zero `Insn` is a valid one (kind `Other`, no stack effect), which is what lets a
/// zero-filled mapping be viewed as a slice of them.
const ZERO: Insn = Insn {
    addr32: 0,
    data: 0,
    len: 0,
    kind: Kind::Other,
    op_kind: OpKind::None,
    op_reg: 0,
    op_base: 0,
    callee: [0; 3],
};

impl InsnList {
    pub fn from_vec(mut v: Vec<Insn>) -> Self {
        InsnList {
            len: v.len(),
            first: std::ptr::NonNull::new(v.as_mut_ptr()).expect("a vector's pointer is not null"),
            storage: Storage::Vec(v),
        }
    }

    /// `cap` zeroed slots, the first on a huge-page boundary, all in view (`len == cap`)
    /// until [`InsnList::truncate`].
    fn zeroed(cap: usize) -> Self {
        let bytes = cap * std::mem::size_of::<Insn>() + HUGE_PAGE;
        match (cap > 0)
            .then(|| memmap2::MmapMut::map_anon(bytes))
            .and_then(Result::ok)
        {
            Some(mut map) => {
                // Only a request: without transparent huge pages it is the same mapping.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                let start =
                    (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
                // SAFETY: `start` is less than HUGE_PAGE, which the mapping has in excess.
                let first = unsafe { map.as_mut_ptr().add(start) }.cast::<Insn>();
                InsnList {
                    first: std::ptr::NonNull::new(first).expect("a mapping is not at address 0"),
                    storage: Storage::Map { map, start },
                    len: cap,
                }
            }
            None => InsnList::from_vec(vec![ZERO; cap]),
        }
    }

    /// Keeps the first `len` instructions and gives the memory after them back.
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        match &mut self.storage {
            Storage::Vec(v) => v.truncate(len),
            Storage::Map { map, start } => {
                let keep = *start + (self.len * std::mem::size_of::<Insn>()).max(1);
                // Shrinking in place always succeeds on Linux; if it does not, the tail merely
                // stays mapped.
                #[cfg(target_os = "linux")]
                // SAFETY: nothing borrows the mapping (we hold it mutably) and the kept prefix
                // does not move.
                let _ = unsafe { map.remap(keep, memmap2::RemapOptions::new()) };
                #[cfg(not(target_os = "linux"))]
                let _ = (map, keep);
            }
        }
    }
}

impl std::ops::Deref for InsnList {
    type Target = [Insn];
    fn deref(&self) -> &[Insn] {
        // SAFETY: `first` points into `storage` (a vector, or a page-aligned mapping), which
        // holds at least `len` Insns, every one written or zero (a valid Insn), and lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.first.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for InsnList {
    fn deref_mut(&mut self) -> &mut [Insn] {
        // SAFETY: as for `deref`, with the borrow of `self` exclusive (and `first` derived
        // from a mutable pointer to the storage).
        unsafe { std::slice::from_raw_parts_mut(self.first.as_ptr(), self.len) }
    }
}

/// Every decoded instruction of the image, sorted by address.
pub struct Insns {
    pub list: InsnList,
    pub bytes: u64,
    /// How many machine instructions the list stands for: an entry for a run of int3 fill
    /// counts each of its bytes (see [`INT3_RUN`]).
    pub count: u64,
    index: AddrIndex,
    /// Every direct call, as (call, target or [`NO_INSN`]), in address order.
    pub calls: Vec<(InsnId, InsnId)>,
    /// Every direct jump, conditional or not, as (jump, target or [`NO_INSN`]).
    pub jumps: Vec<(InsnId, InsnId)>,
    /// Every return instruction.
    pub returns: Vec<InsnId>,
    /// Every indirect jump.
    pub indirect_jumps: Vec<InsnId>,
}

/// Finds instructions by address without searching the whole list: for every block of
/// `1 << shift` bytes from `lo`, the first instruction at or after the block's start. A lookup
/// searches only the few instructions of one block (a binary search over 200+ MB of
/// instructions costs a cache miss per step, and checks look up hundreds of thousands of
/// addresses).
///
/// An instruction list's index with blocks of 64 bytes also has a word per block with a bit
/// for each byte an instruction starts at: a lookup then counts the bits below the address
/// instead of searching the block's instructions (a few cache lines of the list each), and
/// knows whether an instruction starts there without reading the list at all.
#[derive(Default)]
pub(crate) struct AddrIndex {
    lo: u64,
    shift: u32,
    /// One entry per block, and one more: the list's length.
    first: Vec<InsnId>,
    /// Per block of 64 bytes ([`STARTS_SHIFT`]), the bytes entries start at; empty if the
    /// blocks are larger or the entries' addresses may repeat.
    starts: Vec<u64>,
}

/// The block shift with which an instruction index has start bits: one bit per byte.
const STARTS_SHIFT: u32 = 6;

impl AddrIndex {
    /// The index of sorted addresses `keys`, in blocks of `1 << shift` bytes from the first,
    /// built in parallel stretches of blocks (the ORC table's addresses use it too).
    pub(crate) fn over(keys: &[u64], shift: u32) -> AddrIndex {
        let (Some(&lo), Some(&hi)) = (keys.first(), keys.last()) else {
            return AddrIndex {
                first: vec![0],
                ..AddrIndex::default()
            };
        };
        let blocks = ((hi - lo) >> shift) as usize + 1;
        let mut first = vec![0; blocks + 1];
        const CHUNK: usize = 1 << 14;
        first
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, slots)| {
                let start = |b: usize| lo + ((b as u64) << shift);
                let mut i = keys.partition_point(|&k| k < start(c * CHUNK));
                for (k, slot) in slots.iter_mut().enumerate() {
                    let at = start(c * CHUNK + k);
                    while i < keys.len() && keys[i] < at {
                        i += 1;
                    }
                    *slot = i as InsnId;
                }
            });
        AddrIndex {
            lo,
            shift,
            first,
            starts: Vec::new(),
        }
    }

    /// How many blocks the index has.
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> usize {
        self.first.len() - 1
    }

    /// Blocks of 64 bytes (about 30 instructions), larger if the code spans so much address
    /// space that the index would pass 8M entries.
    fn shift_for(span: u64) -> u32 {
        let mut shift = 6;
        while span >> shift >= 1 << 23 {
            shift += 1;
        }
        shift
    }

    fn build(list: &[Insn]) -> AddrIndex {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        let (Some(first), Some(last)) = (list.first(), list.last()) else {
            return AddrIndex {
                first: vec![0],
                ..AddrIndex::default()
            };
        };
        let lo = first.addr();
        let span = last.addr() - lo;
        let shift = Self::shift_for(span);
        let blocks = (span >> shift) as usize + 1;
        let block = |addr: u64| ((addr - lo) >> shift) as usize;
        let out = zeroed_u32s(blocks + 1);
        let starts = start_bits(shift, blocks);
        const CHUNK: usize = 1 << 16;
        list.par_chunks(CHUNK).enumerate().for_each(|(c, chunk)| {
            let base = c * CHUNK;
            let prev = base.checked_sub(1).map(|p| block(list[p].addr()));
            index_blocks(&out, &starts, lo, shift, prev, chunk, base);
        });
        out[blocks].store(list.len() as InsnId, Ordering::Relaxed);
        AddrIndex {
            lo,
            shift,
            first: out.into_iter().map(AtomicU32::into_inner).collect(),
            starts: starts.into_iter().map(AtomicU64::into_inner).collect(),
        }
    }

    /// The instructions `a..b` that can start at `addr`'s block; all before `a` start below
    /// `addr`, all from `b` on above it.
    pub(crate) fn candidates(&self, addr: u64) -> (usize, usize) {
        let blocks = self.first.len() - 1;
        let end = self.first[blocks] as usize;
        if addr < self.lo {
            return (0, 0);
        }
        let b = ((addr - self.lo) >> self.shift) as usize;
        if b >= blocks {
            return (end, end);
        }
        (self.first[b] as usize, self.first[b + 1] as usize)
    }

    /// With start bits: the index of the first entry at or after `addr`, and whether one
    /// starts exactly there.
    #[inline]
    fn by_bits(&self, addr: u64) -> Option<(usize, bool)> {
        if self.starts.is_empty() {
            return None;
        }
        let Some(d) = addr.checked_sub(self.lo) else {
            return Some((0, false));
        };
        let b = (d >> STARTS_SHIFT) as usize;
        let Some(&bits) = self.starts.get(b) else {
            return Some((self.first[self.first.len() - 1] as usize, false));
        };
        let off = d & 63;
        let below = (bits & ((1u64 << off) - 1)).count_ones() as usize;
        Some((self.first[b] as usize + below, bits >> off & 1 != 0))
    }
}

/// Zeroed start bits for an instruction index of `blocks` blocks, if its blocks have one bit
/// per byte.
fn start_bits(shift: u32, blocks: usize) -> Vec<std::sync::atomic::AtomicU64> {
    zeroed_u64s(if shift == STARTS_SHIFT { blocks } else { 0 })
}

/// `n` atomic zeros, in memory the system hands out already cleared ([`vec!`] of zeros), rather
/// than written one by one: an index's blocks are written once more by whichever worker fills
/// them, and on a fresh mapping a page no block of which is written (the address gap between
/// the kernel's `.text` and `.init.text`) is never faulted in at all.
fn zeroed_u32s(n: usize) -> Vec<std::sync::atomic::AtomicU32> {
    let mut v = std::mem::ManuallyDrop::new(vec![0u32; n]);
    // SAFETY: an AtomicU32 has the same size, alignment and bit validity as a u32; the
    // allocation passes whole (pointer, length and capacity) from one vector to the other.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// [`zeroed_u32s`] of 64-bit atomics.
pub(crate) fn zeroed_u64s(n: usize) -> Vec<std::sync::atomic::AtomicU64> {
    let mut v = std::mem::ManuallyDrop::new(vec![0u64; n]);
    // SAFETY: an AtomicU64 has the same size, alignment and bit validity as a u64; the
    // allocation passes whole (pointer, length and capacity) from one vector to the other.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// A side list's target while decoding: a direct branch out of the batch being decoded,
/// resolved against the whole list once every batch is in place.
const RESOLVE_LATER: InsnId = NO_INSN - 1;

/// In a batch's marks ([`decode_batch`]), set on a direct branch whose target lies outside
/// the batch: the branch still holds its target address (see [`Insn::unresolved_target`]),
/// not an index, until [`Insns::resolve_later`].
const LATER: u32 = 1 << 31;

impl Insns {
    /// Takes an address-sorted list and resolves every direct branch's target once.
    pub fn new(list: Vec<Insn>, bytes: u64) -> Insns {
        assert!(list.len() < LATER as usize, "too many instructions");
        let mut sides = Sides::default();
        let marks = list.iter().enumerate().filter(|(_, i)| Sides::wanted(i));
        sides.collect(
            &list,
            marks.map(|(k, i)| k as u32 | if i.is_branch() { LATER } else { 0 }),
            0,
        );
        let later = sides.later;
        let count = list.iter().map(Insn::stands_for).sum();
        let list = InsnList::from_vec(list);
        let index = AddrIndex::build(&list);
        let mut insns = Insns {
            list,
            bytes,
            count,
            index,
            calls: sides.calls,
            jumps: sides.jumps,
            returns: sides.returns,
            indirect_jumps: sides.indirect_jumps,
        };
        insns.resolve_later(later);
        insns
    }

    /// Resolves the branches marked [`RESOLVE_LATER`] against the whole list: `later` holds,
    /// for the calls and for the jumps, their targets and their positions in the side list.
    fn resolve_later(&mut self, later: [Vec<(u32, u32)>; 2]) {
        let mut calls = std::mem::take(&mut self.calls);
        let mut jumps = std::mem::take(&mut self.jumps);
        let [later_calls, later_jumps] = later;
        // The calls and the jumps side by side (each may have a serial sort).
        let (found_calls, found_jumps) = rayon::join(
            || self.resolve_side(&mut calls, later_calls),
            || self.resolve_side(&mut jumps, later_jumps),
        );
        // Written back in parallel, each stretch of the list taking its own branches.
        const CHUNK: usize = 1 << 16;
        self.list
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let lo = (c * CHUNK) as InsnId;
                let hi = lo + chunk.len() as InsnId;
                for found in [&found_calls, &found_jumps] {
                    let a = found.partition_point(|e| e.0 < lo);
                    let b = found.partition_point(|e| e.0 < hi);
                    for &(from, to) in &found[a..b] {
                        chunk[(from - lo) as usize].set_target_id(to);
                    }
                }
            });
        self.calls = calls;
        self.jumps = jumps;
    }

    /// Resolves the targets `want` (see [`Sides::later`]) of one side list's branches, in
    /// `side`; returns those (branch, target) pairs in the side list's order, which is the
    /// branches'.
    fn resolve_side(
        &self,
        side: &mut [(InsnId, InsnId)],
        want: Vec<(u32, u32)>,
    ) -> Vec<(InsnId, InsnId)> {
        let open: Vec<u32> = want.iter().map(|w| w.1 & !NOWHERE).collect();
        let addr = |&(t, k): &(u32, u32)| (k & NOWHERE == 0).then_some(t as i32 as i64 as u64);
        if !self.index.starts.is_empty() {
            // A lookup reads two small arrays: in any order, and no sort first (which took
            // about a third of this step).
            let ids: Vec<InsnId> = want
                .par_iter()
                .with_min_len(4096)
                .map(|w| addr(w).and_then(|a| self.at(a)).unwrap_or(NO_INSN))
                .collect();
            for (&(_, k), &to) in want.iter().zip(&ids) {
                side[(k & !NOWHERE) as usize].1 = to;
            }
        } else {
            // A lookup searches the list: looked up in address order, the searches walk the
            // list forwards, and the many calls to one function find it in cache.
            let mut want: Vec<(u64, u32)> =
                want.iter().filter_map(|w| Some((addr(w)?, w.1))).collect();
            sort_by_address(&mut want);
            // Many branches share a target (a kernel has a tenth as many distinct targets):
            // sorted, they come together, and each stretch looks a target up once.
            let mut ids: Vec<InsnId> = vec![NO_INSN; want.len()];
            ids.par_chunks_mut(4096)
                .zip(want.par_chunks(4096))
                .for_each(|(ids, want)| {
                    let mut last = None;
                    for (id, &(t, _)) in ids.iter_mut().zip(want) {
                        *id = match last {
                            Some((lt, lid)) if lt == t => lid,
                            _ => self.at(t).unwrap_or(NO_INSN),
                        };
                        last = Some((t, *id));
                    }
                });
            for &k in &open {
                side[k as usize].1 = NO_INSN;
            }
            for (&(_, k), &to) in want.iter().zip(&ids) {
                side[k as usize].1 = to;
            }
        }
        open.iter().map(|&k| side[k as usize]).collect()
    }

    /// The instruction a direct branch at `id` lands on.
    pub fn target(&self, id: InsnId) -> Option<InsnId> {
        let t = self.list[id as usize].target_id();
        (t != NO_INSN).then_some(t)
    }

    /// The instruction starting exactly at `addr`.
    pub fn at(&self, addr: u64) -> Option<InsnId> {
        let (id, hit) = self.lower_bound_at(addr);
        hit.then_some(id)
    }

    /// [`Insns::lower_bound`], and whether that instruction starts exactly at `addr`: with
    /// start bits, without reading the list (a cache miss per lookup).
    pub fn lower_bound_at(&self, addr: u64) -> (InsnId, bool) {
        if let Some((id, hit)) = self.index.by_bits(addr) {
            return (id as InsnId, hit);
        }
        let id = self.lower_bound(addr);
        let hit = self.list.get(id as usize).is_some_and(|i| i.addr() == addr);
        (id, hit)
    }

    /// The first instruction at or after `addr`.
    pub fn lower_bound(&self, addr: u64) -> InsnId {
        if let Some((id, _)) = self.index.by_bits(addr) {
            return id as InsnId;
        }
        let (a, b) = self.index.candidates(addr);
        (a + self.list[a..b].partition_point(|i| i.addr() < addr)) as InsnId
    }

    pub fn get(&self, id: InsnId) -> &Insn {
        &self.list[id as usize]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The byte ranges of the image to decode, sorted by address: every executable section, cut
/// at the starts and ends of top-level symbols so that a stray byte of data in one place cannot
/// shift the instruction stream of the next function.
pub fn pieces<'data>(image: &Image<'data>) -> Vec<(u64, &'data [u8])> {
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for (si, sec) in image.sections.iter().enumerate() {
        if !sec.exec || sec.data.is_empty() {
            continue;
        }
        // Cut at symbols that are not inside a function: a symbol inside one (an alias, an
        // inner label) must agree with the function's own instruction stream, and one that
        // does not is for the checks to report, not for the decoder to paper over.
        let sec_end = sec.addr + sec.data.len() as u64;
        let mut cuts = vec![sec.addr];
        let mut covered_to = 0u64;
        // Symbols are sorted by address: only those in the section's range can be in it.
        let lo = image.symbols.partition_point(|s| s.addr < sec.addr);
        let hi = image
            .symbols
            .partition_point(|s| s.addr <= sec.addr + sec.data.len() as u64);
        for s in image.symbols[lo..hi]
            .iter()
            .filter(|s| s.section as usize == si && s.kind != SymKind::Object)
        {
            if s.addr >= covered_to {
                cuts.push(s.addr);
            }
            if s.kind == SymKind::Func && s.size > 0 {
                let end = s.addr.saturating_add(s.size);
                if s.addr >= covered_to {
                    cuts.push(end);
                }
                covered_to = covered_to.max(end);
            }
        }
        cuts.retain(|&a| a < sec_end);
        cuts.push(sec_end);
        // Already in order: symbols come sorted by address, and each cut lies at or past the
        // ones before it (a symbol is cut at only when it starts at or past the end of every
        // function before it). Sorting anyway took a distribution kernel 1.4 ms on one core.
        if !cuts.is_sorted() {
            cuts.sort_unstable();
        }
        cuts.dedup();
        for w in cuts.windows(2) {
            let (lo, hi) = ((w[0] - sec.addr) as usize, (w[1] - sec.addr) as usize);
            pieces.push((w[0], &sec.data[lo..hi]));
        }
    }
    pieces.sort_by_key(|p| p.0);
    pieces
}

/// Bytes of code per decoding batch: enough to amortise a task, small enough to balance.
pub const BATCH: usize = 128 * 1024;

/// Groups pieces into batches of at least `batch` bytes (the last may be smaller) for the
/// thread pool.
pub fn batches<'p, 'data>(
    pieces: &'p [(u64, &'data [u8])],
    batch: usize,
) -> Vec<&'p [(u64, &'data [u8])]> {
    let mut batches = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        acc += p.1.len();
        if acc >= batch {
            batches.push(&pieces[start..=i]);
            start = i + 1;
            acc = 0;
        }
    }
    if start < pieces.len() {
        batches.push(&pieces[start..]);
    }
    batches
}

/// Decodes every executable section of `image`.
///
/// Every worker thread takes the next batch, decodes it into its own scratch vector (resolving
/// the branches that stay inside the batch while its instructions are in cache), waits until
/// the batch before it has been placed, and copies its instructions right after them into the
/// one list. Decoding overlaps; only the short copies go one after another, in address order.
/// The branches that leave their batch are resolved at the end, against the whole list.
pub fn decode_image(image: &Image<'_>) -> Insns {
    decode_image_in(image, BATCH)
}

/// [`decode_image`] with batches of `batch` bytes; the result does not depend on it.
pub fn decode_image_in(image: &Image<'_>, batch: usize) -> Insns {
    use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    let pieces = pieces(image);
    let batches = batches(&pieces, batch);
    let bytes: usize = pieces.iter().map(|p| p.1.len()).sum();
    let mut sections: Vec<(u64, &[u8])> = image.exec_sections().map(|s| (s.addr, s.data)).collect();
    sections.sort_unstable_by_key(|s| s.0);
    crate::lap("decode: pieces");

    // An instruction takes at least a byte: `bytes` slots always suffice. Only the ones
    // written are ever touched, so the rest costs address space, not memory.
    let mut list = InsnList::zeroed(bytes);
    let slots = Slots(list.as_mut_ptr(), list.len());
    let lo = pieces.first().map_or(0, |p| p.0);
    let hi = pieces.last().map_or(0, |p| p.0 + p.1.len() as u64);
    let shift = AddrIndex::shift_for(hi.saturating_sub(lo));
    let blocks = (hi.saturating_sub(lo) >> shift) as usize + 1;
    let index = zeroed_u32s(blocks + 1);
    let starts = start_bits(shift, blocks);
    let block = |addr: u64| addr.checked_sub(lo).map(|d| (d >> shift) as usize);
    let next = AtomicUsize::new(0);
    let queue = std::sync::Mutex::new(Queue::default());
    // Scratch lists of batches placed by another worker, for reuse.
    let spare: std::sync::Mutex<Vec<Decoded>> = std::sync::Mutex::new(Vec::new());
    // Each piece's instructions start inside it, in increasing order: when no piece overlaps
    // the next, the whole list is in order. (Overlapping executable sections: no real kernel
    // has them, but an input may; such a list is sorted once decoded.)
    let sorted = pieces
        .windows(2)
        .all(|w| w[0].0 + w[0].1.len() as u64 <= w[1].0);
    let batch_sides: Vec<std::sync::OnceLock<Sides>> = (0..batches.len())
        .map(|_| std::sync::OnceLock::new())
        .collect();
    // A batch this much larger than the others (one piece with no symbol to cut it: 2 MB of
    // zeros decodes as a million instructions) is decoded straight into the list once its
    // place is known, rather than into a scratch vector as large as itself.
    let big = batch.saturating_mul(4);
    let folded = AtomicU64::new(0);
    // What placing a batch at `start` leaves to do once its instructions are in the list:
    // the side lists (their ids depend on `start`) and the block index.
    let finish = |b: usize,
                  start: usize,
                  prev_last: Option<u64>,
                  placed: &[Insn],
                  marks: &[u32],
                  sides: &mut Sides| {
        if placed.is_empty() {
            let _ = batch_sides[b].set(Sides::default());
            return;
        }
        sides.clear();
        sides.collect(placed, marks.iter().copied(), start as InsnId);
        // A clone has no spare capacity: the worker's lists keep theirs for the next batch.
        let _ = batch_sides[b].set(sides.clone());
        index_blocks(
            &index,
            &starts,
            lo,
            shift,
            prev_last.and_then(block),
            placed,
            start,
        );
    };
    rayon::broadcast(|_| {
        let mut starts = Starts::new(big);
        let mut sides = Sides::default();
        // Batches this worker took from the queue to place: (batch, start, previous last).
        let mut ready: Vec<(Decoded, usize, Option<u64>)> = Vec::new();
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            let Some(batch) = batches.get(b) else { break };
            let direct = batch.iter().map(|p| p.1.len()).sum::<usize>() > big;
            if direct {
                // Its turn comes when every batch before it has a place.
                let (start, prev_last) = loop {
                    let q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    if q.next == b {
                        break (q.start, q.last);
                    }
                    drop(q);
                    std::thread::yield_now();
                };
                let mut marks = Vec::new();
                let (n, more) =
                    decode_batch(batch, &sections, &mut marks, &mut starts, |k, insn| {
                        // SAFETY: slots from `start` belong to batch b alone until it is committed
                        // (below); no batch after it gets a place before.
                        unsafe { slots.write(start + k, insn) }
                    });
                folded.fetch_add(more, Ordering::Relaxed);
                // SAFETY: as above; the slots were all written just now.
                let here = unsafe { slots.slice_mut(start, n) };
                resolve_local(here, &mut marks, &starts);
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                q.advance(here);
                q.take_ready(&mut ready);
                drop(q);
                // The side lists record targets still batch-local: before `rebase`.
                finish(b, start, prev_last, here, &marks, &mut sides);
                rebase(here, &marks, start);
            } else {
                let mut d = spare
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop()
                    .unwrap_or_default();
                d.batch = b;
                d.insns.clear();
                d.marks.clear();
                let (_, more) =
                    decode_batch(batch, &sections, &mut d.marks, &mut starts, |_, insn| {
                        d.insns.push(insn)
                    });
                folded.fetch_add(more, Ordering::Relaxed);
                resolve_local(&mut d.insns, &mut d.marks, &starts);
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                q.parked.push(d);
                q.take_ready(&mut ready);
            }
            // Place the batches taken, each in the range the queue gave it.
            for (mut d, start, prev_last) in ready.drain(..) {
                finish(d.batch, start, prev_last, &d.insns, &d.marks, &mut sides);
                // SAFETY: [start, start + len) lies within the list (one slot per byte at
                // most) and no other thread writes there: the queue gave it to this batch
                // alone, between the end of the batch before and the start of the next.
                unsafe { slots.place(start, &mut d.insns, &d.marks) };
                spare.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            }
        }
    });
    let len = queue.into_inner().unwrap_or_else(|e| e.into_inner()).start;
    list.truncate(len);
    crate::lap("decode: batches");

    if !sorted {
        let mut v = list.to_vec();
        v.sort_by_key(|i| i.addr());
        v.dedup_by_key(|i| i.addr());
        return Insns::new(v, bytes as u64);
    }
    // Blocks after the last instruction's: none start at or after them.
    let tail = list
        .last()
        .and_then(|l| block(l.addr()))
        .map_or(0, |b| b + 1);
    for slot in &index[tail.min(blocks)..] {
        slot.store(len as InsnId, Ordering::Relaxed);
    }
    let index = AddrIndex {
        lo,
        shift,
        first: index.into_iter().map(AtomicU32::into_inner).collect(),
        starts: starts.into_iter().map(AtomicU64::into_inner).collect(),
    };
    let parts: Vec<Sides> = batch_sides
        .into_iter()
        .filter_map(std::sync::OnceLock::into_inner)
        .collect();
    let sides = Sides::concat(&parts);
    drop(parts);
    let mut insns = Insns {
        count: len as u64 + folded.into_inner(),
        list,
        bytes: bytes as u64,
        index,
        calls: sides.calls,
        jumps: sides.jumps,
        returns: sides.returns,
        indirect_jumps: sides.indirect_jumps,
    };
    insns.resolve_later(sides.later);
    crate::lap("decode: resolve");
    insns
}

/// A batch decoded into a scratch list, waiting for its place.
#[derive(Default)]
struct Decoded {
    batch: usize,
    insns: Vec<Insn>,
    /// Indexes of the instructions [`Sides`] keeps (and of every one with a target).
    marks: Vec<u32>,
}

/// Which batch gets its place in the list next, and where. A worker that decodes a batch
/// before the ones ahead of it are placed parks it here and goes on with the next batch
/// instead of waiting; whoever parks or commits the batch a parked one follows takes it along.
#[derive(Default)]
struct Queue {
    /// The next batch to place, where it starts, and the address of the last instruction
    /// placed before it.
    next: usize,
    start: usize,
    last: Option<u64>,
    parked: Vec<Decoded>,
}

impl Queue {
    /// Gives every parked batch whose turn has come its place, moving it to `ready`.
    fn take_ready(&mut self, ready: &mut Vec<(Decoded, usize, Option<u64>)>) {
        while let Some(i) = self.parked.iter().position(|d| d.batch == self.next) {
            let d = self.parked.swap_remove(i);
            let (start, prev_last) = (self.start, self.last);
            self.advance(&d.insns);
            ready.push((d, start, prev_last));
        }
    }

    /// Gives the next batch, `placed`, its place: the one after it comes next.
    fn advance(&mut self, placed: &[Insn]) {
        self.start += placed.len();
        self.last = placed.last().map(|l| l.addr()).or(self.last);
        self.next += 1;
    }
}

/// Decodes one batch's pieces, handing each instruction to `put` with its index in the batch
/// and noting in `marks` the indexes of those [`Sides`] keeps. Returns how many instructions
/// were handed over and how many more machine instructions they stand for (see [`INT3_RUN`]).
fn decode_batch<'d>(
    batch: &[(u64, &'d [u8])],
    sections: &[(u64, &'d [u8])],
    marks: &mut Vec<u32>,
    starts: &mut Starts,
    mut put: impl FnMut(usize, Insn),
) -> (usize, u64) {
    let (mut n, mut folded) = (0, 0);
    // An instruction takes a byte at least: indexes stay clear of the flag.
    assert!(batch.iter().map(|p| p.1.len()).sum::<usize>() < LATER as usize);
    starts.reset(batch);
    let mut iced = Iced::default();
    let mut emit = |insn: Insn| {
        if Sides::wanted(&insn) {
            marks.push(n as u32);
        }
        starts.note(insn.addr(), n);
        put(n, insn);
        n += 1;
    };
    for &(addr, code) in batch {
        if nop_padding(code) {
            folded += fold(addr, code.len(), Kind::Nop, &mut emit);
            continue;
        }
        let (data, start) = enclosing(sections, addr, code);
        folded += decode_with(addr, data, start, code.len(), &mut iced, &mut emit);
    }
    (n, folded)
}

/// Whether a piece is padding of one-byte nops to keep folded (see [`NOP_PADDING`]).
fn nop_padding(code: &[u8]) -> bool {
    code.len() >= NOP_PADDING && code.iter().all(|&b| b == 0x90)
}

/// Emits the `len` bytes at `addr`, all one one-byte instruction of kind `kind` (int3 or nop),
/// as one entry per 255 bytes; returns how many more instructions they are than entries.
fn fold(addr: u64, len: usize, kind: Kind, emit: &mut impl FnMut(Insn)) -> u64 {
    let (mut pos, mut entries) = (0, 0);
    while pos < len {
        let left = len - pos;
        let mut n = left.min(u8::MAX as usize);
        // Every entry of folded nops is longer than an instruction can be, so that its length
        // tells it from a single (multi-byte) nop (`Insn::stands_for`): the last two entries
        // share what is left past the 255s.
        if kind == Kind::Nop && left > n && left - n < NOP_PADDING {
            n = left - NOP_PADDING;
        }
        emit(Insn::new(
            addr + pos as u64,
            n as u8,
            kind,
            0,
            StackOp::NONE,
        ));
        pos += n;
        entries += 1;
    }
    (len - entries) as u64
}

/// The section of `sections` (sorted by address) that `code`, at `addr`, was cut from, and
/// where in it `code` starts; `code` itself (at 0) if none holds it.
fn enclosing<'d>(sections: &[(u64, &'d [u8])], addr: u64, code: &'d [u8]) -> (&'d [u8], usize) {
    let i = sections.partition_point(|s| s.0 <= addr);
    if let Some(&(at, data)) = i.checked_sub(1).and_then(|i| sections.get(i)) {
        let start = (addr - at) as usize;
        // The same bytes, not just the same addresses: sections may overlap in address.
        if data.get(start..start + code.len()).map(<[u8]>::as_ptr) == Some(code.as_ptr()) {
            return (data, start);
        }
    }
    (code, 0)
}

/// iced-x86's decoder, kept from piece to piece over the bytes of their section: making one
/// copies a few hundred bytes of state, and a kernel has some 85 thousand pieces (one each was
/// half a percent of the instructions a check executed).
#[derive(Default)]
struct Iced<'d> {
    decoder: Option<Decoder<'d>>,
    over: Option<&'d [u8]>,
}

impl<'d> Iced<'d> {
    /// The decoder over `data`, made if it is over other bytes.
    fn over(&mut self, data: &'d [u8]) -> &mut Decoder<'d> {
        if self.over.is_none_or(|o| !std::ptr::eq(o, data)) {
            self.over = Some(data);
            self.decoder = None;
        }
        self.decoder
            .get_or_insert_with(|| Decoder::with_ip(64, data, 0, DecoderOptions::NONE))
    }
}

/// The instructions of interest to whole-image scans, kept aside so those scans need not read
/// every instruction: direct calls and jumps as (branch, target) pairs, returns and indirect
/// jumps.
#[derive(Clone, Default)]
struct Sides {
    calls: Vec<(InsnId, InsnId)>,
    jumps: Vec<(InsnId, InsnId)>,
    returns: Vec<InsnId>,
    indirect_jumps: Vec<InsnId>,
    /// The calls' and the jumps' targets still to resolve ([`RESOLVE_LATER`]): the address
    /// (its low 32 bits: an instruction's address is their sign extension, see [`fits_addr`])
    /// and the position in `calls` or `jumps`, noted while the branch is in cache; the
    /// position has [`NOWHERE`] set when the target cannot be an instruction's address.
    later: [Vec<(u32, u32)>; 2],
}

/// See [`Sides::later`].
const NOWHERE: u32 = 1 << 31;

impl Sides {
    /// The batches' lists one after another (positions in `later` moved along), copied in
    /// parallel: hundreds of thousands of entries, too many to append on one thread.
    fn concat(parts: &[Sides]) -> Sides {
        let starts = |len: &dyn Fn(&Sides) -> usize| -> Vec<u32> {
            let mut at = 0;
            parts
                .iter()
                .map(|p| {
                    let s = at;
                    at += len(p) as u32;
                    s
                })
                .collect()
        };
        let (call_at, jump_at) = (starts(&|p| p.calls.len()), starts(&|p| p.jumps.len()));
        Sides {
            calls: crate::concat_par(parts, |p| &p.calls, |_, e| e),
            jumps: crate::concat_par(parts, |p| &p.jumps, |_, e| e),
            returns: crate::concat_par(parts, |p| &p.returns, |_, e| e),
            indirect_jumps: crate::concat_par(parts, |p| &p.indirect_jumps, |_, e| e),
            later: [
                crate::concat_par(parts, |p| &p.later[0], |i, (t, k)| (t, k + call_at[i])),
                crate::concat_par(parts, |p| &p.later[1], |i, (t, k)| (t, k + jump_at[i])),
            ],
        }
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.jumps.clear();
        self.returns.clear();
        self.indirect_jumps.clear();
        self.later.iter_mut().for_each(Vec::clear);
    }

    /// Whether an instruction belongs in one of the lists.
    fn wanted(i: &Insn) -> bool {
        matches!(
            i.kind,
            Kind::Call | Kind::Jump | Kind::JumpCond | Kind::Return | Kind::JumpIndirect
        )
    }

    /// Records the branches and returns among `list[which]` (marks: indexes, with [`LATER`]
    /// on a branch still holding its target's address), where `list` starts at instruction
    /// `base` and resolved targets are indexes into it.
    fn collect(&mut self, list: &[Insn], which: impl Iterator<Item = u32>, base: InsnId) {
        for m in which {
            let k = (m & !LATER) as usize;
            let i = &list[k];
            let id = base + k as InsnId;
            let to = match i.target_id() {
                _ if m & LATER != 0 => RESOLVE_LATER,
                NO_INSN => NO_INSN,
                t => t + base,
            };
            let (side, later) = match i.kind {
                Kind::Call => (&mut self.calls, &mut self.later[0]),
                Kind::Jump | Kind::JumpCond => (&mut self.jumps, &mut self.later[1]),
                Kind::Return => {
                    self.returns.push(id);
                    continue;
                }
                Kind::JumpIndirect => {
                    self.indirect_jumps.push(id);
                    continue;
                }
                _ => continue,
            };
            if to == RESOLVE_LATER {
                let (t, k) = (i.unresolved_target(), side.len() as u32);
                later.push(if fits_addr(t) {
                    (t as u32, k)
                } else {
                    (0, k | NOWHERE)
                });
            }
            side.push((id, to));
        }
    }
}

/// Enters `insns`, list indexes `base..`, in a block index: each is the first instruction at
/// or after the starts of the blocks after the one of the instruction before it, up to its own
/// (`prev`: the block of the instruction before `insns[0]`, if any). `index` has one entry per
/// block (`1 << shift` bytes each from `lo`) and one more (the list's length, not written
/// here); each block is written by one
/// instruction, and an instruction outside the blocks writes none. Sets each instruction's
/// bit in `starts` (blocks `lo` + 64 bytes each), unless that is empty; a block's word is
/// shared with the batches before and after it, so it is or-ed in once per block.
fn index_blocks(
    index: &[std::sync::atomic::AtomicU32],
    starts: &[std::sync::atomic::AtomicU64],
    lo: u64,
    shift: u32,
    mut prev: Option<usize>,
    insns: &[Insn],
    base: usize,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let blocks = index.len().saturating_sub(1);
    // The block of the instruction before (none yet: `usize::MAX`), and its start bits not
    // yet or-ed in.
    let (mut cur, mut bits) = (usize::MAX, 0u64);
    for (k, insn) in insns.iter().enumerate() {
        let Some(d) = insn.addr().checked_sub(lo) else {
            continue;
        };
        let b = (d >> shift) as usize;
        if b == cur {
            // Most instructions share their block with the one before.
            bits |= 1 << (d & 63);
            continue;
        }
        if b >= blocks {
            continue;
        }
        if !starts.is_empty() && cur != usize::MAX {
            starts[cur].fetch_or(bits, Relaxed);
        }
        (cur, bits) = (b, 1 << (d & 63));
        if prev == Some(b) {
            continue;
        }
        let from = prev.map_or(0, |p| p + 1);
        for slot in index.get(from..=b).unwrap_or(&[]) {
            slot.store((base + k) as InsnId, Relaxed);
        }
        prev = Some(prev.map_or(b, |p| p.max(b)));
    }
    if !starts.is_empty() && cur != usize::MAX {
        starts[cur].fetch_or(bits, Relaxed);
    }
}

/// The list's slots, written by several threads at once, each to its own range.
struct Slots(*mut Insn, usize);

// SAFETY: `place`, `write` and `slice_mut` reach the slots through the pointer, each caller
// in a range it alone owns (see their safety sections).
unsafe impl Sync for Slots {}

impl Slots {
    /// Copies a batch's instructions to `start..`, turning the batch-local targets of
    /// `branches` (every instruction with one is among them) into list indexes.
    ///
    /// # Safety
    /// No other thread touches `start..start + batch.len()`.
    unsafe fn place(&self, start: usize, batch: &mut [Insn], branches: &[u32]) {
        assert!(
            start + batch.len() <= self.1,
            "more instructions than bytes"
        );
        // Rebased in the scratch list, still in cache, rather than in the list after the copy.
        rebase(batch, branches, start);
        // SAFETY: in bounds (checked above) and exclusive (the caller's promise).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.0.add(start), batch.len()) };
        copy_streaming(dst, batch);
    }

    /// Writes one instruction to slot `i`.
    ///
    /// # Safety
    /// No other thread touches slot `i`.
    unsafe fn write(&self, i: usize, insn: Insn) {
        assert!(i < self.1, "more instructions than bytes");
        // SAFETY: in bounds (checked above) and exclusive (the caller's promise).
        unsafe { self.0.add(i).write(insn) };
    }

    /// Slots `start..start + n`, written.
    ///
    /// # Safety
    /// They were all written, and no other thread touches them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, start: usize, n: usize) -> &mut [Insn] {
        assert!(start + n <= self.1, "more instructions than bytes");
        // SAFETY: in bounds (checked above), initialised and exclusive (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), n) }
    }
}

/// `dst.copy_from_slice(src)` with streaming stores where the processor has them: the list is
/// fresh memory, tens of megabytes, far larger than any cache and read again only by later
/// phases. An ordinary store first reads the line it writes into the cache (read for
/// ownership), then evicts it; a streaming store writes whole lines straight to memory. The
/// decoding step's CPU time fell by 5–8% on Debian's 6.1 (measured).
fn copy_streaming(dst: &mut [Insn], src: &[Insn]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const _: () = assert!(std::mem::size_of::<Insn>() == 16);
        let (s, d) = (
            src.as_ptr().cast::<__m128i>(),
            dst.as_mut_ptr().cast::<__m128i>(),
        );
        // The list's slots are 16-byte aligned (it starts on a page), as a streaming store
        // needs; a vector's need not be.
        if d.is_aligned() {
            for i in 0..src.len() {
                // SAFETY: `i` is in bounds of both slices, of 16-byte elements with no padding;
                // `d` is aligned (checked above), `s` need not be (an unaligned load); SSE2 is
                // part of every x86-64 processor.
                unsafe { _mm_stream_si128(d.add(i), _mm_loadu_si128(s.add(i))) };
            }
            // Streaming stores are weakly ordered: made visible before the list is read
            // elsewhere (the batch's commit and the end of decoding synchronise after this).
            // SAFETY: SSE is part of every x86-64 processor.
            unsafe { _mm_sfence() };
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// Turns the batch-local targets of `branches` (every instruction with one is among them, as
/// marks: see [`LATER`]) in a batch placed at `start` into list indexes.
fn rebase(batch: &mut [Insn], branches: &[u32], start: usize) {
    for &m in branches.iter().filter(|&&m| m & LATER == 0) {
        let d = &mut batch[m as usize];
        if d.target_id() != NO_INSN {
            d.set_target_id(d.target_id() + start as InsnId);
        }
    }
}

/// Sorts (address, position) pairs by address, then position: by radix when the addresses
/// span less than 4 GiB (four passes of a byte over their offsets from the lowest), which is
/// several times faster than comparing for the few hundred thousand branches of a kernel.
fn sort_by_address(v: &mut Vec<(u64, u32)>) {
    let Some(lo) = v.iter().map(|e| e.0).min() else {
        return;
    };
    let hi = v.iter().map(|e| e.0).max().unwrap_or(lo);
    if hi - lo > u32::MAX as u64 {
        v.sort_unstable();
        return;
    }
    // Positions are unique and the input is in position order, so a stable sort by address
    // alone gives the order by (address, position).
    let mut from = std::mem::take(v);
    let mut to = vec![(0, 0); from.len()];
    for shift in [0, 8, 16, 24] {
        let digit = |e: &(u64, u32)| ((e.0 - lo) >> shift) as usize & 0xff;
        let mut starts = [0usize; 257];
        for e in &from {
            starts[digit(e) + 1] += 1;
        }
        if starts[1..].contains(&from.len()) {
            continue; // one digit value throughout: the pass changes nothing
        }
        for d in 0..256 {
            starts[d + 1] += starts[d];
        }
        for e in &from {
            let d = digit(e);
            to[starts[d]] = *e;
            starts[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *v = from;
}

/// Where the instructions of the batch being decoded start: at each byte offset from the
/// batch's first address, the batch index of the instruction starting there, so that a branch
/// inside the batch finds its target with one read. Slots between instruction starts keep
/// whatever earlier batches left (clearing would cost more than the lookups): a hit counts
/// only when the instruction found starts at the address looked up.
struct Starts {
    lo: u64,
    slots: Vec<u32>,
    /// The widest batch the slots cover (four bytes of slot per byte of code): the size above
    /// which a batch is one of the few huge pieces decoded straight into the list, mostly
    /// without branches, where a search costs less than filling megabytes of slots.
    max_span: usize,
    /// Whether this batch uses the slots: not when its pieces span far more addresses than
    /// they have bytes (sections far apart) or more than `max_span`, where a search is used
    /// instead.
    on: bool,
}

impl Starts {
    fn new(max_span: usize) -> Starts {
        Starts {
            lo: 0,
            slots: Vec::new(),
            max_span,
            on: false,
        }
    }

    fn reset(&mut self, batch: &[(u64, &[u8])]) {
        let Some(first) = batch.first() else {
            self.on = false;
            return;
        };
        // The furthest end, not the last piece's: pieces of overlapping sections may nest.
        let end = batch.iter().map(|p| p.0 + p.1.len() as u64).max();
        let span = end.unwrap_or(first.0).saturating_sub(first.0) as usize;
        let bytes: usize = batch.iter().map(|p| p.1.len()).sum();
        self.on = span <= bytes.saturating_mul(2) && span <= self.max_span;
        if self.on && self.slots.len() < span {
            self.slots.resize(span, u32::MAX);
        }
        self.lo = first.0;
    }

    fn note(&mut self, addr: u64, k: usize) {
        if self.on {
            self.slots[(addr - self.lo) as usize] = k as u32;
        }
    }

    /// The index in `batch` of the instruction at `addr`, which lies in the batch's range;
    /// `from`: the branch's index, where a search starts.
    fn find(&self, batch: &[Insn], from: usize, addr: u64) -> Option<usize> {
        if !self.on {
            return search_near(batch, from, addr);
        }
        let k = self.slots[(addr - self.lo) as usize] as usize;
        (batch.get(k).is_some_and(|i| i.addr() == addr)).then_some(k)
    }
}

/// Resolves the direct branches among `marked` instructions of one batch whose targets lie
/// inside the batch's address range, to batch-local indexes; the others are marked
/// [`LATER`] and keep their targets' addresses.
fn resolve_local(batch: &mut [Insn], marked: &mut [u32], starts: &Starts) {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return;
    };
    let (lo, hi) = (first.addr(), last.end());
    for m in marked.iter_mut() {
        let k = *m as usize;
        let insn = batch[k];
        if !insn.is_branch() {
            continue;
        }
        let target = insn.unresolved_target();
        if target >= lo && target < hi {
            let id = starts
                .find(batch, k, target)
                .map_or(NO_INSN, |n| n as InsnId);
            batch[k].set_target_id(id);
        } else {
            *m |= LATER;
        }
    }
}

/// The instruction of `list` at `addr`, searched outward from `from` in doubling steps and
/// then by bisection: a few probes for a nearby address.
fn search_near(list: &[Insn], from: usize, addr: u64) -> Option<usize> {
    let (mut lo, mut hi) = (from, from + 1);
    let mut step = 1;
    if list[from].addr() < addr {
        // Widen upward until list[hi - 1] >= addr.
        while hi < list.len() && list[hi - 1].addr() < addr {
            lo = hi;
            hi = (from + step + 1).min(list.len());
            step *= 2;
        }
    } else {
        // Widen downward until list[lo] <= addr.
        while lo > 0 && list[lo].addr() > addr {
            hi = lo + 1;
            lo = from.saturating_sub(step);
            step *= 2;
        }
    }
    list[lo..hi]
        .binary_search_by_key(&addr, |x| x.addr())
        .ok()
        .map(|i| lo + i)
}

/// How many int3 bytes (`0xcc`) `bytes` starts with: eight at a time through linker fill (4 M
/// bytes of Debian's 6.1), then one by one.
fn int3_run(bytes: &[u8]) -> usize {
    const FILL: u64 = u64::from_ne_bytes([0xcc; 8]);
    let words = bytes.chunks_exact(8);
    let mut n = 8 * words
        .take_while(|w| u64::from_ne_bytes((*w).try_into().unwrap_or_default()) == FILL)
        .count();
    n += bytes[n..].iter().take_while(|&&b| b == 0xcc).count();
    n
}

/// Decodes `bytes`, which live at `addr`, appending to `out`. The direct branches in `out` are
/// not resolved (their targets are displacements until [`Insns::new`] takes the list).
pub fn decode_into(addr: u64, bytes: &[u8], out: &mut Vec<Insn>) {
    decode_with(addr, bytes, 0, bytes.len(), &mut Iced::default(), |insn| {
        out.push(insn)
    });
}

/// A run of at least this many int3 bytes is kept as one [`Kind::Int3`] entry per 255 bytes
/// rather than one per byte. The linker fills the gaps between the kernel's sections and
/// alignment holes with int3 (`:text =0xcccc`; SRSO's alias placement alone leaves ~2 MB): on
/// Debian's 6.1 that is 4 M of its 6.8 M instructions. The entry means exactly what the bytes
/// do (int3 is one byte with no prefix; a walk goes through it as through each int3), and no
/// code has a reason to branch into the middle of linker fill (a target there resolves to no
/// instruction and is reported as a bad destination). Shorter runs, such as the int3 after a
/// return or an indirect jump, stay one entry per byte.
pub const INT3_RUN: usize = 16;

/// A piece (see [`pieces`]) of at least this many one-byte nops (`0x90`) and nothing else is
/// kept as one [`Kind::Nop`] entry per 255 bytes, as int3 fill is ([`INT3_RUN`]). With
/// `CONFIG_CALL_PADDING` (6.2 on) every function is preceded by 16 of them, under a
/// `__pfx_` symbol of its own or in the gap the linker left: Debian's 6.12 had 4.04 M entries,
/// 3.31 M with these folded. Only whole pieces: pieces are cut at every symbol outside a
/// function and at functions' ends, so such a piece is padding between functions (or a whole
/// function of nothing but nops), never nops among a function's other code (an alternative's
/// padding, say, where entries of the ORC table may fall between the bytes), and nothing
/// branches into its middle; the entry means exactly what the bytes do (a walk goes through it
/// as through each nop).
pub const NOP_PADDING: usize = 16;
const _: () = assert!(NOP_PADDING > quick::MAX_LEN);

/// Decodes `data[start..start + len]`, which lives at `addr`, handing each instruction to
/// `emit` in order; an instruction that would run past `len` bytes is undecodable, as if
/// `data` ended there (`iced`'s decoder reads `data` whole: see [`Iced`]). Returns how many
/// more instructions there are than entries emitted (see [`INT3_RUN`]).
fn decode_with<'d>(
    addr: u64,
    data: &'d [u8],
    start: usize,
    len: usize,
    iced: &mut Iced<'d>,
    mut emit: impl FnMut(Insn),
) -> u64 {
    let classes = classes();
    let bytes = &data[start..start + len];
    let mut ins = Instruction::default();
    let mut pos = 0usize;
    let mut folded = 0u64;
    // The end of the last run of int3 found too short to fold: not scanned again.
    let mut short_run_end = 0usize;
    // Whether bytes were decoded without iced-x86's decoder (or skipped) since it last
    // decoded here: it must be moved to `pos` before it decodes again.
    let mut behind = true;
    while pos < bytes.len() {
        if bytes[pos] == 0xcc && pos >= short_run_end {
            let run = int3_run(&bytes[pos..]);
            if run >= INT3_RUN {
                folded += fold(addr + pos as u64, run, Kind::Int3, &mut emit);
                pos += run;
                behind = true;
                continue;
            }
            short_run_end = pos + run;
        }
        if let Some(insn) = quick::decode(&bytes[pos..], addr + pos as u64) {
            debug_assert_eq!(Some(insn), decode_one(&bytes[pos..], addr + pos as u64));
            emit(insn);
            pos += insn.len as usize;
            behind = true;
            continue;
        }
        // `ud2; .ascii "xen"` / `"kvm"` is the hypervisors' forced-emulation prefix
        // (XEN_EMULATE_PREFIX, __KVM_EMULATE_PREFIX): the hypervisor traps it, emulates the
        // instruction that follows and continues. It is one five-byte prefix, not a trap.
        // Undecodable bytes become a one-byte `Invalid` and decoding resumes after them.
        let special = if bytes[pos] == 0x0f
            && matches!(
                bytes.get(pos + 1..pos + 5),
                Some([0x0b, b'x', b'e', b'n'] | [0x0b, b'k', b'v', b'm'])
            ) {
            Some((5, Kind::Other))
        } else {
            let decoder = iced.over(data);
            if behind {
                // `start + pos` is always inside `data`.
                let _ = decoder.set_position(start + pos);
                decoder.set_ip(addr + pos as u64);
                behind = false;
            }
            decoder.decode_out(&mut ins);
            // Reading on past the piece's end would not have decoded within it: iced-x86 gives
            // an instruction only when all its bytes are there.
            (ins.is_invalid() || ins.len() > bytes.len() - pos).then(|| {
                unknown_to_iced(&bytes[pos..]).map_or((1, Kind::Invalid), |len| (len, Kind::Other))
            })
        };
        let Some((len, kind)) = special else {
            emit(classify(classes, &ins));
            pos += ins.len();
            continue;
        };
        emit(Insn::new(addr + pos as u64, len, kind, 0, StackOp::NONE));
        pos += len as usize;
        behind = true;
    }
    folded
}

/// Instructions the kernel uses, and its own decoder (arch/x86/lib/x86-opcode-map.txt) and
/// objtool know, that this iced-x86 does not: the length of the one `code` starts with. All
/// are plain: no branch, no stack change.
fn unknown_to_iced(code: &[u8]) -> Option<u8> {
    const KNOWN: &[&[u8]] = &[
        // RMPREAD (AMD SEV-SNP, arch/x86/virt/svm/sev.c, after 6.12: `.byte 0xf2, 0x0f, 0x01,
        // 0xfd` until binutils 2.44 knows it).
        &[0xf2, 0x0f, 0x01, 0xfd],
    ];
    KNOWN
        .iter()
        .find(|k| code.starts_with(k))
        .map(|k| k.len() as u8)
}

/// Decodes every executable byte of `image` twice, instruction by instruction: with iced-x86
/// and classification, and with [`quick::decode`] wherever it takes the form. Returns how many
/// instructions it took and how many there are, or the address of the first where the two
/// disagree. For the tests on real kernels: a check uses whichever applies.
#[doc(hidden)]
pub fn compare_quick(image: &Image<'_>) -> Result<(u64, u64), u64> {
    let pieces = pieces(image);
    let counts = pieces.par_iter().map(|&(addr, code)| {
        let (mut taken, mut all, mut pos) = (0, 0, 0);
        while pos < code.len() {
            let at = addr + pos as u64;
            let full = decode_one(&code[pos..], at);
            match quick::decode(&code[pos..], at) {
                Some(q) if Some(q) != full => return Err(at),
                Some(_) => taken += 1,
                None => {}
            }
            all += 1;
            pos += full.map_or(1, |i| i.len as usize);
        }
        Ok((taken, all))
    });
    counts.try_reduce(|| (0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1)))
}

/// The first instruction of `code`, which lives at `addr`, decoded by iced-x86 and classified
/// (`None` if it does not decode): what [`quick::decode`] must agree with.
fn decode_one(code: &[u8], addr: u64) -> Option<Insn> {
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let ins = decoder.decode();
    (!ins.is_invalid()).then(|| classify(classes(), &ins))
}

fn gpr(r: Register) -> Option<u8> {
    let full = r.full_register();
    let n = match full {
        Register::RAX => 0,
        Register::RCX => 1,
        Register::RDX => 2,
        Register::RBX => 3,
        Register::RSP => 4,
        Register::RBP => 5,
        Register::RSI => 6,
        Register::RDI => 7,
        Register::R8 => 8,
        Register::R9 => 9,
        Register::R10 => 10,
        Register::R11 => 11,
        Register::R12 => 12,
        Register::R13 => 13,
        Register::R14 => 14,
        Register::R15 => 15,
        _ => return None,
    };
    Some(n)
}

fn is_gpr64(r: Register) -> bool {
    r.is_gpr64()
}

/// What an instruction's code alone says of it: looked up once per code, so that classifying an
/// instruction asks iced-x86 only about its operands.
#[derive(Clone, Copy)]
enum Class {
    /// [`Kind::Other`]: it neither branches nor is a mnemonic [`stack_op`] looks at, so at most
    /// it changes rsp in a way nothing models (when it names rsp as its destination).
    Plain,
    /// The kind its mnemonic or its flow control gives.
    Flow(Kind),
    /// [`Kind::Other`] (or [`Kind::TableLoad`]) with a mnemonic [`stack_op`] looks at.
    Stack(Mnemonic),
}

fn class_of(code: Code) -> Class {
    let m = code.mnemonic();
    let kind = match m {
        Mnemonic::Syscall
        | Mnemonic::Sysret
        | Mnemonic::Sysretq
        | Mnemonic::Sysenter
        | Mnemonic::Sysexit
        | Mnemonic::Sysexitq
        | Mnemonic::Iret
        | Mnemonic::Iretd
        | Mnemonic::Retf
        // FRED's return to user mode and to the kernel (after 6.12's entry_64_fred.S); objtool
        // takes them for sysret.
        | Mnemonic::Eretu
        | Mnemonic::Erets => Kind::ContextSwitch,
        Mnemonic::Iretq => Kind::Iretq,
        // ud0/ud1 trap like ud2; static-call trampolines end in ud1 as a signature.
        Mnemonic::Ud2 | Mnemonic::Ud1 | Mnemonic::Ud0 => Kind::Ud2,
        Mnemonic::Int3 => Kind::Int3,
        Mnemonic::Hlt => Kind::Halt,
        Mnemonic::Nop => Kind::Nop,
        _ => match code.flow_control() {
            FlowControl::Call => Kind::Call,
            FlowControl::IndirectCall => Kind::CallIndirect,
            FlowControl::UnconditionalBranch => Kind::Jump,
            FlowControl::IndirectBranch if code.is_jmp_far_indirect() => Kind::FarJump,
            FlowControl::IndirectBranch => Kind::JumpIndirect,
            FlowControl::ConditionalBranch => Kind::JumpCond,
            FlowControl::Return => Kind::Return,
            _ if stack_mnemonic(m) => return Class::Stack(m),
            _ => return Class::Plain,
        },
    };
    Class::Flow(kind)
}

/// The mnemonics that always move the stack pointer: push, pop, leave and enter.
fn moves_stack(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Push
            | Mnemonic::Pushf
            | Mnemonic::Pushfq
            | Mnemonic::Pop
            | Mnemonic::Popf
            | Mnemonic::Popfq
            | Mnemonic::Leave
            | Mnemonic::Enter
    )
}

/// The mnemonics [`stack_op`] treats by name.
fn stack_mnemonic(m: Mnemonic) -> bool {
    moves_stack(m)
        || matches!(
            m,
            Mnemonic::Add
                | Mnemonic::Sub
                | Mnemonic::And
                | Mnemonic::Lea
                | Mnemonic::Mov
                | Mnemonic::Cmp
                | Mnemonic::Test
                | Mnemonic::Bt
                | Mnemonic::Xchg
        )
}

/// [`class_of`] of every code, computed once.
fn classes() -> &'static [Class] {
    static CLASSES: std::sync::OnceLock<Box<[Class]>> = std::sync::OnceLock::new();
    CLASSES.get_or_init(|| Code::values().map(class_of).collect())
}

/// Turns one decoded instruction into its compact form; `classes` is [`classes`], which
/// decoding fetches once per piece rather than once per instruction.
#[inline(always)]
fn classify(classes: &[Class], ins: &Instruction) -> Insn {
    let mut target = 0;
    let mut op = StackOp::NONE;
    let mut kind = match classes[ins.code() as usize] {
        Class::Plain => {
            if ins.op_count() > 0
                && ins.op0_kind() == IcedOp::Register
                && ins.op0_register() == Register::RSP
            {
                op = StackOp::new(OpKind::UnknownSp, reg::NONE, reg::NONE, 0);
            }
            Kind::Other
        }
        Class::Stack(m) => {
            op = if touches_frame(ins, m) {
                stack_op(ins, m)
            } else {
                StackOp::NONE
            };
            debug_assert_eq!(op, stack_op(ins, m));
            if op.kind == OpKind::None && m == Mnemonic::Mov && ins.op0_kind() == IcedOp::Register {
                if let (Some(t), Some(r)) = (table_operand(ins, 1), gpr(ins.op0_register())) {
                    op.reg = r;
                    return Insn::new(ins.ip(), ins.len() as u8, Kind::TableLoad, t, op);
                }
            }
            Kind::Other
        }
        Class::Flow(kind) => kind,
    };
    match kind {
        Kind::Call | Kind::Jump | Kind::JumpCond => {
            if matches!(
                ins.op0_kind(),
                IcedOp::NearBranch64 | IcedOp::NearBranch32 | IcedOp::NearBranch16
            ) {
                target = ins.near_branch_target();
            } else {
                // Far branches: no target we can follow.
                kind = match kind {
                    Kind::Call => Kind::CallIndirect,
                    _ if ins.is_jmp_far() || ins.is_jmp_far_indirect() => Kind::FarJump,
                    _ => Kind::JumpIndirect,
                };
            }
        }
        Kind::JumpIndirect => {
            if let Some(t) = table_operand(ins, 0) {
                target = t;
            }
            if ins.op0_kind() == IcedOp::Register {
                op.reg = gpr(ins.op0_register()).unwrap_or(reg::NONE);
            }
        }
        Kind::Iretq => {
            // Modelled as the five-word pop it performs; see check::state.
            op = StackOp::new(OpKind::AddSp, reg::NONE, reg::NONE, 40);
        }
        Kind::Ud2 if is_warn_trap(ins) => kind = Kind::Other,
        _ => {}
    }
    Insn::new(ins.ip(), ins.len() as u8, kind, target, op)
}

/// `ud1 (%edx), %reg`: the kernel's WARN trap (`__WARN_trap`, arch/x86/entry/entry.S, after
/// 6.12). The #UD handler takes it for BUG_UD1_WARN (arch/x86/kernel/traps.c, decode_bug():
/// ud1, ModRM mod 0 with rm 2, whatever the prefixes), reports the warning whose bug entry %reg
/// points at and resumes at the next instruction; objtool is told with ANNOTATE_REACHABLE,
/// which does not survive the link. Any other ud1 still traps for good.
fn is_warn_trap(ins: &Instruction) -> bool {
    ins.mnemonic() == Mnemonic::Ud1
        && ins.op1_kind() == IcedOp::Memory
        && matches!(ins.memory_base(), Register::EDX | Register::RDX)
        && ins.memory_index() == Register::None
        && ins.memory_displ_size() == 0
}

/// Whether an instruction whose mnemonic is `m` (one [`stack_op`] looks at) can have a stack
/// effect: push, pop, leave and enter always; the others only when an operand is rsp or a
/// memory operand is based on rsp or rbp. Most of them (the movs, adds and leas of ordinary
/// code) are not, and this costs three reads where [`stack_op`] takes a dozen.
fn touches_frame(ins: &Instruction, m: Mnemonic) -> bool {
    moves_stack(m)
        || ins.op0_register() == Register::RSP
        || ins.op1_register() == Register::RSP
        || matches!(ins.memory_base(), Register::RSP | Register::RBP)
}

/// The table address of a `disp(,%idx,8)` memory operand at `op`.
fn table_operand(ins: &Instruction, op: u32) -> Option<u64> {
    if ins.op_kind(op) != IcedOp::Memory
        || ins.memory_base() != Register::None
        || ins.memory_index() == Register::None
        || ins.memory_index_scale() != 8
    {
        return None;
    }
    Some(ins.memory_displacement64())
}

/// The stack operation of an instruction whose mnemonic is `m`.
#[inline(never)]
fn stack_op(ins: &Instruction, m: Mnemonic) -> StackOp {
    use OpKind as K;
    let op0_reg = if ins.op_count() > 0 && ins.op0_kind() == IcedOp::Register {
        ins.op0_register()
    } else {
        Register::None
    };
    let op1_reg = if ins.op_count() > 1 && ins.op1_kind() == IcedOp::Register {
        ins.op1_register()
    } else {
        Register::None
    };
    let none = reg::NONE;
    match m {
        Mnemonic::Push => {
            if is_gpr64(op0_reg) {
                return StackOp::new(K::PushReg, gpr(op0_reg).unwrap(), none, 0);
            }
            return StackOp::new(K::Push, none, none, 0);
        }
        Mnemonic::Pushfq | Mnemonic::Pushf => return StackOp::new(K::Push, none, none, 0),
        Mnemonic::Pop => {
            if is_gpr64(op0_reg) {
                return StackOp::new(K::PopReg, gpr(op0_reg).unwrap(), none, 0);
            }
            return StackOp::new(K::Pop, none, none, 0);
        }
        Mnemonic::Popfq | Mnemonic::Popf => return StackOp::new(K::Pop, none, none, 0),
        Mnemonic::Leave => return StackOp::new(K::Leave, none, none, 0),
        Mnemonic::Enter => {
            return StackOp::new(K::Enter, none, none, ins.immediate16() as i64);
        }
        _ => {}
    }
    let writes_sp = op0_reg == Register::RSP;
    match m {
        Mnemonic::Add | Mnemonic::Sub if writes_sp => {
            if is_imm(ins.op1_kind()) {
                let v = ins.immediate(1) as i64;
                let v = if m == Mnemonic::Sub { -v } else { v };
                return StackOp::new(K::AddSp, none, none, v);
            }
            StackOp::new(K::AddSpReg, none, none, 0)
        }
        Mnemonic::And if writes_sp => {
            if is_imm(ins.op1_kind()) {
                return StackOp::new(K::AndSp, none, none, ins.immediate(1) as i64);
            }
            StackOp::new(K::UnknownSp, none, none, 0)
        }
        Mnemonic::Lea => {
            let simple = ins.memory_index() == Register::None && is_gpr64(ins.memory_base());
            let disp = ins.memory_displacement64() as i64;
            if writes_sp {
                if simple && ins.memory_base() == Register::RSP {
                    return StackOp::new(K::AddSp, none, none, disp);
                }
                if simple {
                    return StackOp::new(K::LeaSpFrom, none, gpr(ins.memory_base()).unwrap(), disp);
                }
                return StackOp::new(K::UnknownSp, none, none, 0);
            }
            if simple && ins.memory_base() == Register::RSP && is_gpr64(op0_reg) {
                return StackOp::new(K::LeaFromSp, gpr(op0_reg).unwrap(), reg::SP, disp);
            }
            StackOp::NONE
        }
        Mnemonic::Mov => {
            if is_gpr64(op0_reg) && is_gpr64(op1_reg) {
                if op1_reg == Register::RSP && op0_reg != Register::RSP {
                    return StackOp::new(K::MovSpTo, gpr(op0_reg).unwrap(), none, 0);
                }
                if writes_sp {
                    return StackOp::new(K::MovToSp, gpr(op1_reg).unwrap(), none, 0);
                }
                return StackOp::NONE;
            }
            if writes_sp && ins.op1_kind() == IcedOp::Memory {
                return StackOp::new(K::LoadSp, none, none, 0);
            }
            if writes_sp {
                return StackOp::new(K::UnknownSp, none, none, 0);
            }
            // `mov %rsp, disp(%reg)`: the top of a new stack gets the old rsp (a swizzle).
            if op1_reg == Register::RSP
                && ins.op0_kind() == IcedOp::Memory
                && ins.memory_index() == Register::None
                && is_gpr64(ins.memory_base())
            {
                return StackOp::new(
                    K::Store,
                    reg::SP,
                    gpr(ins.memory_base()).unwrap(),
                    ins.memory_displacement64() as i64,
                );
            }
            // Register saves and restores through rsp- or rbp-based slots.
            let frame_mem = |ins: &Instruction| {
                ins.memory_index() == Register::None
                    && matches!(ins.memory_base(), Register::RSP | Register::RBP)
            };
            if ins.op0_kind() == IcedOp::Memory && is_gpr64(op1_reg) && frame_mem(ins) {
                return StackOp::new(
                    K::Store,
                    gpr(op1_reg).unwrap(),
                    gpr(ins.memory_base()).unwrap(),
                    ins.memory_displacement64() as i64,
                );
            }
            if is_gpr64(op0_reg) && ins.op1_kind() == IcedOp::Memory && frame_mem(ins) {
                return StackOp::new(
                    K::Load,
                    gpr(op0_reg).unwrap(),
                    gpr(ins.memory_base()).unwrap(),
                    ins.memory_displacement64() as i64,
                );
            }
            StackOp::NONE
        }
        // Instructions that name rsp as their first operand without writing it.
        Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Bt => StackOp::NONE,
        _ if writes_sp => StackOp::new(K::UnknownSp, none, none, 0),
        Mnemonic::Xchg if op1_reg == Register::RSP => StackOp::new(K::UnknownSp, none, none, 0),
        _ => StackOp::NONE,
    }
}

fn is_imm(k: IcedOp) -> bool {
    use IcedOp as O;
    matches!(
        k,
        O::Immediate8
            | O::Immediate8to16
            | O::Immediate8to32
            | O::Immediate8to64
            | O::Immediate16
            | O::Immediate32
            | O::Immediate32to64
            | O::Immediate64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xffff_ffff_8100_0000;

    fn one(bytes: &[u8]) -> Insn {
        let mut out = Vec::new();
        decode_into(BASE, bytes, &mut out);
        assert_eq!(out.len(), 1, "{bytes:x?} decoded as {out:?}");
        out[0]
    }

    #[test]
    fn control_flow_kinds() {
        assert_eq!(one(&[0xc3]).kind, Kind::Return);
        assert_eq!(one(&[0xcc]).kind, Kind::Int3);
        assert_eq!(one(&[0x0f, 0x0b]).kind, Kind::Ud2);
        assert_eq!(one(&[0x0f, 0x07]).kind, Kind::ContextSwitch); // sysret
        assert_eq!(one(&[0x48, 0x0f, 0x07]).kind, Kind::ContextSwitch); // sysretq
        assert_eq!(one(&[0x0f, 0x05]).kind, Kind::ContextSwitch); // syscall
        assert_eq!(one(&[0xf3, 0x0f, 0x01, 0xca]).kind, Kind::ContextSwitch); // eretu
        assert_eq!(one(&[0xf2, 0x0f, 0x01, 0xca]).kind, Kind::ContextSwitch); // erets
        assert_eq!(one(&[0x0f, 0x01, 0xca]).kind, Kind::Other); // clac
        assert_eq!(one(&[0x48, 0xcf]).kind, Kind::Iretq);
        assert_eq!(one(&[0xf4]).kind, Kind::Halt);
        assert_eq!(one(&[0x0f, 0x1f, 0x44, 0x00, 0x00]).kind, Kind::Nop);
        assert_eq!(one(&[0x90]).kind, Kind::Nop);
        assert_eq!(one(&[0xff, 0xe0]).kind, Kind::JumpIndirect); // jmp *%rax
        assert_eq!(one(&[0xff, 0xd0]).kind, Kind::CallIndirect); // call *%rax
    }

    #[test]
    fn instructions_iced_does_not_know_decode_as_plain_ones() {
        let mut out = Vec::new();
        // rmpread; ret
        decode_into(BASE, &[0xf2, 0x0f, 0x01, 0xfd, 0xc3], &mut out);
        let kinds: Vec<(u8, Kind)> = out.iter().map(|i| (i.len, i.kind)).collect();
        assert_eq!(kinds, [(4, Kind::Other), (1, Kind::Return)]);
    }

    #[test]
    fn only_the_warn_trap_form_of_ud1_goes_on() {
        assert_eq!(one(&[0x67, 0x48, 0x0f, 0xb9, 0x3a]).kind, Kind::Other); // ud1 (%edx),%rdi
        assert_eq!(one(&[0x48, 0x0f, 0xb9, 0x3a]).kind, Kind::Other); // ud1 (%rdx),%rdi
        assert_eq!(one(&[0x0f, 0xb9, 0xcc]).kind, Kind::Ud2); // ud1 %esp,%ecx (static calls)
        assert_eq!(one(&[0x67, 0x0f, 0xb9, 0x40, 0x10]).kind, Kind::Ud2); // ud1 0x10(%eax),%eax
        assert_eq!(one(&[0x49, 0x0f, 0xb9, 0x3a]).kind, Kind::Ud2); // ud1 (%r10),%rdi
        assert_eq!(one(&[0x48, 0x0f, 0xb9, 0x7a, 0x08]).kind, Kind::Ud2); // ud1 8(%rdx),%rdi
    }

    #[test]
    fn branch_targets_resolve() {
        let call = one(&[0xe8, 0x10, 0x00, 0x00, 0x00]);
        assert_eq!(
            (call.kind, call.unresolved_target()),
            (Kind::Call, BASE + 5 + 0x10)
        );
        let jmp = one(&[0xeb, 0xfe]);
        assert_eq!((jmp.kind, jmp.unresolved_target()), (Kind::Jump, BASE));
        let jz = one(&[0x0f, 0x84, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(
            (jz.kind, jz.unresolved_target()),
            (Kind::JumpCond, BASE + 6 + 0x100)
        );
    }

    #[test]
    fn lookups_and_branch_targets_with_and_without_start_bits() {
        // Code 1 GiB apart needs blocks larger than 64 bytes (no start bits: lookups search the
        // list); code close together has them. Either way the same answers.
        for gap in [0x100u64, 1 << 30] {
            let far = BASE + gap;
            let mut list = Vec::new();
            decode_into(BASE, &[0xe8, 0, 0, 0, 0, 0xc3], &mut list);
            list[0] = Insn::new(BASE, 5, Kind::Call, far, StackOp::NONE);
            decode_into(far, &[0x90, 0xeb, 0xfd], &mut list);
            let insns = Insns::new(list, 9);
            assert_eq!(insns.index.starts.is_empty(), gap > 1 << 20, "gap {gap:#x}");
            assert_eq!(insns.target(0), Some(2), "gap {gap:#x}");
            assert_eq!(insns.target(3), Some(2), "gap {gap:#x}");
            assert_eq!(insns.calls, [(0, 2)]);
            for (n, i) in insns.list.iter().enumerate() {
                assert_eq!(insns.at(i.addr()), Some(n as u32), "gap {gap:#x}");
                assert_eq!(insns.lower_bound_at(i.addr()), (n as u32, true));
                let a = i.addr() + 1;
                let after = (insns.lower_bound(a), insns.at(a).is_some());
                assert_eq!(insns.lower_bound_at(a), after, "gap {gap:#x}");
            }
            assert_eq!(insns.at(BASE + 1), None);
            assert_eq!(insns.lower_bound(BASE + 1), 1);
            assert_eq!(insns.lower_bound(BASE + 6), 2);
            assert_eq!(insns.lower_bound(far + 3), 4);
        }
    }

    #[test]
    fn branches_to_where_no_code_can_be_resolve_to_nothing() {
        // Calls from the kernel's range to 1.75 GiB below it and from low code to just above
        // 2 GiB: near branches (their displacements fit) whose targets no instruction's
        // address can be, beside a jump back that does land; with the code close together
        // (start bits) and 1 GiB apart (sorted lookups).
        for (base, far) in [(BASE, BASE - 0x7000_0000), (0x3000_0000, 0x8000_0000)] {
            // The address the target's low 32 bits would stand for holds code in the last case.
            let alias = far as u32 as i32 as i64 as u64;
            for (gap, aliased) in [(0x100u64, false), (1 << 30, false), (0x100, true)] {
                let mut list = vec![Insn::new(base, 5, Kind::Call, far, StackOp::NONE)];
                decode_into(base + 5, &[0xc3], &mut list);
                list.push(Insn::new(
                    base + gap,
                    5,
                    Kind::Jump,
                    base + 5,
                    StackOp::NONE,
                ));
                if aliased {
                    decode_into(alias, &[0xc3], &mut list);
                    list.sort_by_key(|i| i.addr());
                }
                let insns = Insns::new(list, 12);
                let at = format!("{base:#x}, gap {gap:#x}, aliased {aliased}");
                let id = |a: u64| insns.at(a).unwrap();
                let with_bits = gap < 1 << 20 && !aliased;
                assert_eq!(insns.index.starts.is_empty(), !with_bits, "{at}");
                assert_eq!(insns.get(id(base)).kind, Kind::Call, "{at}");
                assert_eq!(insns.target(id(base)), None, "{at}");
                assert_eq!(insns.target(id(base + gap)), Some(id(base + 5)), "{at}");
            }
        }
    }

    /// The streaming copy into an aligned destination (the list's) and the plain one into an
    /// unaligned one give the same instructions.
    #[test]
    fn streamed_copies_are_exact() {
        let mut code = Vec::new();
        for k in 0..200u8 {
            // call, push, mov to a stack slot, jcc, nop: targets and stack operations.
            code.extend_from_slice(&[0xe8, k, 0, 0, 0, 0x55, 0x48, 0x89, 0x5c, 0x24, k]);
            code.extend_from_slice(&[0x74, k, 0x90]);
        }
        let mut src = Vec::new();
        decode_into(BASE, &code, &mut src);
        let mut list = InsnList::zeroed(src.len() + 1);
        for from in [0, 1, src.len() - 3] {
            copy_streaming(&mut list[from..from + 3], &src[..3]);
            assert_eq!(list[from..from + 3], src[..3]);
        }
        copy_streaming(&mut list[1..], &src);
        assert_eq!(list[1..], src[..]);
        // A few bytes into a vector of words: not 16-byte aligned.
        let mut words = vec![0u32; 4 * src.len() + 4];
        let skip = (1..4)
            .find(|&k| !words[k..].as_ptr().cast::<u128>().is_aligned())
            .expect("one of three word offsets is not 16-byte aligned");
        let odd = &mut words[skip..];
        // SAFETY: `odd` holds 4 * len words, 4-byte aligned as an Insn is, and is written
        // whole by the copy before it is read as instructions.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(odd.as_mut_ptr().cast::<Insn>(), src.len()) };
        copy_streaming(dst, &src);
        assert_eq!(dst, &src[..]);
    }

    #[test]
    fn int3_runs_are_counted_to_the_byte() {
        for len in 0..40 {
            for tail in [None, Some(0x90u8), Some(0xcd)] {
                let mut bytes = vec![0xcc; len];
                bytes.extend(tail);
                assert_eq!(int3_run(&bytes), len, "{len} bytes, then {tail:?}");
                // Not from the start: the run begins at the first byte or not at all.
                let mut shifted = vec![0x90];
                shifted.extend(&bytes);
                assert_eq!(int3_run(&shifted), 0);
            }
        }
    }

    #[test]
    fn switch_table_jump_and_load() {
        // jmp *0xffffffff82000000(,%rax,8)
        let j = one(&[0xff, 0x24, 0xc5, 0x00, 0x00, 0x00, 0x82]);
        assert_eq!(
            (j.kind, j.table()),
            (Kind::JumpIndirect, 0xffff_ffff_8200_0000)
        );
        // mov 0xffffffff82000000(,%rdi,8),%rax
        let l = one(&[0x48, 0x8b, 0x04, 0xfd, 0x00, 0x00, 0x00, 0x82]);
        assert_eq!(
            (l.kind, l.table(), l.op().reg),
            (Kind::TableLoad, 0xffff_ffff_8200_0000, reg::AX)
        );
    }

    #[test]
    fn stack_ops() {
        let op = |b: &[u8]| one(b).op();
        assert_eq!(op(&[0x55]).kind, OpKind::PushReg);
        assert_eq!(op(&[0x55]).reg, reg::BP);
        assert_eq!(op(&[0x41, 0x57]).reg, reg::R15);
        assert_eq!(op(&[0x5b]).kind, OpKind::PopReg);
        assert_eq!(op(&[0x9c]).kind, OpKind::Push); // pushf
        assert_eq!(op(&[0x6a, 0x00]).kind, OpKind::Push); // push $0
        let sub = op(&[0x48, 0x83, 0xec, 0x18]); // sub $0x18,%rsp
        assert_eq!((sub.kind, sub.imm), (OpKind::AddSp, -0x18));
        let add = op(&[0x48, 0x81, 0xc4, 0x00, 0x01, 0x00, 0x00]); // add $0x100,%rsp
        assert_eq!((add.kind, add.imm), (OpKind::AddSp, 0x100));
        let and = op(&[0x48, 0x83, 0xe4, 0xf0]); // and $-16,%rsp
        assert_eq!((and.kind, and.imm), (OpKind::AndSp, -16));
        let mov = op(&[0x48, 0x89, 0xe5]); // mov %rsp,%rbp
        assert_eq!((mov.kind, mov.reg), (OpKind::MovSpTo, reg::BP));
        let back = op(&[0x48, 0x89, 0xec]); // mov %rbp,%rsp
        assert_eq!((back.kind, back.reg), (OpKind::MovToSp, reg::BP));
        assert_eq!(op(&[0xc9]).kind, OpKind::Leave);
        let lea = op(&[0x4c, 0x8d, 0x54, 0x24, 0x08]); // lea 0x8(%rsp),%r10
        assert_eq!((lea.kind, lea.reg, lea.imm), (OpKind::LeaFromSp, 10, 8));
        let lea_sp = op(&[0x49, 0x8d, 0x62, 0xf8]); // lea -0x8(%r10),%rsp
        assert_eq!(
            (lea_sp.kind, lea_sp.base, lea_sp.imm),
            (OpKind::LeaSpFrom, 10, -8)
        );
        let store = op(&[0x48, 0x89, 0x5c, 0x24, 0x08]); // mov %rbx,0x8(%rsp)
        assert_eq!(
            (store.kind, store.reg, store.base, store.imm),
            (OpKind::Store, reg::BX, reg::SP, 8)
        );
        assert_eq!(op(&[0x48, 0x89, 0xc4]).kind, OpKind::MovToSp); // mov %rax,%rsp
        assert_eq!(op(&[0x48, 0x8b, 0x20]).kind, OpKind::LoadSp); // mov (%rax),%rsp
        assert_eq!(op(&[0x48, 0x01, 0xc4]).kind, OpKind::AddSpReg); // add %rax,%rsp
        assert_eq!(op(&[0x48, 0x94]).kind, OpKind::UnknownSp); // xchg %rax,%rsp
        let swz = op(&[0x49, 0x89, 0x23]); // mov %rsp,(%r11)
        assert_eq!(
            (swz.kind, swz.reg, swz.base, swz.imm),
            (OpKind::Store, reg::SP, 11, 0)
        );
        assert_eq!(op(&[0x48, 0x39, 0xc4]).kind, OpKind::None); // cmp %rax,%rsp
    }

    #[test]
    fn a_piece_decodes_alike_alone_and_within_its_section() {
        // Instructions iced-x86 decodes (rsp operands, a `lock`, a VEX form) between ones the
        // quick decoder takes; every cut makes a piece whose last instruction may run past its
        // end, which must be undecodable there as it is in the piece alone.
        let code: &[u8] = &[
            0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
            0x48, 0x89, 0x5c, 0x24, 0x08, // mov %rbx,0x8(%rsp)
            0xf0, 0x48, 0x0f, 0xb1, 0x17, // lock cmpxchg %rdx,(%rdi)
            0x48, 0x8b, 0x07, // mov (%rdi),%rax
            0xc5, 0xf9, 0x6f, 0x06, // vmovdqa (%rsi),%xmm0
            0x48, 0x81, 0xc4, 0x00, 0x01, 0x00, 0x00, // add $0x100,%rsp
            0xe8, 0x00, 0x00, 0x00, 0x00, // call
            0xc3,
        ];
        let alone = |lo: usize, hi: usize| {
            let mut out = Vec::new();
            decode_into(BASE + lo as u64, &code[lo..hi], &mut out);
            out
        };
        let within = |lo: usize, hi: usize, iced: &mut Iced<'_>| {
            let mut out = Vec::new();
            decode_with(BASE + lo as u64, code, lo, hi - lo, iced, |i| out.push(i));
            out
        };
        // One decoder for every piece, as a batch keeps it.
        let mut iced = Iced::default();
        let mut undecodable = 0;
        for lo in 0..code.len() {
            for hi in lo..=code.len() {
                let got = within(lo, hi, &mut iced);
                assert_eq!(got, alone(lo, hi), "{lo}..{hi}");
                undecodable += got.iter().filter(|i| i.kind == Kind::Invalid).count();
            }
        }
        assert!(undecodable > 0, "no cut ran an instruction past its piece");
    }

    #[test]
    fn hypervisor_emulation_prefix_is_one_instruction() {
        let mut out = Vec::new();
        // ud2; "xen"; cpuid
        decode_into(BASE, &[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2], &mut out);
        assert_eq!(
            out.iter().map(|i| (i.len, i.kind)).collect::<Vec<_>>(),
            vec![(5, Kind::Other), (2, Kind::Other)]
        );
        // a plain ud2 stays a trap
        assert_eq!(one(&[0x0f, 0x0b]).kind, Kind::Ud2);
    }

    #[test]
    fn int3_fill_runs_fold_and_short_ones_do_not() {
        // ret; int3 (SLS padding), nop, 15 int3 (too short to fold), nop, 600 int3 (linker fill),
        // ret, 20 int3, then bytes that only decode right if every position above was exact:
        // mov $0x1,%eax; ret.
        let mut bytes = vec![0xc3, 0xcc, 0x90];
        bytes.extend([0xcc; INT3_RUN - 1]);
        bytes.push(0x90);
        bytes.extend([0xcc; 600]);
        bytes.push(0xc3);
        bytes.extend([0xcc; 20]);
        bytes.extend([0xb8, 1, 0, 0, 0, 0xc3]);
        let mut out = Vec::new();
        let folded = decode_with(BASE, &bytes, 0, bytes.len(), &mut Iced::default(), |i| {
            out.push(i)
        });
        let shape: Vec<(u8, Kind)> = out.iter().map(|i| (i.len, i.kind)).collect();
        let mut want = vec![(1, Kind::Return), (1, Kind::Int3), (1, Kind::Nop)];
        want.extend([(1, Kind::Int3); INT3_RUN - 1]);
        want.push((1, Kind::Nop));
        want.extend([(255, Kind::Int3), (255, Kind::Int3), (90, Kind::Int3)]);
        want.push((1, Kind::Return));
        want.push((20, Kind::Int3));
        want.extend([(5, Kind::Other), (1, Kind::Return)]);
        assert_eq!(shape, want);
        // Contiguous, and each byte of a folded run still counts as an instruction.
        assert!(out.windows(2).all(|w| w[0].end() == w[1].addr()));
        assert_eq!(out.last().unwrap().end(), BASE + bytes.len() as u64);
        let machine: u64 = out.iter().map(Insn::stands_for).sum();
        assert_eq!(machine, out.len() as u64 + folded);
        assert_eq!(machine, 3 + (INT3_RUN as u64 - 1) + 1 + 600 + 1 + 20 + 2);
    }

    #[test]
    fn nop_padding_pieces_fold_and_nops_among_code_do_not() {
        // Pieces one after another: padding of 16 nops (a function's `__pfx_`), a function
        // (nop; 17 nops, kept one by one among its code; ret), 15 nops (too few), 300 and 265
        // nops (entries of 255 and 45; 249 and 16: none as short as an instruction can be).
        let code: Vec<u8> = [0x90; 16]
            .into_iter()
            .chain([0x90; 18])
            .chain([0xc3])
            .chain([0x90; NOP_PADDING - 1])
            .chain([0x90; 300])
            .chain([0x90; 265])
            .collect();
        let cuts = [0, 16, 16 + 19, 16 + 19 + 15, 16 + 19 + 15 + 300, code.len()];
        let pieces: Vec<(u64, &[u8])> = cuts
            .windows(2)
            .map(|w| (BASE + w[0] as u64, &code[w[0]..w[1]]))
            .collect();
        let sections = [(BASE, &code[..])];
        let (mut marks, mut starts, mut out) = (Vec::new(), Starts::new(1 << 16), Vec::new());
        let (n, folded) = decode_batch(&pieces, &sections, &mut marks, &mut starts, |_, i| {
            out.push(i)
        });
        assert_eq!(n, out.len());
        let shape: Vec<(u8, Kind)> = out.iter().map(|i| (i.len, i.kind)).collect();
        let mut want = vec![(16, Kind::Nop)];
        want.extend([(1, Kind::Nop); 18]);
        want.push((1, Kind::Return));
        want.extend([(1, Kind::Nop); NOP_PADDING - 1]);
        want.extend([
            (255, Kind::Nop),
            (45, Kind::Nop),
            (249, Kind::Nop),
            (16, Kind::Nop),
        ]);
        assert_eq!(shape, want);
        assert!(out.windows(2).all(|w| w[0].end() == w[1].addr()));
        let machine: u64 = out.iter().map(Insn::stands_for).sum();
        assert_eq!(machine, out.len() as u64 + folded);
        assert_eq!(machine, code.len() as u64);
        // A multi-byte nop is one instruction whatever its length.
        let long_nop = decode_one(&[0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], BASE);
        assert_eq!(
            long_nop.map(|i| (i.kind, i.stands_for())),
            Some((Kind::Nop, 1))
        );
    }

    #[test]
    fn sort_by_address_orders_as_a_comparison_sort() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 11
        };
        // Narrow spans (few distinct addresses, repeats), a kernel-like span, and one wider
        // than 4 GiB (the comparison fallback).
        for span in [1u64, 300, 1 << 26, 1 << 40] {
            let lo = 0xffff_8000_0000_0000u64; // room for the widest span above it
            let v: Vec<(u64, u32)> = (0..5000u32).map(|k| (lo + next() % span, k)).collect();
            let mut want = v.clone();
            want.sort_unstable();
            let mut got = v;
            sort_by_address(&mut got);
            assert_eq!(got, want, "span {span}");
        }
        let mut empty = Vec::new();
        sort_by_address(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn callee_fits_24_bits() {
        let mut call = one(&[0xe8, 0, 0, 0, 0]);
        assert_eq!(call.callee(), None);
        for f in [0, 1, 0x1234, (1 << 24) - 2] {
            assert!(call.set_callee(f));
            assert_eq!(call.callee(), Some(f));
        }
        // No room: nothing noted, the last note stays.
        assert!(!call.set_callee((1 << 24) - 1));
        assert!(!call.set_callee(u32::MAX));
        assert_eq!(call.callee(), Some((1 << 24) - 2));
    }

    #[test]
    fn search_near_finds_every_address_from_everywhere() {
        let list: Vec<Insn> = (0..40u64)
            .map(|n| Insn {
                addr32: (BASE + 3 * n) as i32,
                ..ZERO
            })
            .collect();
        for from in 0..list.len() {
            for (n, i) in list.iter().enumerate() {
                assert_eq!(search_near(&list, from, i.addr()), Some(n));
                assert_eq!(search_near(&list, from, i.addr() + 1), None);
            }
            assert_eq!(search_near(&list, from, BASE - 1), None);
        }
    }

    #[test]
    fn block_index_entered_batch_by_batch_is_the_first_instruction_of_each_block() {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Instructions with gaps of several empty 64-byte blocks (between sections), runs
        // within one block, and one per block.
        let mut list = Vec::new();
        let mut a = BASE;
        for n in 0..120u64 {
            list.push(Insn {
                addr32: a as i32,
                ..ZERO
            });
            a += match n % 17 {
                0 => 300,
                5 => 64,
                _ => 5,
            };
        }
        let block = |addr: u64| Some(((addr - BASE) >> 6) as usize);
        let blocks = block(list.last().unwrap().addr()).unwrap() + 1;
        // The first instruction at or after each block's start, by a search.
        let want: Vec<u32> = (0..blocks)
            .map(|b| list.partition_point(|i| i.addr() < BASE + ((b as u64) << 6)) as u32)
            .collect();
        for cut in [1, 2, 7, 30, list.len()] {
            let index: Vec<AtomicU32> = (0..=blocks).map(|_| AtomicU32::new(u32::MAX)).collect();
            let mut prev = None;
            for (c, chunk) in list.chunks(cut).enumerate() {
                index_blocks(&index, &[], BASE, 6, prev, chunk, c * cut);
                prev = chunk.last().and_then(|l| block(l.addr()));
            }
            let got: Vec<u32> = index[..blocks]
                .iter()
                .map(|e| e.load(Ordering::Relaxed))
                .collect();
            assert_eq!(got, want, "batches of {cut}");
        }
    }

    #[test]
    fn undecodable_bytes_resync() {
        let mut out = Vec::new();
        // 0x06 (push %es) is invalid in 64-bit mode; then a ret.
        decode_into(BASE, &[0x06, 0xc3], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, Kind::Invalid);
        assert_eq!((out[1].addr(), out[1].kind), (BASE + 1, Kind::Return));
    }
}

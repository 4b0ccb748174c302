//! The global call graph: functions from the image's `STT_FUNC` symbols, their `.cold` parts,
//! every direct branch resolved against the whole image, switch tables, and which functions
//! never return.
//!
//! objtool sees one object file, so a jump to another file's code can only be assumed to be a
//! sibling call, and whether a callee returns must come from a hand-kept list. Here the whole
//! linked image is visible: a jump into the middle of another function is followed, and
//! noreturn functions are inferred from their bodies to a fixed point.
//!
//! Assumptions: function symbols have sizes; `foo.cold` (or `foo.cold.N`) is a part of `foo`;
//! a switch table is an array of 8-byte absolute code addresses in a data section, reached by
//! `jmp *table(,%idx,8)` or by `mov table(,%idx,8),%reg; ...; jmp *%reg`.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::decode::{InsnId, Insns, Kind};
use crate::image::{Image, SymKind};
use crate::kernel::{self, Tables};

pub type FuncId = u32;

/// The innermost function holding each instruction, kept as runs of instructions with one
/// owner and an index of every block of 32 instructions: the run holding its first
/// instruction and a bit for each run starting inside it, so that a lookup is two reads and
/// a count of bits. That is about 1 MB for a distribution kernel, where an owner per
/// instruction took 11 MB of fresh memory (330 MB for a 256 MB image) and a lookup missed in it.
struct Owners {
    /// Each run's owner: the function's id plus one, or 0 for none. Neighbouring runs have
    /// different owners.
    run_owner: Vec<FuncId>,
    /// For every block of 32 instructions, the run holding its first instruction, and bit `j`
    /// (1 to 31) set where a run starts at its instruction `j`.
    blocks: Vec<(u32, u32)>,
}

impl Owners {
    /// Over instructions `0..n`, from functions sorted by address (so by first instruction).
    /// Where ranges overlap, the later function in that order owns the instruction: a nested
    /// symbol comes after the one holding it.
    fn new(funcs: &[Func<'_>], n: usize) -> Owners {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut run_owner: Vec<FuncId> = Vec::with_capacity(2 * funcs.len() + 1);
        let mut blocks = vec![(0u32, 0u32); n.div_ceil(32)];
        // The functions holding `at` (by index; those already ended are dropped lazily) and
        // where they end.
        let mut open: BinaryHeap<usize> = BinaryHeap::new();
        let mut ends: BinaryHeap<Reverse<InsnId>> = BinaryHeap::new();
        let (mut at, mut next, mut filled) = (0, 0, 0);
        while (at as usize) < n {
            while let Some(f) = funcs.get(next).filter(|f| f.first <= at) {
                if f.end > at {
                    open.push(next);
                    ends.push(Reverse(f.end));
                }
                next += 1;
            }
            while open.peek().is_some_and(|&k| funcs[k].end <= at) {
                open.pop();
            }
            while ends.peek().is_some_and(|&Reverse(e)| e <= at) {
                ends.pop();
            }
            let owner = open.peek().map_or(0, |&k| k as FuncId + 1);
            if run_owner.last() != Some(&owner) {
                let run = run_owner.len() as u32;
                run_owner.push(owner);
                let (b, j) = (at as usize / 32, at % 32);
                // The blocks from `filled` to this one begin inside the run before (the first
                // run starts at 0, so there is one wherever such blocks are).
                for e in blocks.get_mut(filled..b).unwrap_or_default() {
                    e.0 = run - 1;
                }
                if j == 0 {
                    blocks[b].0 = run;
                } else {
                    if filled <= b {
                        blocks[b].0 = run - 1;
                    }
                    blocks[b].1 |= 1 << j;
                }
                filled = b + 1;
            }
            let starts = funcs.get(next).map(|f| f.first);
            at = match (starts, ends.peek().map(|&Reverse(e)| e)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
        }
        let last = run_owner.len().saturating_sub(1) as u32;
        for e in &mut blocks[filled..] {
            e.0 = last;
        }
        Owners { run_owner, blocks }
    }

    /// The function holding instruction `id`, the innermost one.
    fn get(&self, id: InsnId) -> Option<FuncId> {
        let (run, starts) = self.blocks[id as usize / 32];
        // The bits of the runs starting at or before `id`, past the block's first instruction.
        let through = ((2u64 << (id % 32)) - 1) as u32;
        self.run_owner[(run + (starts & through).count_ones()) as usize].checked_sub(1)
    }
}

/// A bit per instruction of `0..n`, set for those in any of `ranges`: a test that fits in
/// cache, made before looking up an instruction's owner (a miss in a 4-byte-per-instruction
/// array) where few instructions pass.
fn bits_over(n: usize, ranges: impl Iterator<Item = std::ops::Range<InsnId>>) -> Vec<u64> {
    let mut bits = vec![0u64; n.div_ceil(64)];
    for r in ranges {
        for id in r {
            set_bit(&mut bits, id);
        }
    }
    bits
}

fn set_bit(bits: &mut [u64], id: InsnId) {
    bits[id as usize / 64] |= 1 << (id % 64);
}

fn bit(bits: &[u64], id: InsnId) -> bool {
    bits[id as usize / 64] & (1 << (id % 64)) != 0
}

/// Whether `id` is `jmp __x86_indirect_thunk_<reg>`: `jmp *%reg` under retpolines, an indirect
/// jump rather than a branch to the thunk.
fn retpoline_jump(insns: &Insns, tables: &Tables, id: InsnId) -> bool {
    tables.flags(id) & kernel::RETPOLINE_SITE != 0 && insns.get(id).kind == Kind::Jump
}

/// The instructions a walk has reached: a bit per instruction of one function's own range
/// (where nearly all of them are), a set for the rest.
#[derive(Default)]
pub struct Visited {
    own: std::ops::Range<InsnId>,
    bits: Vec<u64>,
    other: rustc_hash::FxHashSet<InsnId>,
}

impl Visited {
    /// Emptied, for a walk whose own range is `own`; keeps its memory.
    pub fn reset(&mut self, own: std::ops::Range<InsnId>) {
        self.bits.clear();
        self.bits.resize(own.len().div_ceil(64), 0);
        self.own = own;
        self.other.clear();
    }

    /// Whether `id` was reached.
    pub fn contains(&self, id: InsnId) -> bool {
        if self.own.contains(&id) {
            bit(&self.bits, id - self.own.start)
        } else {
            self.other.contains(&id)
        }
    }

    /// The first instruction of `from..end` not reached: a word of the own range's bits at a
    /// time there (most instructions of a walked function were reached), one at a time elsewhere.
    pub fn first_unseen(&self, from: InsnId, end: InsnId) -> Option<InsnId> {
        if from >= end {
            return None;
        }
        if from < self.own.start || end > self.own.end {
            return (from..end).find(|&id| !self.contains(id));
        }
        let (mut i, hi) = (
            (from - self.own.start) as usize,
            (end - self.own.start) as usize,
        );
        while i < hi {
            let w = i / 64;
            // Bits past the own range's end are never set: they read as not reached, and
            // the test against `hi` drops them.
            let unseen = !self.bits[w] >> (i % 64);
            if unseen != 0 {
                let k = i + unseen.trailing_zeros() as usize;
                return (k < hi).then_some(self.own.start + k as InsnId);
            }
            i = (w + 1) * 64;
        }
        None
    }

    /// Marks `id` reached; returns false if it already was.
    #[inline]
    pub fn insert(&mut self, id: InsnId) -> bool {
        if self.own.contains(&id) {
            let i = (id - self.own.start) as usize;
            let (w, b) = (i / 64, 1u64 << (i % 64));
            let new = self.bits[w] & b == 0;
            self.bits[w] |= b;
            new
        } else {
            self.insert_other(id)
        }
    }

    #[inline(never)]
    fn insert_other(&mut self, id: InsnId) -> bool {
        self.other.insert(id)
    }
}

/// Why a function is not validated on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A `.cold` part: validated as part of its parent, with the parent's state.
    ColdPart,
    /// A `.cold` part whose parent could not be identified.
    Orphan,
    /// `__pfx_*` / `__cfi_*` symbols: the padding objtool places before each function for
    /// call-depth tracking and kCFI. They are patched at boot and never called as written.
    Prefix,
    /// The image's ORC table marks the whole function undefined: objtool did not validate it
    /// (STACK_FRAME_NON_STANDARD, or an object file built with OBJECT_FILES_NON_STANDARD), so
    /// the kernel's unwinder stops there and reports any trace through it as unreliable.
    OrcUndefined,
    /// On the built-in list of genuinely non-standard kernel code ([`crate::known`]) or the
    /// user's `--allow` list.
    NonStandard,
    /// A `.cold` part jumped to only from code no symbol covers: the body of a `__weak`
    /// function the linker replaced, left in place. objtool's link mode ignores such holes
    /// and the cold parts they jump to, and so does stackval.
    DeadCode,
}

#[derive(Clone, Debug)]
pub struct Func<'data> {
    pub name: &'data str,
    pub addr: u64,
    pub size: u64,
    pub section: u32,
    /// Instructions `first..end` lie in `[addr, addr + size)`.
    pub first: InsnId,
    pub end: InsnId,
    /// For a `.cold` part, the function it belongs to.
    pub parent: Option<FuncId>,
    pub skip: Option<Skip>,
    /// Another function symbol starts inside this one's range (an alias or inner entry).
    pub has_nested: bool,
    /// An instruction starts at the function's address (`first`): known here, so that resolving
    /// a branch to the function need not read that instruction.
    pub entry_at_first: bool,
}

impl Func<'_> {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
    pub fn end_addr(&self) -> u64 {
        self.addr + self.size
    }
    /// Whether instruction `id` is the function's entry: its first, at its address.
    pub fn entered_at(&self, id: InsnId) -> bool {
        id == self.first && self.entry_at_first
    }

    /// The instruction at the function's address, if one starts there.
    pub fn entry(&self, insns: &Insns) -> Option<InsnId> {
        debug_assert_eq!(
            self.entry_at_first,
            self.first < self.end && insns.get(self.first).addr() == self.addr
        );
        self.entry_at_first.then_some(self.first)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeKind {
    Call,
    /// A jump to the start of another function: a tail call.
    Sibling,
    /// A jump into the middle of another function, followed with the current state.
    CrossJump,
    /// A jump into a `.cold` part.
    Cold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: FuncId,
    pub to: FuncId,
    pub kind: EdgeKind,
    pub insn: InsnId,
}

/// Where a direct branch lands, seen from the function it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// An instruction of the same function (or one of its `.cold` parts), not its entry.
    Local(InsnId),
    /// The entry of a function (possibly the same one: a recursive tail call).
    Entry(FuncId),
    /// The middle of another function.
    Into(FuncId, InsnId),
    /// Code that belongs to no function (assembly entry code, thunks), at no symbol.
    Code(InsnId),
    /// A global label in code outside functions. objtool takes a jump there from a function as
    /// a tail call (it resolves the jump against the symbol), and so does stackval.
    Label(InsnId),
    /// No instruction starts there.
    Nowhere,
}

/// The direct edges between functions, in both orders (`by_source[edge_start[f]..
/// edge_start[f+1]]` are f's), for `stackval graph`. The checks never need them, so a check
/// does not find them: [`Edges::new`] scans every function's branches once more.
pub struct Edges {
    by_source: Vec<Edge>,
    edge_start: Vec<u32>,
    by_target: Vec<Edge>,
}

impl Edges {
    pub fn new(graph: &Graph<'_>, insns: &Insns, tables: &Tables) -> Edges {
        let edges: Vec<Edge> = (0..graph.funcs.len() as FuncId)
            .into_par_iter()
            .flat_map_iter(|f| function_edges(graph, insns, tables, f))
            .collect();
        let (by_source, edge_start, by_target) = order_edges(&edges, graph.funcs.len());
        Edges {
            by_source,
            edge_start,
            by_target,
        }
    }

    /// The direct edges from function `f` (from its `.cold` parts too), without repeats of
    /// (target, kind), sorted by target, kind and instruction.
    pub fn from(&self, f: FuncId) -> &[Edge] {
        let (a, b) = (self.edge_start[f as usize], self.edge_start[f as usize + 1]);
        &self.by_source[a as usize..b as usize]
    }

    /// The direct edges to function `f`, sorted by source.
    pub fn to(&self, f: FuncId) -> &[Edge] {
        let callers = &self.by_target;
        let a = callers.partition_point(|e| e.to < f);
        let b = callers.partition_point(|e| e.to <= f);
        &callers[a..b]
    }
}

pub struct Graph<'data> {
    pub funcs: Vec<Func<'data>>,
    /// For every instruction, the innermost function whose range holds it.
    owners: Owners,
    /// Cold parts of each function: `cold[cold_start[f]..cold_start[f+1]]`.
    cold: Vec<FuncId>,
    cold_start: Vec<u32>,
    /// Resolved switch tables, keyed by the indirect jump.
    pub tables: HashMap<InsnId, Box<[InsnId]>>,
    /// Bit per instruction: some branch, call or switch table can land on it.
    targets: Vec<u64>,
    /// `noreturn[f]`: no path from f's entry returns to its caller.
    pub noreturn: Vec<bool>,
    /// Code outside functions that functions call (assembly entry points), sorted, and
    /// whether each never returns.
    code_calls: Vec<InsnId>,
    code_noreturn: Vec<bool>,
    /// Addresses of named symbols in code outside functions, sorted.
    labels: Vec<u64>,
    /// `__x86_return_thunk`: a jump there is a return, as in objtool.
    return_thunk: Option<InsnId>,
    /// Addresses of the return thunks (`known::RETURN_THUNKS`), sorted.
    pub return_thunks: Vec<u64>,
    /// How many rounds the noreturn fixed point took.
    pub noreturn_rounds: u32,
}

impl<'data> Graph<'data> {
    /// The function whose range holds `addr` (the innermost one, for nested symbols).
    pub fn func_at(&self, addr: u64) -> Option<FuncId> {
        func_at(&self.funcs, addr)
    }

    /// The function holding instruction `id` (the innermost one): [`Graph::func_at`] of its
    /// address, without a search.
    pub fn func_of(&self, id: InsnId) -> Option<FuncId> {
        self.owners.get(id)
    }

    /// The first function starting at or after `addr`.
    pub fn func_after(&self, addr: u64) -> Option<FuncId> {
        let i = self.funcs.partition_point(|f| f.addr < addr);
        (i < self.funcs.len()).then_some(i as FuncId)
    }

    pub fn func(&self, id: FuncId) -> &Func<'data> {
        &self.funcs[id as usize]
    }

    /// The function a part belongs to: its parent for a `.cold` part, else itself.
    pub fn home(&self, id: FuncId) -> FuncId {
        self.funcs[id as usize].parent.unwrap_or(id)
    }

    pub fn cold_parts(&self, f: FuncId) -> &[FuncId] {
        let (a, b) = (self.cold_start[f as usize], self.cold_start[f as usize + 1]);
        &self.cold[a as usize..b as usize]
    }

    /// Whether `id` is the destination of some direct branch, call or switch-table entry:
    /// the only places where two paths can meet.
    pub fn is_target(&self, id: InsnId) -> bool {
        bit(&self.targets, id)
    }

    /// Whether `addr` is code of function `home` (own range or a `.cold` part), or, for
    /// `home == None`, code outside every function.
    pub fn in_region(&self, home: Option<FuncId>, addr: u64) -> bool {
        match home {
            Some(h) => {
                self.func(h).contains(addr)
                    || self
                        .cold_parts(h)
                        .iter()
                        .any(|&c| self.func(c).contains(addr))
            }
            None => self.func_at(addr).is_none(),
        }
    }

    /// Whether a call to code outside functions at `t` never returns.
    pub fn code_is_noreturn(&self, t: InsnId) -> bool {
        self.code_calls
            .binary_search(&t)
            .is_ok_and(|k| self.code_noreturn.get(k).copied().unwrap_or(false))
    }

    /// Classifies a direct branch to `target` taken from code of function `home` (already
    /// resolved to its parent), or from code outside any function when `home` is `None`.
    pub fn resolve(&self, insns: &Insns, home: Option<FuncId>, target: u64) -> Dest {
        self.resolve_insn(insns, home, insns.at(target))
    }

    /// Where direct branch `branch` goes, seen from code whose home is `home`: the callee noted
    /// in the branch when it lands on a function's entry (what [`Graph::resolve_insn`] answers
    /// for such a target from any home), else [`Graph::resolve_insn`] of its target.
    pub fn resolve_branch(&self, insns: &Insns, home: Option<FuncId>, branch: InsnId) -> Dest {
        let resolved = || self.resolve_insn(insns, home, insns.target(branch));
        match insns.get(branch).callee() {
            Some(f) => {
                debug_assert_eq!(Dest::Entry(f), resolved());
                Dest::Entry(f)
            }
            None => resolved(),
        }
    }

    /// [`Graph::resolve`] for a destination already found in the instruction list.
    ///
    /// Always inlined: called, it returned its `Dest` through memory written as two 4-byte
    /// stores that the caller read back as one 8-byte load, a store-forwarding stall at every
    /// branch the walks resolve (a quarter of `step_flow`'s samples sat on it).
    #[inline(always)]
    pub fn resolve_insn(&self, insns: &Insns, home: Option<FuncId>, id: Option<InsnId>) -> Dest {
        let Some(id) = id else {
            return Dest::Nowhere;
        };
        // Most branches stay inside their own function: no search needed for those.
        if let Some(h) = home {
            let hf = self.func(h);
            if !hf.has_nested && id >= hf.first && id < hf.end && !hf.entered_at(id) {
                return Dest::Local(id);
            }
        }
        let Some(f) = self.func_of(id) else {
            if self.labels.binary_search(&insns.get(id).addr()).is_ok() {
                return Dest::Label(id);
            }
            return Dest::Code(id);
        };
        let func = self.func(f);
        if func.parent.is_none() && func.entered_at(id) {
            return Dest::Entry(f);
        }
        if Some(self.home(f)) == home {
            return Dest::Local(id);
        }
        Dest::Into(f, id)
    }
}

/// Builds functions, edges and switch tables, then infers noreturn functions.
pub fn build<'data>(
    image: &Image<'data>,
    insns: &mut Insns,
    tables: &Tables,
    frame_pointer: bool,
) -> Graph<'data> {
    let functions = functions(image, insns);
    build_from(functions, image, insns, tables, frame_pointer)
}

/// The image's functions, the owner of every instruction, and each `.cold` part linked to its
/// parent: the part of the graph that reads no kernel table, so a check builds it while the
/// tables are read ([`build_from`] goes on from it).
pub struct Functions<'data> {
    funcs: Vec<Func<'data>>,
    owners: Owners,
    /// Global labels in code outside functions ([`Graph::labels`]); empty without an image.
    labels: Vec<u64>,
    /// The instructions direct calls and jumps land on, as bits: [`Graph::targets`] before
    /// the switch tables' and the kernel tables' targets are added.
    targets: Vec<u64>,
}

/// See [`Functions`].
pub fn functions<'data>(image: &Image<'data>, insns: &Insns) -> Functions<'data> {
    let funcs = collect_funcs(image, insns);
    crate::lap("tables+functions: functions");
    // A jump from the alternatives' own code to a `.cold` part is a live one.
    let mut functions = owners(funcs, insns, &crate::alternative_code(image));
    functions.labels = labels(image, &functions.funcs);
    crate::lap("tables+functions: labels");
    functions
}

fn owners<'data>(
    mut funcs: Vec<Func<'data>>,
    insns: &Insns,
    alt_code: &[(u64, u64)],
) -> Functions<'data> {
    let owners = Owners::new(&funcs, insns.len());
    crate::lap("tables+functions: owners");
    link_cold_parts(&mut funcs, &owners, insns, alt_code);
    crate::lap("tables+functions: cold parts");
    let targets = branch_hits(insns);
    crate::lap("tables+functions: branch targets");
    Functions {
        funcs,
        owners,
        labels: Vec::new(),
        targets,
    }
}

/// [`Graph::func_at`] over `funcs` (sorted by address), before the graph exists.
fn func_at(funcs: &[Func<'_>], addr: u64) -> Option<FuncId> {
    let i = funcs.partition_point(|f| f.addr <= addr);
    funcs[..i]
        .iter()
        .rev()
        .take(4)
        .position(|f| f.contains(addr))
        .map(|back| (i - 1 - back) as FuncId)
}

/// The global labels in executable sections that no function covers: where code outside
/// functions can be entered by name (see [`Dest::Label`]), sorted.
fn labels(image: &Image<'_>, funcs: &[Func<'_>]) -> Vec<u64> {
    let mut labels: Vec<u64> = image
        .symbols
        .iter()
        // Only global symbols: gas resolves a jump to a local label itself, without a
        // relocation, so objtool followed those.
        .filter(|s| {
            s.kind == SymKind::NoType && s.global && image.sections[s.section as usize].exec
        })
        // Linker-script boundary markers (`_einittext` at the start of .altinstr_aux,
        // `__*_start`/`__*_end`) share addresses with code but are not entry points:
        // objtool saw section-relative relocations there and followed them.
        .filter(|s| {
            s.addr != image.sections[s.section as usize].addr && !is_boundary_marker(s.name)
        })
        .map(|s| s.addr)
        .filter(|&a| func_at(funcs, a).is_none())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

/// [`build`] from the functions found before the tables were read.
pub fn build_from<'data>(
    functions: Functions<'data>,
    image: &Image<'data>,
    insns: &mut Insns,
    tables: &Tables,
    frame_pointer: bool,
) -> Graph<'data> {
    from_functions(functions, Some(image), insns, tables, frame_pointer)
}

/// Builds the graph over given functions (sorted by address). Without an image, no switch
/// tables are read.
#[cfg(test)]
fn from_funcs<'data>(
    funcs: Vec<Func<'data>>,
    image: Option<&Image<'data>>,
    insns: &mut Insns,
    tables: &Tables,
    frame_pointer: bool,
) -> Graph<'data> {
    let functions = owners(funcs, insns, &[]);
    from_functions(functions, image, insns, tables, frame_pointer)
}

fn from_functions<'data>(
    Functions {
        mut funcs,
        owners,
        labels,
        targets,
    }: Functions<'data>,
    image: Option<&Image<'data>>,
    insns: &mut Insns,
    tables: &Tables,
    frame_pointer: bool,
) -> Graph<'data> {
    note_callees(&funcs, &owners, insns);
    let insns = &*insns;
    crate::lap("graph: callees");
    funcs
        .par_iter_mut()
        .filter(|f| f.skip.is_none())
        .for_each(|f| {
            if crate::known::non_standard(f.name, frame_pointer).is_some() {
                f.skip = Some(Skip::NonStandard);
            } else if tables
                .orc
                .as_ref()
                .is_some_and(|orc| orc.undefined_over(f.addr, f.end_addr()))
            {
                f.skip = Some(Skip::OrcUndefined);
            }
        });

    crate::lap("graph: skips");
    // Each function's cold parts, in address order: (part, parent) pairs bucketed by parent.
    let parts: Vec<(FuncId, FuncId)> = funcs
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.parent.map(|p| (i as FuncId, p)))
        .collect();
    let (parts, cold_start) = bucket_by(&parts, funcs.len(), |&(_, p)| p);
    let cold: Vec<FuncId> = parts.into_iter().map(|(c, _)| c).collect();

    let mut graph = Graph {
        funcs,
        owners,
        cold,
        cold_start,
        tables: HashMap::default(),
        targets: Vec::new(),
        noreturn: Vec::new(),
        code_calls: Vec::new(),
        code_noreturn: Vec::new(),
        labels,
        return_thunk: None,
        return_thunks: Vec::new(),
        noreturn_rounds: 0,
    };

    if let Some(image) = image {
        graph.return_thunk = image
            .symbol("__x86_return_thunk")
            .and_then(|s| insns.at(s.addr));
        let mut thunks: Vec<u64> = crate::known::RETURN_THUNKS
            .iter()
            .filter_map(|n| image.symbol(n))
            .map(|s| s.addr)
            .collect();
        thunks.sort_unstable();
        graph.return_thunks = thunks;
    }

    crate::lap("graph: thunks");
    // Switch tables, one function at a time in parallel, merged in order. Only indirect jumps
    // and jumps to retpoline thunks (`jmp __x86_indirect_thunk_<reg>` is `jmp *%reg` under
    // retpolines) can dispatch through one.
    if let Some(image) = image {
        let relocs = TableRelocs::new(image);
        let mut dispatch = insns.indirect_jumps.clone();
        dispatch.extend(
            insns
                .jumps
                .iter()
                .map(|&(j, _)| j)
                .filter(|&j| retpoline_jump(insns, tables, j)),
        );
        dispatch.sort_unstable();
        let per_func: Vec<Vec<(InsnId, Box<[InsnId]>)>> = (0..graph.funcs.len() as FuncId)
            .into_par_iter()
            .map(|f| switch_tables(&graph, image, &relocs, insns, &dispatch, f))
            .collect();
        graph.tables.extend(per_func.into_iter().flatten());
    }
    crate::lap("graph: scan");
    // Independent: the bits (one thread) while the calls into code outside functions are
    // found (all of them).
    let (found, called) = rayon::join(
        || branch_targets(targets, &graph.tables, tables),
        || code_calls(&graph, insns),
    );
    (graph.targets, graph.code_calls) = (found, called);
    crate::lap("graph: targets, code calls");
    let (noreturn, code_noreturn, rounds) = infer_noreturn(&graph, insns, tables);
    crate::lap("graph: noreturn");
    graph.noreturn = noreturn;
    graph.code_noreturn = code_noreturn;
    graph.noreturn_rounds = rounds;
    graph
}

/// The edges between `n` functions without repeats of (from, to, kind), sorted by source (then
/// target, kind, instruction), where each source's start, and the same sorted by target (then
/// source, kind). Counting sorts over function ids: one pass each, plus each source's few edges.
fn order_edges(edges: &[Edge], n: usize) -> (Vec<Edge>, Vec<u32>, Vec<Edge>) {
    let (mut by_source, starts) = bucket_by(edges, n, |e| e.from);
    for w in starts.windows(2) {
        by_source[w[0] as usize..w[1] as usize].sort_unstable();
    }
    by_source.dedup_by_key(|e| (e.from, e.to, e.kind));
    let edge_start = key_starts(&by_source, n, |e| e.from);
    // Stable, so each target's edges stay in source order.
    let (by_target, _) = bucket_by(&by_source, n, |e| e.to);
    (by_source, edge_start, by_target)
}

/// Where the edges of each `key` (a function id below `n`) would start if `edges` were ordered
/// by it: `n + 1` entries.
fn key_starts<T>(edges: &[T], n: usize, key: impl Fn(&T) -> FuncId) -> Vec<u32> {
    let mut start = vec![0u32; n + 1];
    for e in edges {
        start[key(e) as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    start
}

/// `edges` (or any items) ordered by `key` (a function id below `n`), keeping their order
/// within each key (a counting sort), and where each key's items start.
fn bucket_by<T: Copy>(edges: &[T], n: usize, key: impl Fn(&T) -> FuncId) -> (Vec<T>, Vec<u32>) {
    let start = key_starts(edges, n, &key);
    let mut next = start.clone();
    let mut out = edges.to_vec();
    for e in edges {
        let slot = &mut next[key(e) as usize];
        out[*slot as usize] = *e;
        *slot += 1;
    }
    (out, start)
}

fn collect_funcs<'data>(image: &Image<'data>, insns: &Insns) -> Vec<Func<'data>> {
    let mut funcs: Vec<Func<'data>> = Vec::new();
    // Symbols are sorted by address, then by size (largest first): the first symbol at an
    // address wins, later ones are aliases of it.
    let mut candidates: Vec<&crate::image::Symbol<'data>> = image
        .symbols
        .iter()
        .filter(|s| {
            s.kind == SymKind::Func && s.size > 0 && image.sections[s.section as usize].exec
        })
        .collect();
    // Among aliases prefer a global name without a prefix, so reports use the name people grep for.
    candidates.par_sort_by(|a, b| {
        a.addr
            .cmp(&b.addr)
            .then(b.size.cmp(&a.size))
            // Names are looked at only on ties (`then_with`): they live in the mapped file.
            .then_with(|| is_prefix(a.name).cmp(&is_prefix(b.name)))
            .then_with(|| b.global.cmp(&a.global))
            .then_with(|| a.name.len().cmp(&b.name.len()))
            .then_with(|| a.name.cmp(b.name))
    });
    candidates.dedup_by_key(|s| s.addr);
    funcs.par_extend(candidates.par_iter().map(|s| {
        let (first, entry_at_first) = insns.lower_bound_at(s.addr);
        Func {
            name: s.name,
            addr: s.addr,
            size: s.size,
            section: s.section,
            first,
            end: insns.lower_bound(s.addr + s.size),
            parent: None,
            skip: is_prefix(s.name).then_some(Skip::Prefix),
            has_nested: false,
            // Sizes are positive: an instruction at the address is inside the range.
            entry_at_first,
        }
    }));
    for i in 1..funcs.len() {
        let start = funcs[i].addr;
        // Earlier functions are sorted by start; any that still covers `start` has a nested one.
        for f in funcs[..i].iter_mut().rev().take(4) {
            if f.contains(start) {
                f.has_nested = true;
            }
        }
    }
    funcs
}

fn is_prefix(name: &str) -> bool {
    name.starts_with("__pfx_") || name.starts_with("__cfi_")
}

fn is_boundary_marker(name: &str) -> bool {
    name.starts_with("__start_")
        || name.starts_with("__stop_")
        || name.ends_with("_start")
        || name.ends_with("_end")
        || matches!(
            name,
            "_stext" | "_etext" | "_sinittext" | "_einittext" | "_text"
        )
}

/// The parent's name of a `.cold` part: `foo` for `foo.cold` and `foo.cold.12`.
pub fn cold_parent_name(name: &str) -> Option<&str> {
    // Most names have no dot at all: a byte scan settles them before the costlier substring
    // search (it is asked of every function).
    if !name.as_bytes().contains(&b'.') {
        return None;
    }
    let i = name.rfind(".cold")?;
    let rest = &name[i + 5..];
    (rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
    .then_some(&name[..i])
}

/// Notes in every direct branch that lands on a function's entry which function that is
/// (see [`Graph::resolve_branch`]): done once here, it spares the scan, the noreturn walks and
/// the validation walks a lookup of the target's owner at each call.
fn note_callees(funcs: &[Func<'_>], owners: &Owners, insns: &mut Insns) {
    const CHUNK: usize = 1 << 16;
    let entries = Entries::new(funcs, owners, insns.len());
    let Insns {
        list, calls, jumps, ..
    } = insns;
    list.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let lo = (c * CHUNK) as InsnId;
            let hi = lo + chunk.len() as InsnId;
            for side in [&calls[..], &jumps[..]] {
                let from = side.partition_point(|e| e.0 < lo);
                let to = side.partition_point(|e| e.0 < hi);
                for &(branch, target) in &side[from..to] {
                    if let Some(f) = entries.get(target) {
                        chunk[(branch - lo) as usize].set_callee(f);
                    }
                }
            }
        });
}

/// The function entered at each instruction that is one (a function that is no `.cold` part,
/// at its first instruction, and the instruction's owner): a bit per instruction with a count
/// of the bits before each word, so that a branch target is looked up with one read there and
/// one in the list of those functions. Most branches land elsewhere, and a kitchen-sink image's
/// owner index and functions are too large for the caches.
struct Entries {
    /// Per 64 instructions: the bits, and how many are set in the words before.
    words: Vec<(u64, u32)>,
    /// The function entered at each set bit, in instruction order.
    funcs: Vec<FuncId>,
}

impl Entries {
    fn new(funcs: &[Func<'_>], owners: &Owners, n: usize) -> Entries {
        // Functions are sorted by address, so by first instruction: so are the entries. An
        // alias names the same entry twice.
        let mut entered: Vec<(InsnId, FuncId)> = funcs
            .par_iter()
            .filter(|f| f.parent.is_none() && f.entry_at_first)
            .filter_map(|f| {
                let g = owners.get(f.first)?;
                let owner = &funcs[g as usize];
                (owner.parent.is_none() && owner.entered_at(f.first)).then_some((f.first, g))
            })
            .collect();
        entered.dedup_by_key(|e| e.0);
        let mut words = vec![(0u64, 0u32); n.div_ceil(64)];
        for &(id, _) in &entered {
            words[id as usize / 64].0 |= 1 << (id % 64);
        }
        let mut before = 0;
        for w in &mut words {
            w.1 = before;
            before += w.0.count_ones();
        }
        Entries {
            words,
            funcs: entered.into_iter().map(|(_, f)| f).collect(),
        }
    }

    /// The function entered at instruction `id`, if any ([`NO_INSN`](crate::decode::NO_INSN)
    /// is none).
    fn get(&self, id: InsnId) -> Option<FuncId> {
        let &(bits, before) = self.words.get(id as usize / 64)?;
        // The bits up to and including `id`'s.
        let through = bits & (u64::MAX >> (63 - id % 64));
        (bits >> (id % 64) & 1 != 0)
            .then(|| self.funcs[(before + through.count_ones()) as usize - 1])
    }
}

/// Links every `.cold` part to its parent: the function that jumps into it. gcc names a part
/// after the function its code came from, which after inlining need not be the one that
/// jumps to it (`ftrace_replace_code.cold` is entered from `ftrace_process_locs()`), and static
/// functions can share names across files; the name only breaks ties and stands in when no
/// jump is found. A part jumped to only from code no symbol covers is dead code (the discarded
/// body of an overridden weak function), unless that code is an alternative's (`alt_code`):
/// after 6.12 static_cpu_has() jumps straight to the cold part from its replacement and from
/// `.altinstr_aux` (Debian's 7.2: memory_block_size_bytes.cold), and the name decides.
fn link_cold_parts(
    funcs: &mut [Func<'_>],
    owners: &Owners,
    insns: &Insns,
    alt_code: &[(u64, u64)],
) {
    const NO_SYMBOL: usize = usize::MAX;
    const ALTERNATIVE: usize = usize::MAX - 1;
    let is_cold: Vec<bool> = funcs
        .par_iter()
        .map(|f| cold_parent_name(f.name).is_some())
        .collect();
    if !is_cold.iter().any(|&c| c) {
        return;
    }
    let func_of = |id: InsnId| owners.get(id).map(|f| f as usize);
    // Instructions of cold parts: a jump to any other is none of their business.
    let in_cold = bits_over(
        insns.len(),
        funcs
            .iter()
            .zip(&is_cold)
            .filter(|(_, &c)| c)
            .map(|(f, _)| f.first..f.end),
    );
    // (cold part, jumping function), with NO_SYMBOL or ALTERNATIVE for a jump from code no
    // symbol covers.
    let mut jumps: Vec<(usize, usize)> = insns
        .jumps
        .par_iter()
        .filter(|&&(_, to)| to != crate::decode::NO_INSN && bit(&in_cold, to))
        .filter_map(|&(n, to)| {
            let c = func_of(to)?;
            let from = func_of(n).unwrap_or_else(|| {
                let at = insns.get(n).addr();
                if alt_code.iter().any(|&(lo, hi)| (lo..hi).contains(&at)) {
                    ALTERNATIVE
                } else {
                    NO_SYMBOL
                }
            });
            (is_cold[c] && from != c && (from >= ALTERNATIVE || !is_cold[from]))
                .then_some((c, from))
        })
        .collect();
    jumps.par_sort_unstable();
    jumps.dedup();
    // The functions named as some part's parent, as (name, function) sorted: only those
    // names are looked up. Each part then finds its parent on all cores, in that sorted list
    // rather than a map of lists built on one thread: a kitchen-sink image has hundreds of
    // thousands of functions.
    let wanted: rustc_hash::FxHashSet<&str> = funcs
        .par_iter()
        .zip(&is_cold)
        .filter(|(_, &c)| c)
        .filter_map(|(f, _)| cold_parent_name(f.name))
        .collect();
    let mut by_name: Vec<(&str, FuncId)> = funcs
        .par_iter()
        .enumerate()
        .filter(|&(i, f)| !is_cold[i] && wanted.contains(f.name))
        .map(|(i, f)| (f.name, i as FuncId))
        .collect();
    by_name.par_sort_unstable();
    funcs
        .par_iter_mut()
        .enumerate()
        .filter(|(i, _)| is_cold[*i])
        .for_each(|(i, func)| {
            let Some(parent_name) = cold_parent_name(func.name) else {
                return;
            };
            let lo = jumps.partition_point(|&(c, _)| c < i);
            let hi = jumps.partition_point(|&(c, _)| c <= i);
            let mut jumpers = jumps[lo..hi]
                .iter()
                .filter(|&&(_, f)| f < ALTERNATIVE)
                .map(|&(_, f)| f as FuncId)
                .peekable();
            let from_alternative = jumps[lo..hi].iter().any(|&(_, f)| f == ALTERNATIVE);
            if jumpers.peek().is_none() && hi > lo && !from_alternative {
                func.skip = Some(Skip::DeadCode);
                return;
            }
            // The functions of that name, in id order.
            let a = by_name.partition_point(|&(n, _)| n < parent_name);
            let b = by_name.partition_point(|&(n, _)| n <= parent_name);
            let named = &by_name[a..b];
            let first = jumpers.peek().copied();
            let parent = jumpers
                .find(|&j| named.iter().any(|&(_, g)| g == j))
                .or(first)
                .or_else(|| (named.len() == 1).then(|| named[0].1));
            func.parent = parent;
            func.skip = Some(if parent.is_some() {
                Skip::ColdPart
            } else {
                Skip::Orphan
            });
        });
}

/// Relocation targets of the data sections switch tables may live in, when the image has them,
/// each gathered and sorted when a table is first looked for there: a kernel built with
/// retpolines has a handful of tables, and these sections some 150 thousand relocations
/// (Debian's 6.1).
struct TableRelocs {
    by_section: HashMap<usize, std::sync::OnceLock<Vec<(u64, u64)>>>,
}

impl TableRelocs {
    fn new(image: &Image<'_>) -> Self {
        let mut by_section = HashMap::default();
        if image.has_relocations() {
            for name in [".rodata", ".init.rodata", ".init.data", ".data"] {
                if let Some(sec) = image.section_by_name(name) {
                    by_section.insert(sec.index, std::sync::OnceLock::new());
                }
            }
        }
        TableRelocs { by_section }
    }

    /// The relocation targets of `sec`, if it is one of the sections and has any.
    fn of(&self, image: &Image<'_>, sec: &crate::image::Section<'_>) -> Option<&[(u64, u64)]> {
        let r = self
            .by_section
            .get(&sec.index)?
            .get_or_init(|| image.reloc_targets(sec));
        (!r.is_empty()).then_some(r.as_slice())
    }
}

/// The switch tables of a function's jumps among `dispatch` (sorted): indirect jumps and
/// jumps to retpoline thunks.
fn switch_tables(
    graph: &Graph<'_>,
    image: &Image<'_>,
    relocs: &TableRelocs,
    insns: &Insns,
    dispatch: &[InsnId],
    f: FuncId,
) -> Vec<(InsnId, Box<[InsnId]>)> {
    let func = graph.func(f);
    let mut tables = Vec::new();
    let from = dispatch.partition_point(|&j| j < func.first);
    for &id in dispatch[from..].iter().take_while(|&&j| j < func.end) {
        let insn = insns.get(id);
        let reg = if insn.kind == Kind::JumpIndirect {
            insn.op().reg
        } else {
            // A thunk is a function: its entry is an instruction.
            let thunk = insns.target(id).map(|t| insns.get(t).addr());
            match thunk.and_then(|t| thunk_register(image, t)) {
                Some(r) => r,
                None => continue,
            }
        };
        if let Some(t) = switch_table(graph, image, insns, relocs, f, id, reg) {
            tables.push((id, t));
        }
    }
    tables
}

/// A function's direct edges (a jump through a retpoline thunk is none: it is an indirect
/// jump).
fn function_edges(
    graph: &Graph<'_>,
    insns: &Insns,
    kernel_tables: &Tables,
    f: FuncId,
) -> Vec<Edge> {
    let func = graph.func(f);
    let home = graph.home(f);
    let mut edges = Vec::new();
    for id in func.first..func.end {
        let insn = insns.get(id);
        match insn.kind {
            Kind::Jump if retpoline_jump(insns, kernel_tables, id) => {}
            Kind::Call | Kind::Jump | Kind::JumpCond => {
                let (to, kind) = match graph.resolve_branch(insns, Some(home), id) {
                    Dest::Entry(g) if insn.kind == Kind::Call => (g, EdgeKind::Call),
                    Dest::Entry(g) => (g, EdgeKind::Sibling),
                    Dest::Into(g, _) if graph.func(g).parent.is_some() => (g, EdgeKind::Cold),
                    Dest::Into(g, _) => (g, EdgeKind::CrossJump),
                    Dest::Local(t) if insn.kind != Kind::Call => match graph.func_of(t) {
                        Some(g) if g != f && graph.func(g).parent == Some(home) => {
                            (g, EdgeKind::Cold)
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                edges.push(Edge {
                    from: home,
                    to,
                    kind,
                    insn: id,
                });
            }
            _ => {}
        }
    }
    edges
}

/// Finds the switch table an indirect jump dispatches through, if it is one.
fn switch_table(
    graph: &Graph<'_>,
    image: &Image<'_>,
    insns: &Insns,
    relocs: &TableRelocs,
    f: FuncId,
    jump: InsnId,
    reg: u8,
) -> Option<Box<[InsnId]>> {
    let insn = insns.get(jump);
    let func = graph.func(f);
    let mut table = if insn.kind == Kind::JumpIndirect {
        insn.table()
    } else {
        0
    };
    if table == 0 {
        // `jmp *%reg`: look back a few instructions for the load from the table.
        let r = reg;
        let lo = jump.saturating_sub(16).max(func.first);
        table = (lo..jump)
            .rev()
            .map(|i| insns.get(i))
            .find(|x| x.kind == Kind::TableLoad && x.op().reg == r)?
            .table();
    }
    let sec = image.section_at(table)?;
    if sec.exec || sec.data.is_empty() {
        return None;
    }
    let rel = relocs.of(image, sec);
    let home = graph.home(f);
    let mut out = Vec::new();
    let mut at = table;
    while out.len() < 4096 {
        let Some(value) = image.read_u64(at) else {
            break;
        };
        if let Some(r) = rel {
            // With relocations, an entry is only an entry if the linker relocated it to there.
            match r.binary_search_by_key(&at, |x| x.0) {
                Ok(i) if r[i].1 == value => {}
                _ => break,
            }
        }
        let Some(target) = insns.at(value) else { break };
        if graph.func_at(value).map(|g| graph.home(g)) != Some(home) {
            break;
        }
        out.push(target);
        at += 8;
    }
    (!out.is_empty()).then(|| out.into_boxed_slice())
}

/// Every instruction where two paths can meet: branch and call targets (`bits`, from
/// [`branch_hits`]), switch-table cases, and the places the kernel's tables lead to.
fn branch_targets(
    mut bits: Vec<u64>,
    switches: &HashMap<InsnId, Box<[InsnId]>>,
    tables: &Tables,
) -> Vec<u64> {
    let len = bits.len() * 64;
    let kernel = tables
        .jump_labels
        .iter()
        .flat_map(|(&site, &t)| [t, site + 1])
        .chain(tables.ex_fixups.values().flatten().copied())
        .chain(
            tables
                .alts
                .values()
                .flatten()
                .flat_map(|a| a.repl.into_iter().chain([a.orig_end])),
        );
    for id in switches
        .values()
        .flat_map(|t| t.iter().copied())
        .chain(kernel)
    {
        if (id as usize) < len {
            set_bit(&mut bits, id);
        }
    }
    bits
}

/// The instructions direct calls and jumps land on, as bits (see [`branch_targets`]).
fn branch_hits(insns: &Insns) -> Vec<u64> {
    let mut bits = vec![0u64; insns.len().div_ceil(64)];
    for &(_, to) in insns.calls.iter().chain(&insns.jumps) {
        // Unresolved targets are NO_INSN, past the end.
        if (to as usize) < insns.len() {
            set_bit(&mut bits, to);
        }
    }
    bits
}

/// The extra paths the kernel's tables open at instruction `id`, reached with the state
/// before it executes: a static branch's other way, an exception fixup, an alternative's
/// replacement (or, for an empty one, the end of the original). Every walk asks at every
/// instruction and few have any: the test for none is inlined into the walks.
#[inline]
pub fn table_paths(
    insns: &Insns,
    graph: &Graph<'_>,
    tables: &Tables,
    home: Option<FuncId>,
    id: InsnId,
    out: &mut Vec<Dest>,
) {
    let flags = tables.flags(id);
    if flags & (kernel::JUMP_LABEL | kernel::EX_FAULT | kernel::ALT_START) != 0 {
        table_paths_at(insns, graph, tables, home, id, flags, out);
    }
}

#[inline(never)]
fn table_paths_at(
    insns: &Insns,
    graph: &Graph<'_>,
    tables: &Tables,
    home: Option<FuncId>,
    id: InsnId,
    flags: u8,
    out: &mut Vec<Dest>,
) {
    // Table destinations are followed, never taken as tail calls.
    let into = |t: InsnId| match graph.resolve_insn(insns, home, Some(t)) {
        Dest::Entry(g) => Dest::Into(g, t),
        Dest::Label(t) => Dest::Code(t),
        d => d,
    };
    if flags & kernel::JUMP_LABEL != 0 {
        out.push(into(tables.jump_labels[&id]));
        if insns.get(id).kind == Kind::Jump && (id as usize + 1) < insns.len() {
            out.push(into(id + 1));
        }
    }
    if flags & kernel::EX_FAULT != 0 {
        out.extend(tables.ex_fixups[&id].iter().map(|&f| into(f)));
    }
    if flags & kernel::ALT_START != 0 {
        for alt in &tables.alts[&id] {
            out.push(match alt.repl {
                Some(r) => into(r),
                None => into(alt.orig_end),
            });
        }
    }
}

/// Whether the original instructions at `id` are left unwalked (see `kernel::Alt::skip_orig`).
pub fn skips_original(tables: &Tables, id: InsnId) -> bool {
    tables.flags(id) & kernel::ALT_START != 0 && tables.alts[&id].iter().any(|a| a.skip_orig)
}

/// Where execution continues after falling off the end of `id`, if that is not simply the
/// next instruction: the end of an alternative's replacement returns to its original code.
/// Asked at every fall-through of every walk, and few have one: inlined, so the test for none
/// costs a flag read.
#[inline]
pub fn alt_exit(tables: &Tables, id: InsnId) -> Option<InsnId> {
    if tables.flags(id) & kernel::ALT_EXIT == 0 {
        return None;
    }
    tables.alt_exits.get(&id).copied()
}

/// The register a retpoline thunk at `addr` jumps through (`__x86_indirect_thunk_rdx` -> rdx).
/// Any of the names at `addr` will do: the first thunk, rax's, shares its address with
/// `__x86_indirect_thunk_array`, which names no register (in Debian's 5.10 that name sorts
/// first).
fn thunk_register(image: &Image<'_>, addr: u64) -> Option<u8> {
    let i = image.symbols.partition_point(|s| s.addr < addr);
    image.symbols[i..]
        .iter()
        .take_while(|s| s.addr == addr)
        .filter_map(|s| s.name.strip_prefix("__x86_indirect_thunk_"))
        .find_map(|r| crate::decode::reg::NAMES.iter().position(|&n| n == r))
        .map(|r| r as u8)
}

/// What one instruction does to control flow, seen from the function being walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Continue with the next instruction.
    Next,
    /// Conditional branch: both `Dest` and the next instruction.
    Branch(Dest),
    /// Unconditional jump to `Dest`.
    Goto(Dest),
    /// Indirect jump through a resolved switch table.
    Table,
    /// Indirect jump that is not a switch table: a tail call through a pointer.
    Dynamic,
    /// A call; continue after it if the callee returns.
    Call(Dest),
    /// A conditional jump to the return thunk: a return on one way, the next instruction
    /// on the other.
    CondReturn,
    /// An indirect call: continues.
    CallIndirect,
    Return,
    /// ud2 or int3: execution never continues past it.
    DeadEnd,
    ContextSwitch,
    /// A far jump to another mode (real mode, 32-bit code): a tail call for the rules, and
    /// unknown flow for noreturn inference (the EFI thunk far-jumps out and back).
    FarJump,
    Invalid,
}

/// Whether an instruction of kind `k` only goes on to the next one, whatever the tables say of
/// it: [`step`] is [`Step::Next`]. int3 traps and, as objtool has it, continues
/// (int3_selftest(), kprobes); as padding after a return or jump no path reaches it. iretq
/// inside a function is sync_core()'s iret-to-self: it continues with the next instruction, its
/// stack effect checked by the state walk.
#[inline]
pub fn goes_on(k: Kind) -> bool {
    matches!(
        k,
        Kind::Other | Kind::Nop | Kind::TableLoad | Kind::Int3 | Kind::Halt | Kind::Iretq
    )
}

#[inline]
pub fn step(
    insns: &Insns,
    graph: &Graph<'_>,
    tables: &Tables,
    home: Option<FuncId>,
    id: InsnId,
) -> Step {
    // Most instructions: no call for those.
    if goes_on(insns.get(id).kind) {
        return Step::Next;
    }
    step_flow(insns, graph, tables, home, id)
}

/// [`step`] of an instruction that may change the flow.
#[inline(never)]
fn step_flow(
    insns: &Insns,
    graph: &Graph<'_>,
    tables: &Tables,
    home: Option<FuncId>,
    id: InsnId,
) -> Step {
    let insn = insns.get(id);
    let flags = tables.flags(id);
    if flags & (kernel::RETURN_SITE | kernel::RETPOLINE_SITE) != 0 {
        if insn.kind == Kind::Jump && graph.tables.contains_key(&id) {
            return Step::Table;
        }
        match (insn.kind, flags & kernel::RETURN_SITE != 0) {
            (Kind::Jump, true) => return Step::Return,
            (Kind::JumpCond, true) => return Step::CondReturn,
            (Kind::Jump, false) => return Step::Dynamic,
            (Kind::Call, false) => return Step::CallIndirect,
            _ => {}
        }
    }
    if graph.return_thunk.is_some() && insns.target(id) == graph.return_thunk && home.is_some() {
        match insn.kind {
            Kind::Jump => return Step::Return,
            Kind::JumpCond => return Step::CondReturn,
            _ => {}
        }
    }
    match insn.kind {
        Kind::Jump => Step::Goto(graph.resolve_branch(insns, home, id)),
        Kind::JumpCond => Step::Branch(graph.resolve_branch(insns, home, id)),
        Kind::Call => Step::Call(graph.resolve_branch(insns, home, id)),
        Kind::CallIndirect => Step::CallIndirect,
        Kind::JumpIndirect if graph.tables.contains_key(&id) => Step::Table,
        Kind::JumpIndirect => Step::Dynamic,
        Kind::Return => Step::Return,
        // A ud2 listed in __bug_table as a warning traps, reports and continues.
        Kind::Ud2 if flags & kernel::WARN_UD2 != 0 => Step::Next,
        Kind::Ud2 => Step::DeadEnd,
        Kind::ContextSwitch => Step::ContextSwitch,
        Kind::FarJump => Step::FarJump,
        Kind::Invalid => Step::Invalid,
        // The kinds `step` answers itself.
        _ => Step::Next,
    }
}

/// Call targets in code outside functions, called from function code.
fn code_calls(graph: &Graph<'_>, insns: &Insns) -> Vec<InsnId> {
    let mut out: Vec<InsnId> = insns
        .calls
        .par_iter()
        .filter(|&&(from, to)| {
            to != crate::decode::NO_INSN
                && graph.func_of(to).is_none()
                && graph.func_of(from).is_some()
        })
        .map(|&(_, to)| to)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Infers which functions (and called code outside functions) never return, as the least
/// fixed point of "some path from the entry reaches a return, a tail call to a returning
/// function, or something we cannot follow". Unknown control flow counts as returning, so a
/// mistake can only make a function look returning (more checking), never noreturn (hiding
/// paths). Nodes are functions (`0..n`) and then called code labels (`n..`).
fn infer_noreturn(
    graph: &Graph<'_>,
    insns: &Insns,
    tables: &Tables,
) -> (Vec<bool>, Vec<bool>, u32) {
    let n = graph.funcs.len();
    let nodes = n + graph.code_calls.len();
    let returns: Vec<AtomicBool> = (0..nodes)
        .map(|i| {
            // Functions not validated still have bodies to infer noreturn from; only
            // padding and parentless cold parts are assumed to return.
            AtomicBool::new(
                i < n
                    && matches!(
                        graph.funcs[i].skip,
                        Some(Skip::Prefix | Skip::Orphan | Skip::DeadCode)
                    ),
            )
        })
        .collect();
    // The compiler's own word: gcc emits nothing after a call to a `__noreturn` function, so a
    // call that ends exactly where its function's symbol ends declares its callee noreturn.
    // This covers callees whose bodies leave in ways no walk can follow (machine_real_restart()
    // far-jumps into real-mode code).
    let declared = declared_noreturn(graph, insns);
    let mut pending: Vec<u32> = (0..nodes as u32)
        .filter(|&i| {
            i as usize >= n
                || matches!(
                    graph.funcs[i as usize].skip,
                    None | Some(Skip::OrcUndefined | Skip::NonStandard)
                )
        })
        .collect();
    // Nodes some walk found blocked, with the callees not known to return that cut its paths
    // short in its latest walk. A node is walked again in the round after one of them turns out
    // to return (a later walk meets every blocker an earlier one met that is still unknown:
    // it finds no return, so it walks every path the earlier one did and more). Kept as a list
    // and filtered in parallel each round, rather than a map from callee to waiting nodes
    // updated on one thread: a kitchen-sink image has tens of thousands of blocked nodes.
    let mut blocked: Vec<(u32, Vec<u32>)> = Vec::new();
    // The first round settles a callee not yet known to return when a walk meets it, before
    // going on (callees first, as far as the call chains go): most callers then find their
    // return in that one walk instead of waiting a round for each level of calls beneath them.
    // A node is walked once in the round, by whoever claims it first; one met while another
    // walk holds it (a recursion, or the other thread's) or past SETTLE_DEPTH callees down is
    // a blocker as before. The result does not depend on the order: whatever is found to
    // return is found from callees already known to, and a node's blockers wake it as before.
    let claimed: Vec<AtomicBool> = (0..nodes).map(|_| AtomicBool::new(true)).collect();
    for &node in &pending {
        claimed[node as usize].store(false, Ordering::Relaxed);
    }
    let settle = Settle {
        graph,
        insns,
        tables,
        returns: &returns,
        declared: &declared,
        claimed: Some(&claimed),
    };
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        let settle = if rounds == 1 {
            settle
        } else {
            Settle {
                claimed: None,
                ..settle
            }
        };
        let results: Vec<(u32, bool, Vec<u32>)> = pending
            .par_iter()
            .map_init(
                || (0..SETTLE_DEPTH).map(|_| ReturnWalk::default()).collect(),
                |buffers: &mut Vec<ReturnWalk>, &node| {
                    let mut out = Vec::new();
                    if settle.claim(node) {
                        settle.walk(node, buffers, &mut out);
                    }
                    out
                },
            )
            .flatten_iter()
            .collect();
        blocked.par_extend(
            results
                .into_par_iter()
                .filter(|(_, r, blockers)| !r && !blockers.is_empty())
                .map(|(node, _, blockers)| (node, blockers)),
        );
        // The nodes a returning blocker wakes leave the list: their next walk puts them back
        // with its own blockers, or finds that they return.
        let woken: Vec<(u32, Vec<u32>)>;
        (woken, blocked) =
            std::mem::take(&mut blocked)
                .into_par_iter()
                .partition(|(_, blockers)| {
                    blockers
                        .iter()
                        .any(|&b| returns[b as usize].load(Ordering::Relaxed))
                });
        pending = woken.into_iter().map(|(node, _)| node).collect();
    }
    let noreturn = returns[..n]
        .iter()
        .zip(&graph.funcs)
        .map(|(r, f)| {
            matches!(f.skip, None | Some(Skip::OrcUndefined | Skip::NonStandard))
                && !r.load(Ordering::Relaxed)
        })
        .collect();
    let code_noreturn = returns[n..]
        .iter()
        .map(|r| !r.load(Ordering::Relaxed))
        .collect();
    (noreturn, code_noreturn, rounds)
}

/// How deep the first round of [`infer_noreturn`] goes into callees before it leaves one to a
/// later round: each level keeps a walk's buffers.
const SETTLE_DEPTH: usize = 32;

/// What a round of [`infer_noreturn`] walks a node with.
#[derive(Clone, Copy)]
struct Settle<'a, 'g> {
    graph: &'a Graph<'g>,
    insns: &'a Insns,
    tables: &'a Tables,
    returns: &'a [AtomicBool],
    /// Nodes the compiler declared noreturn ([`declared_noreturn`]): not walked.
    declared: &'a [u32],
    /// In the first round, whether each node was taken by a walk (or needs none): a callee not
    /// taken yet is walked when first met. Later rounds walk only their list.
    claimed: Option<&'a [AtomicBool]>,
}

impl Settle<'_, '_> {
    /// Takes `node` for this walk: false if another walk has it (first round only).
    fn claim(&self, node: u32) -> bool {
        self.claimed
            .is_none_or(|c| !c[node as usize].swap(true, Ordering::Relaxed))
    }

    /// Walks `node` (claimed), adding to `out` its result and those of the callees it settled
    /// on the way: (node, whether it returns, the callees not known to return that cut it short).
    fn walk(&self, node: u32, buffers: &mut [ReturnWalk], out: &mut Vec<(u32, bool, Vec<u32>)>) {
        if self.declared.binary_search(&node).is_ok() {
            out.push((node, false, Vec::new()));
            return;
        }
        let Some((mine, deeper)) = buffers.split_first_mut() else {
            return;
        };
        // A callee not known to return: settled here if no one has taken it yet.
        let mut settled = |g: u32| {
            if self.claimed.is_none() || deeper.is_empty() || !self.claim(g) {
                return false;
            }
            self.walk(g, deeper, out);
            self.returns[g as usize].load(Ordering::Relaxed)
        };
        let (r, blockers) = may_return(
            self.graph,
            self.insns,
            self.tables,
            self.returns,
            node,
            mine,
            &mut settled,
        );
        if r {
            self.returns[node as usize].store(true, Ordering::Relaxed);
        }
        out.push((node, r, blockers));
    }
}

/// Nodes called by the last instruction of some function or `.cold` part, sorted.
fn declared_noreturn(graph: &Graph<'_>, insns: &Insns) -> Vec<u32> {
    let n = graph.funcs.len();
    let mut out: Vec<u32> = graph
        .funcs
        .par_iter()
        .filter(|f| f.end > f.first && f.skip != Some(Skip::Prefix))
        .filter_map(|f| {
            let last = f.end - 1;
            let insn = insns.get(last);
            if insn.kind != Kind::Call || insn.end() != f.end_addr() {
                return None;
            }
            match graph.resolve_branch(insns, None, last) {
                Dest::Entry(g) => Some(g),
                Dest::Code(t) | Dest::Label(t) => graph
                    .code_calls
                    .binary_search(&t)
                    .ok()
                    .map(|k| (n + k) as u32),
                _ => None,
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// From instruction `id` of a node's own range (already marked reached), past those that only
/// go on to the next one, with no table entry, as the full step in [`may_return`] would go:
/// the first that does something else, or `None` when the run reaches one already reached. A
/// loop of its own, so that its few values stay in registers (inside the walk's loop they were
/// reloaded from the stack at every instruction).
fn skip_plain(
    insns: &Insns,
    tables: &Tables,
    seen: &mut Visited,
    mut id: InsnId,
    own_end: InsnId,
) -> Option<InsnId> {
    loop {
        let insn = insns.get(id);
        if tables.flags(id) != 0
            || !goes_on(insn.kind)
            || id + 1 >= own_end
            || insns.get(id + 1).addr() != insn.end()
        {
            return Some(id);
        }
        id += 1;
        if !seen.insert(id) {
            return None;
        }
    }
}

/// What a [`may_return`] walk fills as it goes, kept by each worker thread from walk to walk.
#[derive(Default)]
struct ReturnWalk {
    seen: Visited,
    work: Vec<(InsnId, Option<FuncId>)>,
    extra: Vec<Dest>,
}

/// Whether some path from a node's entry returns, given what is known to return so far; and
/// if not, the callees whose not-returning cut paths short.
fn may_return(
    graph: &Graph<'_>,
    insns: &Insns,
    tables: &Tables,
    returns: &[AtomicBool],
    node: u32,
    buffers: &mut ReturnWalk,
    settled: &mut dyn FnMut(u32) -> bool,
) -> (bool, Vec<u32>) {
    let n = graph.funcs.len();
    let (entry, start_home) = if (node as usize) < n {
        let func = graph.func(node);
        let Some(entry) = func.entry(insns) else {
            return (true, Vec::new());
        };
        (entry, Some(node))
    } else {
        (graph.code_calls[node as usize - n], None)
    };
    let returning = |g: u32| returns[g as usize].load(Ordering::Relaxed);
    // Whether callee `g` returns, settling it first if it is not known yet.
    let mut returns_now = |g: u32| returning(g) || settled(g);
    let code_node = |t: InsnId| {
        graph
            .code_calls
            .binary_search(&t)
            .ok()
            .map(|k| (n + k) as u32)
    };
    let mut blockers = Vec::new();
    let ReturnWalk { seen, work, extra } = buffers;
    let own = start_home.map_or(0..0, |f| graph.func(f).first..graph.func(f).end);
    let own_end = own.end;
    seen.reset(own);
    work.clear();
    work.push((entry, start_home));
    while let Some((mut id, mut home)) = work.pop() {
        loop {
            if !seen.insert(id) {
                break;
            }
            if home == start_home {
                match skip_plain(insns, tables, seen, id, own_end) {
                    Some(last) => id = last,
                    None => break,
                }
            }
            let mut go = |d: Dest, work: &mut Vec<(InsnId, Option<FuncId>)>| -> Option<bool> {
                match d {
                    Dest::Local(t) => work.push((t, home)),
                    Dest::Into(g, t) => work.push((t, Some(graph.home(g)))),
                    Dest::Code(t) => work.push((t, None)),
                    // A tail call to a label is followed only from code outside functions.
                    Dest::Label(t) if home.is_none() => work.push((t, None)),
                    Dest::Label(_) => return Some(true),
                    Dest::Entry(g) if returns_now(g) => return Some(true),
                    Dest::Entry(g) => blockers.push(g),
                    Dest::Nowhere => return Some(true),
                }
                None
            };
            extra.clear();
            table_paths(insns, graph, tables, home, id, extra);
            for &d in extra.iter() {
                if go(d, work) == Some(true) {
                    return (true, blockers);
                }
            }
            if skips_original(tables, id) {
                break;
            }
            match step(insns, graph, tables, home, id) {
                Step::Next | Step::CallIndirect => {}
                Step::CondReturn => return (true, blockers),
                Step::Branch(d) => {
                    if go(d, work) == Some(true) {
                        return (true, blockers);
                    }
                }
                Step::Goto(d) => {
                    if go(d, work) == Some(true) {
                        return (true, blockers);
                    }
                    break;
                }
                Step::Table => {
                    for &t in graph.tables[&id].iter() {
                        work.push((t, home));
                    }
                    break;
                }
                Step::Dynamic | Step::Return | Step::Invalid => return (true, blockers),
                Step::Call(Dest::Entry(g)) => {
                    if !returns_now(g) {
                        blockers.push(g);
                        break;
                    }
                }
                // Within code outside functions a call to its own code pushes a slot the code
                // consumes (retpolines, RSB stuffing): follow the target only.
                Step::Call(Dest::Code(t) | Dest::Label(t)) if home.is_none() => {
                    work.push((t, None));
                    break;
                }
                Step::Call(Dest::Code(t) | Dest::Label(t)) => {
                    if let Some(c) = code_node(t) {
                        if !returns_now(c) {
                            blockers.push(c);
                            break;
                        }
                    }
                }
                Step::Call(_) => {}
                Step::DeadEnd => break,
                // A far jump or far return may come back: the EFI thunk leaves for 32-bit
                // code with `lretq` and returns through a trampoline no walk can see.
                Step::FarJump | Step::ContextSwitch => return (true, blockers),
            }
            // Fall through to the next instruction; leaving the function's code that way is
            // something we cannot follow meaningfully, so it counts as returning.
            if let Some(back) = alt_exit(tables, id) {
                id = back;
                home = graph.func_of(back).map(|g| graph.home(g));
                continue;
            }
            let next = id + 1;
            if next as usize >= insns.len() || insns.get(next).addr() != insns.get(id).end() {
                return (true, blockers);
            }
            // Inside the node's own range the next instruction is its code: no region test.
            if !(home == start_home && next < own_end
                || graph.in_region(home, insns.get(next).addr()))
            {
                return (true, blockers);
            }
            id = next;
        }
    }
    (false, blockers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_into;

    #[test]
    fn first_unseen_agrees_with_one_at_a_time() {
        let mut v = Visited::default();
        v.reset(100..300);
        let mut x = 7u64;
        for _ in 0..150 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = 90 + (x >> 33) as u32 % 230;
            v.insert(id);
        }
        for id in 100..300 {
            if id % 3 == 0 {
                v.insert(id);
            }
        }
        for from in 80..320 {
            for end in [from, from + 1, from + 63, from + 64, from + 130, 300, 330] {
                let slow = (from..end).find(|&id| !v.contains(id));
                assert_eq!(v.first_unseen(from, end), slow, "{from}..{end}");
            }
        }
    }

    const BASE: u64 = 0xffff_ffff_8100_0000;

    #[test]
    fn edges_ordered_as_by_comparison_sorts() {
        let kinds = [
            EdgeKind::Call,
            EdgeKind::Sibling,
            EdgeKind::CrossJump,
            EdgeKind::Cold,
        ];
        let mut x = 7u64;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        let n = 40;
        // Few functions and kinds for many edges: repeats of (from, to, kind) to drop.
        let edges: Vec<Edge> = (0..2000)
            .map(|_| Edge {
                from: next(n) as FuncId,
                to: next(n) as FuncId,
                kind: kinds[next(4) as usize],
                insn: next(100_000) as InsnId,
            })
            .collect();
        let (by_source, starts, by_target) = order_edges(&edges, n as usize);
        let mut want = edges.clone();
        want.sort_unstable();
        want.dedup_by_key(|e| (e.from, e.to, e.kind));
        assert_eq!(by_source, want);
        for f in 0..n as usize {
            let run = &by_source[starts[f] as usize..starts[f + 1] as usize];
            assert!(run.iter().all(|e| e.from as usize == f));
        }
        assert_eq!(starts[n as usize] as usize, want.len());
        want.sort_unstable_by_key(|e| (e.to, e.from, e.kind));
        assert_eq!(by_target, want);
    }

    /// Lays out functions back to back from machine code; returns the graph's inputs.
    fn layout(parts: &[(&'static str, &[u8])]) -> (Vec<Func<'static>>, Insns) {
        let mut list = Vec::new();
        let mut funcs = Vec::new();
        let mut addr = BASE;
        for &(name, code) in parts {
            let first = list.len() as InsnId;
            decode_into(addr, code, &mut list);
            funcs.push(Func {
                name,
                addr,
                size: code.len() as u64,
                section: 0,
                first,
                end: list.len() as InsnId,
                parent: None,
                skip: None,
                has_nested: false,
                entry_at_first: !code.is_empty(),
            });
            addr += code.len() as u64;
        }
        let bytes = addr - BASE;
        (funcs, Insns::new(list, bytes))
    }

    fn rel32(from_end: u64, to: u64) -> [u8; 4] {
        (to.wrapping_sub(from_end) as i32).to_le_bytes()
    }

    fn call(at: u64, to: u64) -> Vec<u8> {
        let mut v = vec![0xe8];
        v.extend(rel32(at + 5, to));
        v
    }

    fn jmp(at: u64, to: u64) -> Vec<u8> {
        let mut v = vec![0xe9];
        v.extend(rel32(at + 5, to));
        v
    }

    fn by_name(g: &Graph<'_>, name: &str) -> FuncId {
        g.funcs.iter().position(|f| f.name == name).unwrap() as FuncId
    }

    /// A function over instructions `first..end`, placed at address `first`.
    fn spanning(
        first: InsnId,
        end: InsnId,
        parent: Option<FuncId>,
        entry_at_first: bool,
    ) -> Func<'static> {
        Func {
            name: "f",
            addr: first as u64,
            size: (end - first) as u64,
            section: 0,
            first,
            end,
            parent,
            skip: None,
            has_nested: false,
            entry_at_first,
        }
    }

    #[test]
    fn instruction_owners_match_a_serial_fill() {
        // (first, end) instruction ranges sorted by start: an outer function with nested ones
        // (two starting together, the later one winning), one overlapping the end of another,
        // an empty one, gaps, functions ending where the next starts, runs starting and
        // ending on blocks of 32, one spanning several blocks and one reaching the last
        // instruction.
        let ranges = [
            (2, 40),
            (3, 6),
            (3, 5),
            (10, 30),
            (12, 14),
            (20, 35),
            (36, 36),
            (45, 50),
            (50, 52),
            (60, 61),
            (64, 66),
            (70, 140),
            (100, 101),
            (139, 160),
            (199, 200),
        ];
        let funcs: Vec<Func<'static>> = ranges
            .iter()
            .map(|&(first, end)| spanning(first, end, None, first < end))
            .collect();
        for n in [200, 201, 224, 300] {
            let mut serial = vec![None; n];
            for (k, f) in funcs.iter().enumerate() {
                serial[f.first as usize..f.end as usize].fill(Some(k as FuncId));
            }
            let owners = Owners::new(&funcs, n);
            let found: Vec<Option<FuncId>> = (0..n as InsnId).map(|id| owners.get(id)).collect();
            assert_eq!(found, serial, "{n} instructions");
        }
        let none = Owners::new(&[], 40);
        assert!((0..40).all(|id| none.get(id).is_none()));
    }

    #[test]
    fn entries_are_the_owners_entered_at_their_first_instruction() {
        // (first, end, parent, entry at first): a function with a nested one, a cold part,
        // entries on both sides of a word of 64 instructions, a cold part starting where a
        // function does (the later one owns the instruction, so no function is entered there),
        // two aliases, and a function whose first instruction is not at its address.
        let specs = [
            (0, 40, None, true),
            (3, 6, None, true),
            (10, 30, Some(0), true),
            (63, 64, None, true),
            (64, 70, None, true),
            (64, 66, Some(4), true),
            (80, 90, None, true),
            (80, 90, None, true),
            (100, 101, None, false),
            (127, 130, None, true),
        ];
        let funcs: Vec<Func<'static>> = specs
            .iter()
            .map(|&(first, end, parent, entry)| spanning(first, end, parent, entry))
            .collect();
        let n = 200;
        let entries = Entries::new(&funcs, &Owners::new(&funcs, n), n);
        let mut owner = vec![None; n];
        for (k, f) in funcs.iter().enumerate() {
            owner[f.first as usize..f.end as usize].fill(Some(k));
        }
        for id in 0..n as InsnId {
            let expected = owner[id as usize]
                .filter(|&g| funcs[g].parent.is_none() && funcs[g].entered_at(id))
                .map(|g| g as FuncId);
            assert_eq!(entries.get(id), expected, "instruction {id}");
        }
        assert_eq!(entries.get(3), Some(1));
        assert_eq!(entries.get(64), None);
        assert_eq!(entries.get(80), Some(7));
        assert_eq!(entries.get(127), Some(9));
        assert_eq!(entries.get(crate::decode::NO_INSN), None);
    }

    #[test]
    fn cold_names() {
        assert_eq!(cold_parent_name("foo.cold"), Some("foo"));
        assert_eq!(cold_parent_name("foo.part.0.cold.12"), Some("foo.part.0"));
        assert_eq!(cold_parent_name("foo.coldish"), None);
        assert_eq!(cold_parent_name("foo"), None);
        assert_eq!(cold_parent_name(".cold"), Some(""));
        assert_eq!(cold_parent_name("a.cold.cold"), Some("a.cold"));
        assert_eq!(cold_parent_name("a.cold.1.cold"), Some("a.cold.1"));
        assert_eq!(cold_parent_name(".col"), None);
        assert_eq!(cold_parent_name(""), None);
    }

    #[test]
    fn resolves_targets_against_the_whole_image() {
        // a: push %rbx; jmp b+1 (middle of b) ; b: nop; pop %rbx; ret ; c: jmp a (entry)
        let a = BASE;
        let b = a + 6;
        let c = b + 3;
        let mut code_a = vec![0x53];
        code_a.extend(jmp(a + 1, b + 1));
        let code_b = vec![0x90, 0x5b, 0xc3];
        let code_c = jmp(c, a);
        let (funcs, mut insns) = layout(&[("a", &code_a), ("b", &code_b), ("c", &code_c)]);
        let g = from_funcs(funcs, None, &mut insns, &Tables::default(), false);
        let (fa, fb, fc) = (by_name(&g, "a"), by_name(&g, "b"), by_name(&g, "c"));
        assert_eq!(
            g.resolve(&insns, Some(fa), b + 1),
            Dest::Into(fb, insns.at(b + 1).unwrap())
        );
        assert_eq!(g.resolve(&insns, Some(fc), a), Dest::Entry(fa));
        assert_eq!(
            g.resolve(&insns, Some(fb), b + 2),
            Dest::Local(insns.at(b + 2).unwrap())
        );
        assert_eq!(
            g.resolve(&insns, Some(fa), a + 3),
            Dest::Nowhere,
            "inside an instruction"
        );
        assert_eq!(
            g.resolve(&insns, Some(fa), c + 100),
            Dest::Nowhere,
            "outside the image"
        );
        let edges = Edges::new(&g, &insns, &Tables::default());
        let kinds: Vec<_> = edges.from(fa).iter().map(|e| (e.to, e.kind)).collect();
        assert_eq!(kinds, vec![(fb, EdgeKind::CrossJump)]);
        assert_eq!(
            edges
                .to(fa)
                .iter()
                .map(|e| (e.from, e.kind))
                .collect::<Vec<_>>(),
            vec![(fc, EdgeKind::Sibling)]
        );
    }

    #[test]
    fn noreturn_is_inferred_through_tail_calls_and_call_chains() {
        // spin: hlt; jmp spin               never returns
        // wrapper: jmp spin                 tail call to a noreturn function
        // chain: call wrapper               last instruction calls a noreturn function
        // maybe: test; jz 1f; ret; 1: call chain    returns on one path
        // loop_ret: call loop_ret; ret      recursion only: never returns
        let spin = BASE;
        let code_spin = vec![0xf4, 0xeb, 0xfd];
        let wrapper = spin + 3;
        let code_wrapper = jmp(wrapper, spin);
        let chain = wrapper + 5;
        let code_chain = call(chain, wrapper);
        let maybe = chain + 5;
        let mut code_maybe = vec![0x48, 0x85, 0xff, 0x74, 0x01, 0xc3];
        code_maybe.extend(call(maybe + 6, chain));
        let rec = maybe + 11;
        let mut code_rec = call(rec, rec);
        code_rec.push(0xc3);
        let (funcs, mut insns) = layout(&[
            ("spin", &code_spin),
            ("wrapper", &code_wrapper),
            ("chain", &code_chain),
            ("maybe", &code_maybe),
            ("rec", &code_rec),
        ]);
        let g = from_funcs(funcs, None, &mut insns, &Tables::default(), false);
        let noreturn = |n| g.noreturn[by_name(&g, n) as usize];
        assert!(noreturn("spin"));
        assert!(noreturn("wrapper"));
        assert!(noreturn("chain"));
        assert!(!noreturn("maybe"));
        assert!(
            noreturn("rec"),
            "only returns after a call to itself, which never returns"
        );
    }

    #[test]
    fn call_chains_deeper_than_the_first_round_settles_are_inferred() {
        // up0: call up1; ret ... up79: ret             each returns once the next does
        // down79: call down78; ret ... down1: call down0; ret, down0: hlt; jmp down0
        //                                              callees first in address order, and
        //                                              none returns
        // Both chains are longer than SETTLE_DEPTH: the first round leaves their callers
        // blocked past that depth, later rounds finish them.
        const N: usize = 80;
        const { assert!(N > 2 * SETTLE_DEPTH) };
        let name = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut parts: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut addr = BASE;
        for k in 0..N {
            let mut code = if k + 1 < N {
                call(addr, addr + 6)
            } else {
                Vec::new()
            };
            code.push(0xc3);
            addr += code.len() as u64;
            parts.push((name(format!("up{k}")), code));
        }
        let mut prev = addr;
        for k in 0..N {
            let code = if k == 0 {
                vec![0xf4, 0xeb, 0xfd]
            } else {
                let mut c = call(addr, prev);
                c.push(0xc3);
                c
            };
            prev = addr;
            addr += code.len() as u64;
            parts.push((name(format!("down{k}")), code));
        }
        let refs: Vec<(&'static str, &[u8])> = parts.iter().map(|(n, c)| (*n, &c[..])).collect();
        let (funcs, mut insns) = layout(&refs);
        let g = from_funcs(funcs, None, &mut insns, &Tables::default(), false);
        for k in 0..N {
            assert!(
                !g.noreturn[by_name(&g, &format!("up{k}")) as usize],
                "up{k}"
            );
            assert!(
                g.noreturn[by_name(&g, &format!("down{k}")) as usize],
                "down{k}"
            );
        }
        assert!(g.noreturn_rounds > 1, "the depth limit was reached");
    }

    #[test]
    fn unknown_control_flow_counts_as_returning() {
        // ind: jmp *%rax (a tail call through a pointer: may return)
        // bad: jmp to a non-instruction
        let ind = BASE;
        let code_ind = vec![0xff, 0xe0];
        let bad = ind + 2;
        let code_bad = jmp(bad, bad + 2);
        let (funcs, mut insns) = layout(&[("ind", &code_ind), ("bad", &code_bad)]);
        let g = from_funcs(funcs, None, &mut insns, &Tables::default(), false);
        assert!(!g.noreturn[0] && !g.noreturn[1]);
    }
}

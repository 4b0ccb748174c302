//! Validation: every function is walked from its entry along every path, with the call-frame
//! state ([`state::Cfi`]) carried along, and the rules of the kernel's stack validation applied
//! at each instruction:
//!
//! 1. a return must be reachable from a callable function;
//! 2. a call needs a frame (frame-pointer mode);
//! 3. a tail call (jump to a function's entry, or a dynamic jump that is not a switch table) and
//!    a return must leave the stack as it was at entry;
//! 4. no kernel entry/exit instruction in callable code;
//! 5. paths meeting at an instruction must agree on the state;
//!
//! plus unreachable code, undecodable bytes and falling off the end of a function.
//!
//! Functions are walked in parallel; each walk owns its visited set, and findings are returned
//! per function and merged and sorted afterwards. Like objtool, a walk stops at its function's
//! first finding: later ones on the same path are usually consequences of the first.

pub mod orc;
pub mod state;

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::decode::{InsnId, Insns, Kind};
use crate::graph::{
    alt_exit, skips_original, step, table_paths, Dest, FuncId, Graph, Step, Visited,
};
use crate::kernel::{Orc, OrcType, Tables};
use crate::report::{Finding, FindingKind};
use orc::{OrcStats, Verdict};
use state::{Cfi, StackError};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Apply the frame-pointer rules (CONFIG_FRAME_POINTER kernels).
    pub frame_pointer: bool,
    /// Compare every reached instruction of a function with the image's ORC table.
    pub verify_orc: bool,
}

/// What one function's walk found.
#[derive(Clone, Debug)]
pub struct FuncResult {
    pub func: FuncId,
    pub findings: Vec<Finding>,
    pub orc: OrcStats,
    pub visited: u64,
}

pub struct Outcome {
    pub findings: Vec<Finding>,
    pub functions_validated: usize,
    pub insns_visited: u64,
    pub orc: OrcStats,
    /// Per validated function, in address order.
    pub functions: Vec<FuncResult>,
    /// Unwind hints in code outside functions that started a walk.
    pub hint_roots: usize,
    /// Returns outside functions in code the ORC table leaves undefined.
    pub unvalidated_returns: usize,
}

/// Functions walked in one task at most (see [`crate::PerWorker`]): small enough that the
/// last tasks spread over the workers (one worker finishing a long run alone took up to 7 ms
/// of a 6.1 check's 80 ms of walks), large enough that splitting costs nothing measurable.
const WALKS_PER_TASK: usize = 32;

struct Ctx<'a, 'data> {
    insns: &'a Insns,
    graph: &'a Graph<'data>,
    tables: &'a Tables,
    cfg: Config,
    orc: Option<&'a Orc>,
    /// Executable section ranges, sorted: an ORC entry only covers code in its own section.
    sections: &'a [(u64, u64)],
    /// `.altinstr_replacement` and `.altinstr_aux` (code reached only through alternatives),
    /// and holes: code after a function that no symbol covers, the bodies of `__weak`
    /// functions the linker replaced (objtool's link mode ignores them too). Sorted.
    sections_unhinted: &'a [(u64, u64)],
    /// Instructions outside any function that some walk reached.
    code_seen: Vec<AtomicU64>,
}

impl Ctx<'_, '_> {
    /// Whether some walk reached instruction `id` (outside functions: see `code_seen`).
    fn reached_outside(&self, id: InsnId) -> bool {
        self.code_seen[id as usize / 64].load(Ordering::Relaxed) & (1 << (id % 64)) != 0
    }
}

pub fn run(
    insns: &Insns,
    graph: &Graph<'_>,
    tables: &Tables,
    sections: &[(u64, u64)],
    sections_unhinted: &[(u64, u64)],
    cfg: Config,
    progress: Option<&ProgressBar>,
) -> Outcome {
    let ctx = Ctx {
        insns,
        graph,
        tables,
        cfg,
        orc: tables.orc.as_ref().filter(|_| cfg.verify_orc),
        sections,
        sections_unhinted,
        code_seen: crate::decode::zeroed_u64s(insns.len().div_ceil(64)),
    };
    let roots: Vec<FuncId> = (0..graph.funcs.len() as FuncId)
        .filter(|&f| graph.func(f).skip.is_none())
        .collect();
    let buffers = crate::PerWorker::<Buffers>::new();
    let (functions, hint_roots): (Vec<FuncResult>, _) = rayon::join(
        || {
            roots
                .par_iter()
                .with_max_len(WALKS_PER_TASK)
                .map(|&f| {
                    let r = buffers.with(|b| {
                        let (r, used) = Walk::new(&ctx, f, false, std::mem::take(b)).run();
                        *b = used;
                        r
                    });
                    if let Some(p) = progress {
                        p.inc(1);
                    }
                    r
                })
                .collect()
        },
        || hint_candidates(&ctx),
    );
    crate::lap("validate: walks");
    let mut findings = Vec::new();
    let mut visited = 0;
    let mut orc = OrcStats::default();
    for r in &functions {
        findings.extend(r.findings.iter().cloned());
        visited += r.visited;
        orc.add(&r.orc);
    }
    let (hint_findings, hints) = hint_walks(&ctx, hint_roots);
    crate::lap("validate: hint walks");
    findings.extend(hint_findings);
    let (stray, unvalidated_returns) = returns_outside_functions(&ctx);
    crate::lap("validate: returns");
    findings.extend(stray);
    findings.extend(undecodable_in_skipped(&ctx));
    Outcome {
        hint_roots: hints,
        unvalidated_returns,
        findings,
        functions_validated: roots.len(),
        insns_visited: visited,
        orc,
        functions,
    }
}

/// Whether the five words an `iretq` at `id` pops were pushed right before it, as
/// sync_core()'s iret_to_self builds them (ss, rsp, flags, cs, rip; other instructions that do
/// not touch the stack may sit between the pushes).
fn iret_frame_built(insns: &Insns, id: InsnId) -> bool {
    use crate::decode::OpKind;
    let mut pushes = 0;
    for back in 1..=12u32 {
        let Some(p) = id.checked_sub(back) else {
            return false;
        };
        let i = insns.get(p);
        if i.kind != Kind::Other || i.end() != insns.get(p + 1).addr() {
            return false;
        }
        match i.op().kind {
            OpKind::Push | OpKind::PushReg => {
                pushes += 1;
                if pushes == 5 {
                    return true;
                }
            }
            OpKind::None => {}
            _ => return false,
        }
    }
    false
}

/// Whether the instruction `id` sits alone in padding: what precedes it is padding or the end
/// of a function, and what follows is padding or the start of a function.
fn padding_neighbours(ctx: &Ctx<'_, '_>, id: InsnId) -> bool {
    let insns = ctx.insns;
    let g = ctx.graph;
    let pad = |k: Kind| matches!(k, Kind::Nop | Kind::Int3);
    let before = id.checked_sub(1).map(|p| insns.get(p));
    let after = insns.list.get(id as usize + 1);
    let here = insns.get(id);
    let before_ok = before
        .is_some_and(|b| b.end() == here.addr() && (pad(b.kind) || g.func_at(b.addr()).is_some()));
    let after_ok = after.is_some_and(|a| {
        a.addr() == here.end()
            && (pad(a.kind)
                || g.func_at(a.addr())
                    .is_some_and(|f| g.func(f).addr == a.addr()))
    });
    before_ok && after_ok
}

/// Undecodable bytes in functions that are not walked (skipped as non-standard or for
/// undefined ORC): whatever else is exempt, every byte of a function must decode.
fn undecodable_in_skipped(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    use crate::graph::Skip;
    ctx.graph
        .funcs
        .iter()
        .filter(|f| matches!(f.skip, Some(Skip::OrcUndefined | Skip::NonStandard)))
        .filter_map(|f| {
            (f.first..f.end)
                .map(|id| ctx.insns.get(id))
                .find(|i| i.kind == Kind::Invalid)
                .map(|i| Finding::new(FindingKind::CantDecode, i.addr()))
        })
        .collect()
}

fn in_ranges(ranges: &[(u64, u64)], addr: u64) -> bool {
    let i = ranges.partition_point(|r| r.0 <= addr);
    i > 0 && addr < ranges[i - 1].1
}

/// Walks code outside functions that no function reaches, from the unwind hints objtool left
/// in the ORC table (call-type entries, as UNWIND_HINT_FUNC writes): the thunks and entry
/// code objtool validated only from such hints ([`hint_candidates`]). Roots go in address order,
/// one at a time, and a root some earlier walk already reached is skipped, so the result is
/// deterministic.
fn hint_walks(ctx: &Ctx<'_, '_>, candidates: Vec<(InsnId, Cfi)>) -> (Vec<Finding>, usize) {
    let mut findings = Vec::new();
    let mut roots = 0;
    for (id, state) in candidates {
        if ctx.reached_outside(id) {
            continue;
        }
        let ip = ctx.insns.get(id).addr();
        let near =
            ctx.graph
                .func_after(ip)
                .or(ctx.graph.funcs.len().checked_sub(1).map(|n| n as FuncId));
        let Some(near) = near else { continue };
        roots += 1;
        // No own range: the walk is of code outside functions, only named after `near`.
        let walk = Walk::new(ctx, near, true, Buffers::default());
        findings.extend(walk.run_hint(id, state));
    }
    (findings, roots)
}

/// The roots [`hint_walks`] may start from, in address order: the call-type entries outside
/// every function, at an instruction, not in replacement code, that give a state. Whether a
/// function's walk reached one is left to [`hint_walks`]: this needs no walk, and runs while
/// the functions are walked (one pass over the whole table, on one core).
fn hint_candidates(ctx: &Ctx<'_, '_>) -> Vec<(InsnId, Cfi)> {
    let Some(orc) = ctx.tables.orc.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Both the table and the functions are sorted by address: one pass over both finds the
    // entries outside every function (the end of the furthest-reaching function so far says
    // whether an address is inside one).
    let funcs = &ctx.graph.funcs;
    let (mut next_func, mut covered_to) = (0, 0u64);
    for (i, &ip) in orc.ips.iter().enumerate() {
        while next_func < funcs.len() && funcs[next_func].addr <= ip {
            covered_to = covered_to.max(funcs[next_func].end_addr());
            next_func += 1;
        }
        let e = &orc.entries[i];
        if e.kind != OrcType::Call {
            continue;
        }
        // The entry's reach outside every function: from its address, or from the end of the
        // function it starts in, to the next entry or function.
        let end = orc
            .ips
            .get(i + 1)
            .copied()
            .unwrap_or(u64::MAX)
            .min(funcs.get(next_func).map_or(u64::MAX, |f| f.addr));
        let (start, at_entry) = if ip < covered_to {
            (covered_to, false)
        } else {
            (ip, true)
        };
        if start >= end {
            continue;
        }
        let Some(state) = orc::hint_state(e) else {
            continue;
        };
        // Entries in replacement code are objtool's states for it at its original site, and
        // those in a replaced __weak function's body its states for that dead code: not
        // hints, except an entry of its own at an instruction alone in padding. objtool gives
        // unreached padding an undefined entry, so such an entry is a hint: the Xen hypercall
        // page of 5.10 is 128 stubs of `ret` and int3 filler, each UNWIND_HINT_FUNC, and the
        // stubs with no hypercall name lie in the hole after the last named one.
        let Some(first) = ctx.insns.at(start) else {
            continue;
        };
        let root = |id: InsnId, out: &mut Vec<(InsnId, Cfi)>| {
            let hinted = id == first && at_entry && padding_neighbours(ctx, id);
            if hinted || !in_ranges(ctx.sections_unhinted, ctx.insns.get(id).addr()) {
                out.push((id, state));
            }
        };
        // objtool gives an instruction it never reached an undefined entry, and writes an
        // entry only where the state changes: code after a return or jump that the entry
        // still covers was reached with the same state, from a hint of its own that left no
        // entry (kexec's pr_char_8250_mmio32 follows pr_char_8250, both UNWIND_HINT_FUNC).
        // Each such instruction is a root too; those a walk reaches first are skipped.
        let mut prev = (first > 0).then(|| ctx.insns.get(first - 1));
        for id in first..ctx.insns.len() as InsnId {
            let insn = ctx.insns.get(id);
            if insn.addr() >= end {
                break;
            }
            let follows_end = prev.is_some_and(|p| p.end() == insn.addr() && ends_flow(p.kind));
            if (at_entry && id == first) || follows_end {
                root(id, &mut out);
            }
            prev = Some(insn);
        }
    }
    out
}

/// Whether execution never goes on from an instruction of this kind to the next.
fn ends_flow(kind: Kind) -> bool {
    !crate::graph::goes_on(kind)
        && !matches!(kind, Kind::JumpCond | Kind::Call | Kind::CallIndirect)
}

/// Rule 1: a return that no function's walk reached and that lies outside every function.
/// Where the image's ORC table leaves the code undefined or marks the end of the stack, objtool
/// walked it from an empty hint or not at all (kexec's relocate_kernel starts with
/// UNWIND_HINT_EMPTY): the unwinder cannot pass there, and the return is counted, not reported.
fn returns_outside_functions(ctx: &Ctx<'_, '_>) -> (Vec<Finding>, usize) {
    // One entry per return outside functions that no walk reached: a finding, or None for
    // one counted as unvalidated.
    let results: Vec<Option<Finding>> = ctx
        .insns
        .returns
        .par_iter()
        .filter_map(|&id| {
            let insn = ctx.insns.get(id);
            if ctx.reached_outside(id) || ctx.graph.func_of(id).is_some() {
                return None;
            }
            // A return alone in the padding between functions is never an exemption's case:
            // dead weak-function bodies and undefined-ORC code have real instructions around
            // theirs.
            let in_padding = padding_neighbours(ctx, id);
            if !in_padding && in_ranges(ctx.sections_unhinted, insn.addr()) {
                return None;
            }
            // The return thunks' own `ret` (their first instruction) implements every return.
            if ctx.graph.return_thunks.binary_search(&insn.addr()).is_ok() {
                return None;
            }
            let orc_undefined = ctx
                .tables
                .orc
                .as_ref()
                .and_then(|o| o.lookup(insn.addr()))
                .is_some_and(|(_, e)| matches!(e.kind, OrcType::Undefined | OrcType::EndOfStack));
            Some(
                (!orc_undefined || in_padding)
                    .then(|| Finding::new(FindingKind::ReturnOutsideFunction, insn.addr())),
            )
        })
        .collect();
    let unvalidated = results.iter().filter(|r| r.is_none()).count();
    (results.into_iter().flatten().collect(), unvalidated)
}

/// Where a pending path picks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Arrive at the instruction: merge states, then take the kernel tables' paths first.
    Enter,
    /// The tables' paths were taken; now execute the instruction itself.
    Execute,
    /// The instruction was executed; fall through to the next one.
    FallFrom,
}

/// A path to continue: an instruction, the function whose code it is in (`None` outside
/// functions), the state there, and where to pick up.
#[derive(Clone, Copy)]
struct Pending {
    id: InsnId,
    home: Option<FuncId>,
    state: Cfi,
    mode: Mode,
    /// `Walk::orc_confirmed` for `state`.
    confirmed: (u64, u64),
}

struct Walk<'c, 'a, 'data> {
    ctx: &'c Ctx<'a, 'data>,
    /// The function walked; for a walk from an unwind hint in code outside functions, the
    /// function nearest before it (used for names only).
    f: FuncId,
    /// A walk of code outside functions from an ORC entry: unwind hints there set the state,
    /// as objtool's hints did when it validated that code.
    hint_walk: bool,
    b: Buffers,
    visited: u64,
    orc: OrcStats,
    /// Where the last ORC lookup ended (see `Orc::lookup_near`).
    orc_cursor: usize,
    /// Addresses `[lo, hi)` where the ORC entry that last confirmed the current state is in
    /// force, within the function's own range, while the path has not changed the state since
    /// (a queued path keeps it: `Pending::confirmed`): instructions there need no lookup and
    /// no comparison, only counting. Empty otherwise.
    orc_confirmed: (u64, u64),
    /// The end of the function's own instructions (`Func::end`; 0 for a hint walk).
    own_end: InsnId,
    /// The executable section of the function's own range, found once.
    own_section: Option<(u64, u64)>,
    /// The first disagreement with the ORC table; the walk goes on after it.
    orc_finding: Option<Finding>,
}

/// `Walk::orc_confirmed` when no entry is known to confirm the state.
const NOT_CONFIRMED: (u64, u64) = (0, 0);

/// Where the states at branch targets are kept (indexes into `Buffers::saved`): a slot per
/// instruction of the function's own range, where nearly all targets are, and a map for the
/// rest.
#[derive(Default)]
struct States {
    own: std::ops::Range<InsnId>,
    slots: Vec<u32>,
    other: HashMap<InsnId, u32>,
}

impl States {
    const NONE: u32 = u32::MAX;

    fn reset(&mut self, own: std::ops::Range<InsnId>) {
        self.slots.clear();
        self.slots.resize(own.len(), Self::NONE);
        self.own = own;
        self.other.clear();
    }

    fn get(&self, id: InsnId) -> Option<u32> {
        if self.own.contains(&id) {
            let k = self.slots[(id - self.own.start) as usize];
            (k != Self::NONE).then_some(k)
        } else {
            self.other.get(&id).copied()
        }
    }

    fn insert(&mut self, id: InsnId, k: u32) {
        if self.own.contains(&id) {
            self.slots[(id - self.own.start) as usize] = k;
        } else {
            self.other.insert(id, k);
        }
    }
}

/// The walk stopped at a finding.
struct Stop(Finding);

/// What a walk fills as it goes. Each worker thread keeps one set from walk to walk, so that
/// the ~50 k walks of a kernel reuse their memory instead of allocating it again.
#[derive(Default)]
struct Buffers {
    /// Reached instructions: the function's own range, and elsewhere (cold parts, other
    /// functions, code outside functions).
    seen: Visited,
    /// States at branch targets, where paths can meet: indexes into `saved`, so that keeping
    /// them moves small entries, not whole states.
    states: States,
    saved: Vec<Cfi>,
    /// Paths still to walk, last first. Pushing in the right order reproduces objtool's
    /// depth-first order (table paths before the original instruction, a conditional
    /// jump's target before its fall-through), so the first finding in a function is the
    /// one objtool reports.
    work: Vec<Pending>,
    extra: Vec<Dest>,
}

impl Buffers {
    /// Emptied for a walk whose own range is `own`.
    fn reset(&mut self, own: std::ops::Range<InsnId>) {
        self.states.reset(own.clone());
        self.seen.reset(own);
        self.saved.clear();
        self.work.clear();
        self.extra.clear();
    }
}

impl<'c, 'a, 'data> Walk<'c, 'a, 'data> {
    /// A walk of function `f` (of code outside functions named after `f`, for a hint walk, whose
    /// own range is empty), in `b`.
    fn new(ctx: &'c Ctx<'a, 'data>, f: FuncId, hint_walk: bool, mut b: Buffers) -> Self {
        let func = ctx.graph.func(f);
        b.reset(if hint_walk {
            0..0
        } else {
            func.first..func.end
        });
        Walk {
            ctx,
            f,
            hint_walk,
            b,
            visited: 0,
            orc: OrcStats::default(),
            orc_cursor: 0,
            orc_confirmed: NOT_CONFIRMED,
            own_end: if hint_walk { 0 } else { func.end },
            own_section: None,
            orc_finding: None,
        }
    }

    fn run(mut self) -> (FuncResult, Buffers) {
        let func = self.ctx.graph.func(self.f);
        let Some(entry) = func.entry(self.ctx.insns) else {
            let finding = Finding::new(FindingKind::NoStartingInstruction, func.addr);
            return self.result(vec![finding]);
        };
        self.b.work.push(Pending {
            id: entry,
            home: Some(self.f),
            state: Cfi::initial(),
            mode: Mode::Enter,
            confirmed: NOT_CONFIRMED,
        });
        while let Some(p) = self.b.work.pop() {
            if let Err(Stop(finding)) = self.path(p) {
                return self.result(vec![finding]);
            }
        }
        let unreachable = self.first_unreachable();
        self.result(unreachable.into_iter().collect())
    }

    /// The function's result, and the buffers for the next walk.
    fn result(mut self, mut findings: Vec<Finding>) -> (FuncResult, Buffers) {
        // A finding in code the function does not own (shared thunks, another function's
        // body) names the function whose path led there.
        let g = self.ctx.graph;
        for f in &mut findings {
            if f.kind != FindingKind::FallsThrough && !g.in_region(Some(self.f), f.addr) {
                f.message = format!("{} (on a path from {}())", f.message, g.func(self.f).name);
            }
        }
        findings.extend(self.orc_finding.take());
        let result = FuncResult {
            func: self.f,
            findings,
            orc: self.orc,
            visited: self.visited,
        };
        (result, self.b)
    }

    /// Compares the ORC entry covering `insn` with the state there.
    #[inline]
    fn verify_orc(&mut self, orc: &Orc, addr: u64, state: &Cfi) {
        let (lo, hi) = self.orc_confirmed;
        if lo <= addr && addr < hi {
            // Same entry, same state, same section (a function lies in one): same verdict.
            // Most instructions end here: inlined into the walk, out of line below.
            self.orc.count(&Verdict::Confirmed);
            return;
        }
        self.verify_orc_entry(orc, addr, state);
    }

    /// [`Walk::verify_orc`] when the state is not known to be confirmed at `addr`.
    #[inline(never)]
    fn verify_orc_entry(&mut self, orc: &Orc, addr: u64, state: &Cfi) {
        // The common case first: an address of the function's own range (whose section is
        // known once its first address was verified), confirmed by its entry.
        let own = self.ctx.graph.func(self.f);
        if let Some(section) = self.own_section.filter(|_| own.contains(addr)) {
            let covering = orc.lookup_near(addr, &mut self.orc_cursor);
            if orc::confirms(covering, addr, section, state) {
                debug_assert_eq!(
                    orc::verify_entry(covering, addr, section, state),
                    Verdict::Confirmed
                );
                let (ip, _) = covering.expect("a confirmed entry");
                self.confirmed_from(orc, ip);
                self.orc.count(&Verdict::Confirmed);
                return;
            }
        }
        self.verify_orc_verdict(orc, addr, state);
    }

    /// Notes that the entry at `ip`, just looked up, confirmed the state in the function's own
    /// range: it is in force up to the next entry.
    fn confirmed_from(&mut self, orc: &Orc, ip: u64) {
        let own = self.ctx.graph.func(self.f);
        let next = orc.ips.get(self.orc_cursor).copied().unwrap_or(u64::MAX);
        self.orc_confirmed = (ip.max(own.addr), next.min(own.end_addr()));
    }

    /// [`Walk::verify_orc_entry`] with the verdict in full.
    #[inline(never)]
    fn verify_orc_verdict(&mut self, orc: &Orc, addr: u64, state: &Cfi) {
        let section_of = |addr: u64| {
            let secs = self.ctx.sections;
            let i = secs.partition_point(|s| s.0 <= addr);
            if i > 0 {
                secs[i - 1]
            } else {
                (0, 0)
            }
        };
        let own = self.ctx.graph.func(self.f);
        let in_own = own.contains(addr);
        let section = if in_own {
            *self.own_section.get_or_insert_with(|| section_of(own.addr))
        } else {
            section_of(addr)
        };
        let covering = orc.lookup_near(addr, &mut self.orc_cursor);
        let mut verdict = orc::verify_entry(covering, addr, section, state);
        if in_own && verdict == Verdict::Confirmed {
            // The entry is in force up to the next one; `verify_entry` confirmed it only
            // when it lies in the function's section.
            let (ip, _) = covering.expect("a confirmed entry");
            self.confirmed_from(orc, ip);
        } else {
            self.orc_confirmed = NOT_CONFIRMED;
        }
        if matches!(verdict, Verdict::Mismatch(_)) {
            let in_alt_body = self
                .ctx
                .insns
                .at(addr)
                .is_some_and(|id| self.ctx.tables.flags(id) & crate::kernel::ALT_BODY != 0);
            if in_alt_body {
                verdict = Verdict::AltGroup;
            }
        }
        self.orc.count(&verdict);
        if self.orc_finding.is_none() {
            self.orc_finding = match verdict {
                Verdict::Mismatch(m) => Some(Finding::with(FindingKind::OrcMismatch, addr, m)),
                Verdict::Uncovered => Some(Finding::new(FindingKind::OrcUncovered, addr)),
                _ => None,
            };
        }
    }

    /// Walks code outside functions from one unwind hint.
    fn run_hint(mut self, root: InsnId, state: Cfi) -> Vec<Finding> {
        self.b.work.push(Pending {
            id: root,
            home: None,
            state,
            mode: Mode::Enter,
            confirmed: NOT_CONFIRMED,
        });
        while let Some(p) = self.b.work.pop() {
            if let Err(Stop(mut finding)) = self.path(p) {
                let at = self.ctx.insns.get(root).addr();
                if finding.addr != at {
                    finding.message = format!(
                        "{} (on a path from the unwind hint at {at:#x})",
                        finding.message
                    );
                }
                return vec![finding];
            }
        }
        Vec::new()
    }

    /// Marks `id` visited; returns false if it already was.
    fn visit(&mut self, id: InsnId) -> bool {
        if !self.b.seen.insert(id) {
            return false;
        }
        self.visited += 1;
        true
    }

    /// Walks one straight-line stretch of a path, queueing the branches it meets.
    fn path(&mut self, mut p: Pending) -> Result<(), Stop> {
        let ctx = self.ctx;
        let insns = ctx.insns;
        let fp = ctx.cfg.frame_pointer;
        // The state is walked in place, in `p`: a copy is 152 bytes.
        let Pending {
            mut id,
            mut home,
            mut mode,
            confirmed,
            ..
        } = p;
        // What the ORC table confirmed of the path's state when it was queued.
        self.orc_confirmed = confirmed;
        loop {
            if mode == Mode::FallFrom {
                if home == Some(self.f) {
                    match self.plain_run(id, &p.state) {
                        Some(last) => id = last,
                        None => return Ok(()),
                    }
                }
                let (next, next_home) = self.fall_through(id, home)?;
                (id, home, mode) = (next, next_home, Mode::Enter);
            }
            let insn = *insns.get(id);
            if mode == Mode::Enter {
                let first_visit = self.visit(id);
                if ctx.graph.is_target(id) {
                    if let Some(prev) = self.b.states.get(id).map(|k| &self.b.saved[k as usize]) {
                        if let Some(detail) = prev.mismatch(&p.state) {
                            return Err(Stop(if fp && prev.frame_pointer_mismatch(&p.state) {
                                Finding::new(FindingKind::FramePointerMismatch, insn.addr())
                            } else {
                                Finding::with(
                                    FindingKind::StackStateMismatch,
                                    insn.addr(),
                                    format!("stack state mismatch: {detail}"),
                                )
                            }));
                        }
                    } else {
                        self.b.states.insert(id, self.b.saved.len() as u32);
                        // Straight from `p` into the list: `push` copies the state twice.
                        self.b
                            .saved
                            .extend_from_slice(std::slice::from_ref(&p.state));
                    }
                }
                if !first_visit {
                    return Ok(());
                }
                if home.is_none() {
                    ctx.code_seen[id as usize / 64].fetch_or(1 << (id % 64), Ordering::Relaxed);
                    match ctx.tables.orc.as_ref().and_then(|o| o.at(insn.addr())) {
                        // pt_regs frames and places with no unwind information are the
                        // unwinder's business, not the call-frame rules'.
                        Some(e) if e.kind != OrcType::Call => return Ok(()),
                        Some(e) if self.hint_walk => {
                            if let Some(hinted) = orc::hint_state(e) {
                                p.state = hinted;
                                self.orc_confirmed = NOT_CONFIRMED;
                            }
                        }
                        _ => {}
                    }
                } else if let Some(orc) = ctx.orc {
                    self.verify_orc(orc, insn.addr(), &p.state);
                }
                // Paths the kernel's tables add, walked first, with the state before this
                // instruction; the instruction itself resumes afterwards.
                self.b.extra.clear();
                table_paths(insns, ctx.graph, ctx.tables, home, id, &mut self.b.extra);
                if !self.b.extra.is_empty() {
                    if !skips_original(ctx.tables, id) {
                        self.b.work.push(Pending {
                            id,
                            home,
                            state: p.state,
                            mode: Mode::Execute,
                            confirmed: self.orc_confirmed,
                        });
                    }
                    for i in (0..self.b.extra.len()).rev() {
                        let d = self.b.extra[i];
                        self.follow(d, home, insn.addr(), p.state)?;
                    }
                    return Ok(());
                }
            }
            let step = step(insns, ctx.graph, ctx.tables, home, id);
            // objtool's is_special_call(): the ftrace call at function entry (made before any
            // frame exists, and patched to a nop at boot) and calls into the middle of an
            // instruction (the SRSO/retbleed thunks hide code inside other instructions).
            // Intra-function calls (retpolines, RSB stuffing) are jumps that push, not calls.
            if fp && matches!(step, Step::Call(_) | Step::CallIndirect) && !p.state.has_frame() {
                let special_call = match step {
                    Step::Call(Dest::Entry(g)) => ctx.graph.func(g).name == "__fentry__",
                    Step::Call(Dest::Nowhere | Dest::Local(_)) => true,
                    Step::Call(Dest::Code(_) | Dest::Label(_)) => home.is_none(),
                    _ => false,
                };
                if !special_call {
                    return Err(Stop(Finding::new(
                        FindingKind::CallWithoutFrame,
                        insn.addr(),
                    )));
                }
            }
            let op = insn.op();
            if op.kind != crate::decode::OpKind::None {
                self.orc_confirmed = NOT_CONFIRMED;
            }
            if let Err(e) = p.state.apply(&op) {
                // objtool's exception: an rsp change it cannot follow is fine when the next
                // instruction carries an unwind hint that says what the state is. In code
                // outside functions the hints survive as ORC entries.
                if home.is_none() {
                    let next_hint = ctx.tables.orc.as_ref().and_then(|o| o.at(insn.end()));
                    if let Some(hinted) = next_hint.and_then(orc::hint_state) {
                        p.state = hinted;
                        mode = Mode::FallFrom;
                        continue;
                    }
                }
                let kind = match e {
                    StackError::Undefined => FindingKind::UndefinedStackState,
                    StackError::Realign => FindingKind::UnsupportedRealignment,
                    StackError::UnknownInsn => FindingKind::UnknownStackInstruction,
                    StackError::SpModification => FindingKind::UnsupportedStackModification,
                };
                return Err(Stop(Finding::new(kind, insn.addr())));
            }
            match step {
                Step::Next | Step::CallIndirect => {
                    // iretq in a function must pop a frame the function built itself
                    // (sync_core()'s iret-to-self); anything else leaves the function.
                    if insn.kind == Kind::Iretq
                        && (p.state.stack_size < 8 || !iret_frame_built(insns, id))
                    {
                        return Err(Stop(Finding::new(
                            FindingKind::KernelEntryExit,
                            insn.addr(),
                        )));
                    }
                }
                Step::Call(Dest::Entry(g)) => {
                    if ctx.graph.noreturn[g as usize] {
                        return Ok(());
                    }
                }
                Step::Call(Dest::Code(t) | Dest::Label(t))
                    if home.is_some() && ctx.graph.code_is_noreturn(t) =>
                {
                    return Ok(());
                }
                Step::Call(Dest::Local(t) | Dest::Code(t) | Dest::Label(t))
                    if matches!(step, Step::Call(Dest::Local(_))) || home.is_none() =>
                {
                    // A call to code of the same function, or within code outside functions
                    // (retpolines, RSB stuffing): the return address stays on the stack for
                    // the code at the target, and nothing returns to after the call.
                    let mut pushed = p.state;
                    pushed.slot(8).map_err(|_| {
                        Stop(Finding::new(FindingKind::UndefinedStackState, insn.addr()))
                    })?;
                    pushed.intra = pushed.stack_size;
                    self.b.work.push(Pending {
                        id: t,
                        home,
                        state: pushed,
                        mode: Mode::Enter,
                        confirmed: NOT_CONFIRMED,
                    });
                    return Ok(());
                }
                Step::Call(_) => {}
                Step::Branch(d) | Step::Goto(d) => {
                    // The jump's target first, then the fall-through: the path goes on at the
                    // target at once, as it would if the target were queued and taken next.
                    if matches!(step, Step::Branch(_)) {
                        self.b.work.push(Pending {
                            id,
                            home,
                            state: p.state,
                            mode: Mode::FallFrom,
                            confirmed: self.orc_confirmed,
                        });
                    }
                    match self.dest(d, home, insn.addr(), &p.state)? {
                        Some((target, target_home)) => {
                            (id, home, mode) = (target, target_home, Mode::Enter);
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
                Step::Table => {
                    for &t in ctx.graph.tables[&id].iter().rev() {
                        self.b.work.push(Pending {
                            id: t,
                            home,
                            state: p.state,
                            mode: Mode::Enter,
                            confirmed: self.orc_confirmed,
                        });
                    }
                    return Ok(());
                }
                Step::Dynamic | Step::FarJump => return self.sibling(insn.addr(), &p.state),
                Step::Return | Step::CondReturn
                    if p.state.intra != 0 && p.state.intra == p.state.stack_size =>
                {
                    // The retpoline's `ret`: it pops the slot an intra-function call pushed
                    // and overwrote with the target, so it is an indirect tail call made with
                    // the frame as it was before that call.
                    let mut popped = p.state;
                    popped.intra = 0;
                    popped.slot(-8).map_err(|_| {
                        Stop(Finding::new(FindingKind::UndefinedStackState, insn.addr()))
                    })?;
                    self.sibling(insn.addr(), &popped)?;
                    if step == Step::Return {
                        return Ok(());
                    }
                }
                Step::Return | Step::CondReturn => {
                    if p.state.modified() && !self.hint_walk {
                        return Err(Stop(Finding::new(
                            FindingKind::ReturnModifiedFrame,
                            insn.addr(),
                        )));
                    }
                    if step == Step::Return {
                        return Ok(());
                    }
                }
                Step::DeadEnd => return Ok(()),
                // Entry code outside functions may leave the kernel; a callable function not.
                Step::ContextSwitch if self.hint_walk => return Ok(()),
                Step::ContextSwitch => {
                    return Err(Stop(Finding::new(
                        FindingKind::KernelEntryExit,
                        insn.addr(),
                    )))
                }
                Step::Invalid => {
                    return Err(Stop(Finding::new(FindingKind::CantDecode, insn.addr())))
                }
            }
            mode = Mode::FallFrom;
        }
    }

    /// Runs on from `id` through the instructions that follow it in the function's own range
    /// and do nothing a walk must stop for: no branch, no stack operation, no table entry, no
    /// branch lands on them. Entering and executing one is only its visit and the ORC check,
    /// which is all this does, in the order the full step would. Returns the last instruction
    /// executed, for the full step to fall through from, or `None` where the path meets code
    /// already walked.
    #[inline]
    fn plain_run(&mut self, mut id: InsnId, state: &Cfi) -> Option<InsnId> {
        use crate::kernel::{ALT_EXIT, ALT_START, EX_FAULT, JUMP_LABEL};
        let ctx = self.ctx;
        let (insns, tables) = (ctx.insns, ctx.tables);
        loop {
            let next = id + 1;
            if next >= self.own_end || tables.flags(id) & ALT_EXIT != 0 {
                return Some(id);
            }
            let (insn, n) = (insns.get(id), insns.get(next));
            // The common kinds among those that only go on (`graph::goes_on`); taking all of
            // them here gives the same walks but executes more instructions (measured).
            let plain = matches!(n.kind, Kind::Other | Kind::Nop)
                && n.op().kind == crate::decode::OpKind::None;
            if !plain
                || n.addr() != insn.end()
                || tables.flags(next) & (JUMP_LABEL | EX_FAULT | ALT_START) != 0
                || ctx.graph.is_target(next)
            {
                return Some(id);
            }
            if !self.visit(next) {
                return None;
            }
            if let Some(orc) = ctx.orc {
                self.verify_orc(orc, n.addr(), state);
            }
            id = next;
        }
    }

    /// The instruction after `id` on a fall-through, and its home; a finding if the path
    /// leaves its function or its section that way.
    fn fall_through(
        &self,
        id: InsnId,
        home: Option<FuncId>,
    ) -> Result<(InsnId, Option<FuncId>), Stop> {
        let ctx = self.ctx;
        let insns = ctx.insns;
        let insn = insns.get(id);
        if let Some(back) = alt_exit(ctx.tables, id) {
            let back_home = ctx.graph.func_of(back).map(|g| ctx.graph.home(g));
            return Ok((back, back_home));
        }
        let next = id + 1;
        if next as usize >= insns.len() || insns.get(next).addr() != insn.end() {
            return Err(Stop(Finding::new(FindingKind::EndOfSection, insn.addr())));
        }
        // Most instructions are followed by the next one of the function's own range: its
        // code, no region test needed.
        if home == Some(self.f) && next < self.own_end {
            return Ok((next, home));
        }
        let next_addr = insns.get(next).addr();
        if self.hint_walk && home.is_none() {
            // Code outside functions may run on into a function, as objtool allows.
            let next_home = ctx.graph.func_of(next).map(|g| ctx.graph.home(g));
            return Ok((next, next_home));
        }
        if !ctx.graph.in_region(home, next_addr) {
            let walked = ctx.graph.func(self.f).name;
            let next_name = ctx
                .graph
                .func_at(next_addr)
                .or_else(|| ctx.graph.func_after(next_addr))
                .map_or("<end of section>", |g| ctx.graph.func(g).name);
            return Err(Stop(Finding::with(
                FindingKind::FallsThrough,
                ctx.graph.func(self.f).addr,
                format!("{walked}() falls through to next function {next_name}()"),
            )));
        }
        Ok((next, home))
    }

    /// Queues a path at a direct branch's destination.
    fn follow(&mut self, d: Dest, home: Option<FuncId>, from: u64, state: Cfi) -> Result<(), Stop> {
        if let Some((id, home)) = self.dest(d, home, from, &state)? {
            self.b.work.push(Pending {
                id,
                home,
                state,
                mode: Mode::Enter,
                confirmed: self.orc_confirmed,
            });
        }
        Ok(())
    }

    /// Where a path goes on at a direct branch's destination, and that code's home; `None`
    /// when the branch is a tail call (checked here) and the path ends.
    fn dest(
        &self,
        d: Dest,
        home: Option<FuncId>,
        from: u64,
        state: &Cfi,
    ) -> Result<Option<(InsnId, Option<FuncId>)>, Stop> {
        match d {
            Dest::Local(t) => Ok(Some((t, home))),
            Dest::Into(g, t) => Ok(Some((t, Some(self.ctx.graph.home(g))))),
            // From a function, a jump to a named label outside functions is a tail call.
            Dest::Label(_) if home.is_some() => self.sibling(from, state).map(|()| None),
            Dest::Code(t) | Dest::Label(t) => Ok(Some((t, None))),
            Dest::Entry(_) => self.sibling(from, state).map(|()| None),
            Dest::Nowhere => Err(Stop(Finding::new(FindingKind::BadJumpDestination, from))),
        }
    }

    /// Rule 3: a tail call must leave the frame as the function found it. The rule is about
    /// callable functions: a walk from an unwind hint in code outside functions does not apply
    /// it, as objtool does not.
    fn sibling(&self, at: u64, state: &Cfi) -> Result<(), Stop> {
        if !state.modified() || self.hint_walk {
            return Ok(());
        }
        let kind = if self.ctx.cfg.frame_pointer && state.frame_pointer_changed() {
            FindingKind::SiblingCallChangedFrame
        } else {
            FindingKind::SiblingCallModifiedFrame
        };
        Err(Stop(Finding::new(kind, at)))
    }

    /// The first instruction of the function (or its cold parts) no path reached, ignoring
    /// padding (nops, int3 and ud2 that compilers and the linker place where nothing runs) and
    /// dead code right after a call to a function that never returns: the compiler emitted it
    /// because it could not know (an inline-asm block that makes several calls, as
    /// call_on_stack() does), and it is exactly the code objtool's hand-kept noreturn list
    /// would have had it walk.
    fn first_unreachable(&self) -> Option<Finding> {
        let g = self.ctx.graph;
        let insns = self.ctx.insns;
        let padding = |k: Kind| matches!(k, Kind::Nop | Kind::Int3 | Kind::Ud2);
        let after_noreturn_call = |id: InsnId| {
            id > 0 && {
                let prev = insns.get(id - 1);
                prev.kind == Kind::Call
                    && prev.end() == insns.get(id).addr()
                    && match g.resolve_branch(insns, Some(self.f), id - 1) {
                        Dest::Entry(callee) => g.noreturn[callee as usize],
                        Dest::Code(t) | Dest::Label(t) => g.code_is_noreturn(t),
                        _ => false,
                    }
            }
        };
        let ranges = std::iter::once(self.f).chain(g.cold_parts(self.f).iter().copied());
        for part in ranges {
            let pf = g.func(part);
            let Some(first) = self.b.seen.first_unseen(pf.first, pf.end) else {
                continue;
            };
            // The dead code after such calls (the run of unreached instructions that follows
            // one), and the code only it leads to (its branches' targets and the runs after
            // them): flooded over the instructions no path reached. A noreturn callee known
            // only in the whole image (Rust's u128 helpers are panicking stubs in the kernel:
            // `__rust__udivti3` is endbr64; ud2) leaves whole blocks that only the dead code
            // after the call branches to.
            let mut dead = vec![false; (pf.end - first) as usize];
            let mut work: Vec<InsnId> = (first..pf.end)
                .filter(|&id| !self.b.seen.contains(id) && after_noreturn_call(id))
                .collect();
            while let Some(id) = work.pop() {
                let slot = (id - first) as usize;
                if dead[slot] {
                    continue;
                }
                dead[slot] = true;
                let insn = insns.get(id);
                let target = matches!(insn.kind, Kind::Jump | Kind::JumpCond)
                    .then(|| insns.target(id))
                    .flatten();
                let next = (id + 1 < pf.end).then_some(id + 1);
                for t in [target, next].into_iter().flatten() {
                    if (first..pf.end).contains(&t) && !self.b.seen.contains(t) {
                        work.push(t);
                    }
                }
            }
            let mut from = first;
            while let Some(id) = self.b.seen.first_unseen(from, pf.end) {
                let insn = insns.get(id);
                if !dead[(id - first) as usize] && !padding(insn.kind) {
                    return Some(Finding::new(
                        FindingKind::UnreachableInstruction,
                        insn.addr(),
                    ));
                }
                from = id + 1;
            }
        }
        None
    }
}

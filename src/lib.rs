//! stackval: link-stage stack metadata validation for x86-64 Linux kernel images.
//!
//! The pipeline, one phase per module, each borrowing what the previous ones produced:
//!
//! 1. [`image`]: memory-map the vmlinux, read sections, symbols, relocations;
//! 2. [`decode`]: decode every executable byte once into compact instructions;
//! 3. [`kernel`]: the kernel's tables: static branches, exception fixups, alternatives,
//!    bug entries, ORC;
//! 4. [`graph`]: functions, `.cold` parts, the global call graph, switch tables, noreturn;
//! 5. [`check`]: walk every function's paths with the stack state, apply the rules;
//! 6. [`report`]: locate, sort and print the findings.
//!
//! [`check_image`] runs them in that order; the command-line tool, the tests and the
//! benchmarks all call it.

pub mod alloc;
pub mod check;
pub mod decode;
pub mod graph;
pub mod image;
pub mod kernel;
pub mod known;
pub mod report;

use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use image::{Image, InputError};
use report::Diagnostic;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Force the frame-pointer rules on or off; by default they apply when the image has no
    /// ORC unwind table (a CONFIG_UNWINDER_FRAME_POINTER kernel).
    pub frame_pointer: Option<bool>,
    /// Show a progress bar on stderr if it is a terminal.
    pub progress: bool,
    /// Force ORC verification on or off; by default it runs when the image has an ORC table.
    pub verify_orc: Option<bool>,
    /// Build the reliability report.
    pub report: bool,
}

/// What a check of one image measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub functions: usize,
    pub validated: usize,
    pub instructions: usize,
    pub text_bytes: u64,
    pub insns_visited: u64,
    pub noreturn: usize,
    pub noreturn_rounds: u32,
    pub switch_tables: usize,
    /// ORC verification tallies, when it ran.
    pub orc_verified: Option<check::orc::OrcStats>,
    pub frame_pointer: bool,
    pub relocations: bool,
    pub orc: bool,
    pub kernel_release: Option<String>,
    pub phases: Vec<Timing>,
    /// Steps inside the phases (`"graph: noreturn"`), in order.
    pub steps: Vec<Timing>,
    pub wall: Duration,
}

pub struct Checked {
    pub diagnostics: Vec<Diagnostic>,
    pub stats: Stats,
    pub reliability: Option<report::Reliability>,
}

/// Maps `path` read-only.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap, InputError> {
    let err = |what: String| InputError {
        file: path.display().to_string(),
        what,
    };
    let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    if len == 0 {
        return Err(err("empty file".into()));
    }
    // SAFETY: the map is read-only and private to this process. If another process truncates
    // the file while we read it, the kernel delivers SIGBUS, as it does for linkers and objtool
    // reading their inputs; stackval never writes the file.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))
}

/// How long a phase or step took: wall time, and the CPU time of the whole process (all
/// threads, user and system) over the same interval, so that `cpu / wall` is how many cores it
/// kept busy: about 1 for a serial step.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub name: &'static str,
    pub wall: Duration,
    pub cpu: Duration,
    /// The change in the process's anonymous resident memory, in KiB, when
    /// [`count_memory`] is on (0 otherwise): memory the kernel zeroed for it, which costs
    /// time of its own.
    pub anon_kib: i64,
}

/// A point in wall and process CPU time (and anonymous memory, see [`count_memory`]).
#[derive(Clone, Copy)]
struct Mark {
    wall: Instant,
    cpu: Duration,
    anon_kib: i64,
}

static COUNT_MEMORY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`Timing`]s note the change in anonymous memory (a read of `/proc/self/statm` at
/// each step: for `--time`, not for every check).
pub fn count_memory(on: bool) {
    COUNT_MEMORY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The process's anonymous resident memory in KiB (resident minus file-backed and shared
/// pages), or 0 where `/proc` cannot say.
fn anon_kib() -> i64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: Vec<i64> = statm
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as i64;
    match pages[..] {
        [_, resident, shared, ..] => (resident - shared) * page / 1024,
        _ => 0,
    }
}

impl Mark {
    fn now() -> Mark {
        let memory = COUNT_MEMORY.load(std::sync::atomic::Ordering::Relaxed);
        Mark {
            wall: Instant::now(),
            cpu: process_cpu(),
            anon_kib: if memory { anon_kib() } else { 0 },
        }
    }

    /// The time from `self` to now, named; `self` becomes now.
    fn lap(&mut self, name: &'static str) -> Timing {
        let now = Mark::now();
        let t = Timing {
            name,
            wall: now.wall - self.wall,
            cpu: now.cpu.saturating_sub(self.cpu),
            anon_kib: now.anon_kib - self.anon_kib,
        };
        *self = now;
        t
    }
}

/// User plus system CPU time of the whole process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Steps are recorded on this thread while one lives (see [`lap`]).
struct Recording;

impl Recording {
    fn start() -> Recording {
        TIMING.with(|t| t.set(true));
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        TIMING.with(|t| t.set(false));
    }
}

struct Timer {
    start: Instant,
    last: Mark,
    phases: Vec<Timing>,
}

impl Timer {
    fn new() -> Self {
        let now = Mark::now();
        LAPS.with(|l| l.borrow_mut().clear());
        LAST_LAP.with(|l| l.set(now));
        Timer {
            start: now.wall,
            last: now,
            phases: Vec::new(),
        }
    }
    fn phase(&mut self, name: &'static str) {
        self.phases.push(self.last.lap(name));
        LAST_LAP.with(|l| l.set(self.last));
    }
}

thread_local! {
    static LAPS: std::cell::RefCell<Vec<Timing>> = const {
        std::cell::RefCell::new(Vec::new())
    };
    static LAST_LAP: std::cell::Cell<Mark> = std::cell::Cell::new(Mark::now());
    /// Whether a [`check_image`] on this thread is recording steps (library callers that only
    /// parse or decode record nothing).
    static TIMING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Scratch memory for each worker thread of the pool, kept from task to task: what
/// `map_init` gives, without its fresh value for every piece of work it splits off. Loops over
/// many small tasks split them finely (`with_max_len`), so that at the end the last tasks
/// spread over the workers instead of one worker finishing a long run alone while the others
/// wait; `map_init` would start each of those pieces with empty buffers.
pub(crate) struct PerWorker<T>(Vec<std::sync::Mutex<T>>);

impl<T: Default> PerWorker<T> {
    pub(crate) fn new() -> Self {
        PerWorker(
            (0..rayon::current_num_threads().max(1))
                .map(|_| Default::default())
                .collect(),
        )
    }

    /// Runs `f` with the calling worker's value (never contended: a worker runs one task at
    /// a time, and a task that waits inside for other tasks must not call this again).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let worker = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        let mut value = self.0[worker].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut value)
    }
}

/// The lists `list(p)` of all `parts`, one after another, each element passed through `f` with
/// the index of its part. The parts are copied into place in parallel: for lists of hundreds of
/// thousands of entries, which one thread would append one part at a time.
pub(crate) fn concat_par<P: Sync, T: Copy + Send + Sync>(
    parts: &[P],
    list: impl Fn(&P) -> &[T] + Sync,
    f: impl Fn(usize, T) -> T + Sync,
) -> Vec<T> {
    let total = parts.iter().map(|p| list(p).len()).sum();
    let mut out: Vec<T> = Vec::with_capacity(total);
    let mut dsts = Vec::with_capacity(parts.len());
    let mut rest = &mut out.spare_capacity_mut()[..total];
    for p in parts {
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(list(p).len());
        dsts.push(dst);
        rest = tail;
    }
    dsts.into_par_iter().enumerate().for_each(|(i, dst)| {
        for (d, &e) in dst.iter_mut().zip(list(&parts[i])) {
            d.write(f(i, e));
        }
    });
    // SAFETY: the parts' lengths add up to `total`, and every slot below it was written
    // above (each destination has its part's length).
    unsafe { out.set_len(total) };
    out
}

/// Ends a step inside a phase (`"graph: noreturn"`): the time since the phase or the previous
/// step ended, shown by `check --time`. Steps run on the thread that called [`check_image`],
/// between the parallel parts.
pub(crate) fn lap(name: &'static str) {
    if !TIMING.with(|t| t.get()) {
        return;
    }
    let t = LAST_LAP.with(|l| {
        let mut m = l.get();
        let t = m.lap(name);
        l.set(m);
        t
    });
    LAPS.with(|l| l.borrow_mut().push(t));
}

/// Returns a closure that runs `f` on whichever thread it is called and brings back, with its
/// result, the steps it recorded there ([`lap`]), timed from when this was called, if this
/// thread records steps; for the calling thread to add to its own.
fn recorded<T>(f: impl FnOnce() -> T + Send) -> impl FnOnce() -> (T, Vec<Timing>) + Send {
    let timing = TIMING.with(|t| t.get());
    let since = LAST_LAP.with(|l| l.get());
    move || {
        let was = TIMING.with(|t| t.replace(timing));
        let last = LAST_LAP.with(|l| l.replace(since));
        let laps = LAPS.with(|l| std::mem::take(&mut *l.borrow_mut()));
        let out = f();
        let steps = LAPS.with(|l| std::mem::replace(&mut *l.borrow_mut(), laps));
        LAST_LAP.with(|l| l.set(last));
        TIMING.with(|t| t.set(was));
        (out, steps)
    }
}

/// Checks one image: the whole pipeline.
pub fn check_image(path: &Path, opts: &Options) -> Result<Checked, InputError> {
    let _recording = Recording::start();
    let mut timer = Timer::new();
    let map = map_file(path)?;
    let image = Image::parse(path, &map)?;
    timer.phase("load");

    let mut insns = decode::decode_image(&image);
    timer.phase("decode");

    // The kernel's tables and the functions (which need no table) at once: each has
    // stretches that keep one core only. The functions' steps are recorded on the worker
    // thread that finds them and shown with this thread's. The code ranges the walks need
    // (a pass over the symbols, on one core) fill a gap too.
    let (tables, ((functions, steps), (sections, unhinted))) = rayon::join(
        || kernel::read(&image, &insns),
        || {
            rayon::join(recorded(|| graph::functions(&image, &insns)), || {
                code_ranges(&image)
            })
        },
    );
    LAPS.with(|l| l.borrow_mut().extend(steps));
    timer.phase("tables+functions");

    let orc = image.section_by_name(".orc_unwind").is_some();
    let frame_pointer = opts.frame_pointer.unwrap_or(!orc);
    let graph = graph::build_from(functions, &image, &mut insns, &tables, frame_pointer);
    timer.phase("graph");

    let roots = graph.funcs.iter().filter(|f| f.skip.is_none()).count();
    let progress = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(roots as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} functions ({eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("stackval: {}", path.display()));
        bar
    });
    let verify_orc = opts.verify_orc.unwrap_or(true) && tables.orc.is_some();
    let outcome = check::run(
        &insns,
        &graph,
        &tables,
        &sections,
        &unhinted,
        check::Config {
            frame_pointer,
            verify_orc,
        },
        progress.as_ref(),
    );
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    timer.phase("validate");

    let stats = Stats {
        functions: graph.funcs.len(),
        validated: outcome.functions_validated,
        instructions: insns.count as usize,
        text_bytes: insns.bytes,
        insns_visited: outcome.insns_visited,
        noreturn: graph.noreturn.iter().filter(|&&n| n).count(),
        noreturn_rounds: graph.noreturn_rounds,
        switch_tables: graph.tables.len(),
        orc_verified: verify_orc.then_some(outcome.orc),
        frame_pointer,
        relocations: image.has_relocations(),
        orc,
        kernel_release: image.kernel_release().map(str::to_owned),
        phases: Vec::new(),
        steps: Vec::new(),
        wall: Duration::ZERO,
    };
    let diagnostics = report::diagnostics(&image, &graph, outcome.findings.clone());
    let reliability = opts.report.then(|| report::Reliability {
        tables: tables.summary.clone(),
        ..reliability(&image, &graph, &outcome, verify_orc)
    });
    timer.phase("report");

    drop(graph);
    drop(insns);
    drop(image);
    drop(map);
    timer.phase("unmap");
    Ok(Checked {
        diagnostics,
        reliability,
        stats: Stats {
            phases: timer.phases,
            steps: LAPS.with(|l| std::mem::take(&mut *l.borrow_mut())),
            wall: timer.start.elapsed(),
            ..stats
        },
    })
}

/// The decode floor: maps and parses the image, then decodes every executable byte once with
/// iced-x86, on all worker threads, over the same pieces a check decodes, and keeps nothing:
/// no classification, no instruction list, no target resolution. Returns the number of
/// instructions, the executable bytes decoded and the seconds it took (mapping included).
pub fn decode_only(path: &Path) -> Result<(usize, u64, f64), InputError> {
    use rayon::prelude::*;
    let start = Instant::now();
    let map = map_file(path)?;
    let image = Image::parse(path, &map)?;
    let pieces = decode::pieces(&image);
    let count: usize = decode::batches(&pieces, decode::BATCH)
        .par_iter()
        .map(|batch| {
            let mut ins = iced_x86::Instruction::default();
            let mut n = 0;
            for &(addr, bytes) in batch.iter() {
                let mut d =
                    iced_x86::Decoder::with_ip(64, bytes, addr, iced_x86::DecoderOptions::NONE);
                while d.can_decode() {
                    d.decode_out(&mut ins);
                    n += 1;
                }
            }
            n
        })
        .sum();
    let bytes = pieces.iter().map(|p| p.1.len() as u64).sum();
    Ok((count, bytes, start.elapsed().as_secs_f64()))
}

/// An address range `[start, end)`.
pub type Range = (u64, u64);

/// The executable sections' address ranges, and the ranges whose ORC entries are not unwind
/// hints (alternative replacement code, and holes left by replaced `__weak` functions), both
/// sorted: what [`check::run`] needs besides the graph.
pub fn code_ranges(image: &Image<'_>) -> (Vec<Range>, Vec<Range>) {
    let mut sections: Vec<(u64, u64)> = image
        .exec_sections()
        .map(|s| (s.addr, s.addr + s.size))
        .collect();
    sections.sort_unstable();
    let mut unhinted = alternative_code(image);
    unhinted.extend(symbol_holes(image));
    unhinted.sort_unstable();
    (sections, unhinted)
}

/// The address ranges of the alternatives' own code, `.altinstr_replacement` and
/// `.altinstr_aux`: code no symbol covers that runs for the function at an alternative's site.
pub(crate) fn alternative_code(image: &Image<'_>) -> Vec<Range> {
    image
        .exec_sections()
        .filter(|s| s.name == ".altinstr_replacement" || s.name == ".altinstr_aux")
        .map(|s| (s.addr, s.addr + s.size))
        .collect()
}

/// Builds the reliability report from the walk's per-function results.
fn reliability(
    image: &Image<'_>,
    graph: &graph::Graph<'_>,
    outcome: &check::Outcome,
    orc: bool,
) -> report::Reliability {
    use graph::Skip;
    let mut skipped = std::collections::BTreeMap::new();
    let mut uncertified = Vec::new();
    for f in &graph.funcs {
        let Some(skip) = f.skip else { continue };
        let why = match skip {
            Skip::ColdPart => "cold part (validated with its parent)",
            Skip::Orphan => "cold part whose parent was not found (not validated)",
            Skip::Prefix => "__pfx_/__cfi_ padding (not code that runs as written)",
            Skip::OrcUndefined => "ORC undefined: objtool did not validate it",
            Skip::NonStandard => "non-standard (built-in list or --allow)",
            Skip::DeadCode => "dead code of a replaced __weak function",
        };
        *skipped.entry(why).or_insert(0) += 1;
        let reason = match skip {
            Skip::OrcUndefined => Some(
                "no ORC unwind information: the unwinder reports traces through it as unreliable"
                    .to_string(),
            ),
            Skip::NonStandard => known::non_standard(f.name, true).map(str::to_string),
            Skip::Orphan => Some("cold part with no parent found: not validated".to_string()),
            _ => None,
        };
        if let Some(reason) = reason {
            uncertified.push(report::Uncertified {
                function: f.name.to_string(),
                address: f.addr,
                reason,
            });
        }
    }
    let mut clean = 0;
    for r in &outcome.functions {
        if r.findings.is_empty() {
            clean += 1;
        } else {
            let f = graph.func(r.func);
            uncertified.push(report::Uncertified {
                function: f.name.to_string(),
                address: f.addr,
                reason: r.findings[0].message.clone(),
            });
        }
    }
    uncertified.sort_by_key(|u| u.address);
    let orc_summary = orc.then(|| report::OrcSummary {
        checked: outcome.orc.confirmed + outcome.orc.mismatched,
        counts: outcome.orc,
    });
    let certified = clean == outcome.functions.len()
        && outcome.findings.is_empty()
        && orc_summary
            .as_ref()
            .is_none_or(|o| o.counts.mismatched == 0 && o.counts.uncovered == 0);
    report::Reliability {
        file: image.file.clone(),
        kernel_release: image.kernel_release().map(str::to_owned),
        functions: graph.funcs.len(),
        validated: outcome.functions_validated,
        validated_clean: clean,
        orc: orc_summary,
        hint_walks: outcome.hint_roots,
        unchecked_returns: outcome.unvalidated_returns,
        tables: Vec::new(),
        skipped,
        uncertified,
        verdict: if certified {
            "certified"
        } else {
            "not certified"
        },
    }
}

/// Code right after a function that no symbol covers up to the next symbol: what is left of a
/// `__weak` function the linker replaced. Alignment padding lies there too, harmlessly.
fn symbol_holes(image: &Image<'_>) -> Vec<(u64, u64)> {
    let mut holes = Vec::new();
    let syms = &image.symbols;
    let mut covered_to = 0u64;
    for (i, s) in syms.iter().enumerate() {
        let sec = &image.sections[s.section as usize];
        if !sec.exec {
            continue;
        }
        if s.kind == image::SymKind::Func && s.size > 0 {
            let end = s.addr + s.size;
            covered_to = covered_to.max(end);
            let next = syms[i + 1..]
                .iter()
                .find(|n| n.addr >= end || n.section != s.section)
                .filter(|n| n.section == s.section)
                .map_or(sec.addr + sec.size, |n| n.addr);
            if next > end && covered_to <= end {
                holes.push((end, next));
            }
        }
    }
    holes.sort_unstable();
    holes.dedup();
    holes
}

/// Describes one function's place in the call graph, for `stackval graph`.
pub fn describe_function(path: &Path, name: &str) -> Result<Option<String>, InputError> {
    use std::fmt::Write;
    let map = map_file(path)?;
    let image = Image::parse(path, &map)?;
    let mut insns = decode::decode_image(&image);
    let tables = kernel::read(&image, &insns);
    let frame_pointer = image.section_by_name(".orc_unwind").is_none();
    let graph = graph::build(&image, &mut insns, &tables, frame_pointer);
    let Some(sym) = image
        .symbols
        .iter()
        .find(|s| s.name == name && s.kind == image::SymKind::Func)
    else {
        return Ok(None);
    };
    let Some(f) = graph.func_at(sym.addr) else {
        return Ok(None);
    };
    let f = graph.home(f);
    let func = graph.func(f);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}() at {:#x}, {} bytes",
        func.name, func.addr, func.size
    );
    if func.name != name {
        let _ = writeln!(out, "  alias of: {name}");
    }
    let returns = if graph.noreturn[f as usize] {
        "no (noreturn)"
    } else {
        "yes"
    };
    let _ = writeln!(out, "  returns: {returns}");
    for &c in graph.cold_parts(f) {
        let cf = graph.func(c);
        let _ = writeln!(
            out,
            "  cold part: {}() at {:#x}, {} bytes",
            cf.name, cf.addr, cf.size
        );
    }
    let kind_name = |k: graph::EdgeKind| match k {
        graph::EdgeKind::Call => "call",
        graph::EdgeKind::Sibling => "sibling call",
        graph::EdgeKind::CrossJump => "cross-function jump",
        graph::EdgeKind::Cold => "jump to cold part",
    };
    let edges = graph::Edges::new(&graph, &insns, &tables);
    let mut callees: Vec<_> = edges
        .from(f)
        .iter()
        .filter(|e| e.kind != graph::EdgeKind::Cold || graph.home(e.to) != f)
        .collect();
    callees.sort_by_key(|e| (e.kind, graph.func(e.to).name));
    let _ = writeln!(out, "  callees: {}", callees.len());
    for e in callees {
        let at = insns.get(e.insn).addr();
        let _ = writeln!(
            out,
            "    {:<20} {}()  from {:#x}",
            kind_name(e.kind),
            graph.func(e.to).name,
            at
        );
    }
    let mut callers: Vec<_> = graph
        .cold_parts(f)
        .iter()
        .chain(std::iter::once(&f))
        .flat_map(|&t| edges.to(t))
        .filter(|e| e.from != f)
        .collect();
    callers.sort_by_key(|e| (e.kind, graph.func(e.from).name, e.insn));
    let _ = writeln!(out, "  callers: {}", callers.len());
    for e in callers {
        let at = insns.get(e.insn).addr();
        let _ = writeln!(
            out,
            "    {:<20} {}()  at {:#x}",
            kind_name(e.kind),
            graph.func(e.from).name,
            at
        );
    }
    Ok(Some(out))
}

/// The unit tests run on the command's allocator too.
#[cfg(test)]
#[global_allocator]
static ALLOC: alloc::HugeAlloc = alloc::HugeAlloc;

#[cfg(test)]
mod tests {
    #[test]
    fn concat_par_keeps_parts_in_order() {
        let parts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![4], vec![5, 6]];
        let all = super::concat_par(&parts, |p| p, |i, e| e * 10 + i as u32);
        assert_eq!(all, [10, 20, 30, 42, 53, 63]);
        let none: Vec<Vec<u32>> = Vec::new();
        assert!(super::concat_par(&none, |p| p, |_, e| e).is_empty());
    }
}

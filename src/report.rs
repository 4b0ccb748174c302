//! Findings as data, and their rendering.
//!
//! A check produces [`Finding`]s: a stable kind, an address and a message. This module turns
//! them into [`Diagnostic`]s located the way objtool locates its warnings (`func()+0x12`, or the
//! nearest symbol for code outside functions), sorts them so output never depends on thread
//! scheduling, and prints them as text or JSON lines.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use crate::graph::Graph;
use crate::image::Image;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    ReturnOutsideFunction,
    CallWithoutFrame,
    SiblingCallChangedFrame,
    SiblingCallModifiedFrame,
    KernelEntryExit,
    FramePointerMismatch,
    StackStateMismatch,
    ReturnModifiedFrame,
    UnreachableInstruction,
    CantDecode,
    NoStartingInstruction,
    FallsThrough,
    EndOfSection,
    BadJumpDestination,
    UndefinedStackState,
    UnsupportedRealignment,
    UnknownStackInstruction,
    UnsupportedStackModification,
    OrcMismatch,
    OrcUncovered,
}

impl FindingKind {
    /// objtool's wording for the finding.
    pub fn text(self) -> &'static str {
        use FindingKind::*;
        match self {
            ReturnOutsideFunction => "return instruction outside of a callable function",
            CallWithoutFrame => "call without frame pointer save/setup",
            SiblingCallChangedFrame => {
                "sibling call from callable instruction with changed frame pointer"
            }
            SiblingCallModifiedFrame => {
                "sibling call from callable instruction with modified stack frame"
            }
            KernelEntryExit => "kernel entry/exit from callable instruction",
            FramePointerMismatch => "frame pointer state mismatch",
            StackStateMismatch => "stack state mismatch",
            ReturnModifiedFrame => "return with modified stack frame",
            UnreachableInstruction => "function has unreachable instruction",
            CantDecode => "can't decode instruction",
            NoStartingInstruction => "can't find starting instruction",
            FallsThrough => "falls through to next function",
            EndOfSection => "unexpected end of section",
            BadJumpDestination => "can't find jump destination",
            UndefinedStackState => "undefined stack state",
            UnsupportedRealignment => "unsupported stack pointer realignment",
            UnknownStackInstruction => "unknown stack-related instruction",
            UnsupportedStackModification => "unsupported stack register modification",
            OrcMismatch => "ORC mismatch",
            OrcUncovered => "no ORC entry covers this instruction",
        }
    }

    pub fn id(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// What a check found, before it is located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub addr: u64,
    /// The full message; usually `kind.text()`, sometimes with details.
    pub message: String,
}

impl Finding {
    pub fn new(kind: FindingKind, addr: u64) -> Self {
        Finding {
            kind,
            addr,
            message: kind.text().to_string(),
        }
    }
    pub fn with(kind: FindingKind, addr: u64, message: String) -> Self {
        Finding {
            kind,
            addr,
            message,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub kind: FindingKind,
    pub function: Option<String>,
    pub offset: u64,
    #[serde(serialize_with = "hex")]
    pub address: u64,
    pub section: String,
    /// `func()+0x12`, `func()`, or `symbol+0x12` / `.section+0x12` outside functions.
    pub location: String,
    pub message: String,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

impl Diagnostic {
    /// The objtool-style line, labelled `warning` or, with `--werror`, `error`.
    pub fn text(&self, severity: &str) -> String {
        if self.location.is_empty() {
            format!("{}: {severity}: stackval: {}", self.file, self.message)
        } else {
            format!(
                "{}: {severity}: stackval: {}: {}",
                self.file, self.location, self.message
            )
        }
    }
}

/// Locates, sorts and de-duplicates findings.
pub fn diagnostics(
    image: &Image<'_>,
    graph: &Graph<'_>,
    mut findings: Vec<Finding>,
) -> Vec<Diagnostic> {
    findings.sort_by(|a, b| (a.addr, a.kind, &a.message).cmp(&(b.addr, b.kind, &b.message)));
    findings.dedup();
    findings
        .into_iter()
        .map(|f| {
            let section = image.section_at(f.addr).map(|s| s.name).unwrap_or("?");
            let func = graph.func_at(f.addr).map(|id| graph.func(id));
            let (function, offset, location) = match (f.kind, func) {
                (FindingKind::FallsThrough, Some(func)) => {
                    (Some(func.name.to_string()), 0, String::new())
                }
                (FindingKind::NoStartingInstruction, Some(func)) => {
                    (Some(func.name.to_string()), 0, format!("{}()", func.name))
                }
                (_, Some(func)) => {
                    let off = f.addr - func.addr;
                    (
                        Some(func.name.to_string()),
                        off,
                        format!("{}()+{:#x}", func.name, off),
                    )
                }
                (_, None) => {
                    let loc = match nearest_symbol(image, f.addr) {
                        Some((name, off)) => format!("{name}+{off:#x}"),
                        None => {
                            let off = image.section_at(f.addr).map_or(f.addr, |s| f.addr - s.addr);
                            format!("{section}+{off:#x}")
                        }
                    };
                    (None, 0, loc)
                }
            };
            Diagnostic {
                file: image.file.clone(),
                kind: f.kind,
                function,
                offset,
                address: f.addr,
                section: section.to_string(),
                location,
                message: f.message,
            }
        })
        .collect()
}

/// The closest symbol at or before `addr` in the same section; among symbols at that address,
/// a function's name (not a linker-script marker's).
fn nearest_symbol<'a>(image: &'a Image<'_>, addr: u64) -> Option<(&'a str, u64)> {
    let sec = image.section_at(addr)?;
    let i = image.symbols.partition_point(|s| s.addr <= addr);
    let usable = |s: &&crate::image::Symbol<'_>| {
        image.sections[s.section as usize].index == sec.index && !s.name.starts_with("__pfx_")
    };
    let best = image.symbols[..i].iter().rev().find(usable)?;
    let same_addr = image.symbols[..i]
        .iter()
        .rev()
        .take_while(|s| s.addr == best.addr);
    let chosen = same_addr
        .filter(usable)
        .find(|s| s.kind == crate::image::SymKind::Func)
        .unwrap_or(best);
    Some((chosen.name, addr - chosen.addr))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Writes findings to `out`. A closed pipe ends output quietly.
pub fn print(
    out: &mut impl Write,
    diags: &[Diagnostic],
    format: Format,
    werror: bool,
) -> io::Result<()> {
    let severity = if werror { "error" } else { "warning" };
    for d in diags {
        match format {
            Format::Text => writeln!(out, "{}", d.text(severity))?,
            Format::Json => {
                serde_json::to_writer(&mut *out, d)?;
                writeln!(out)?;
            }
        }
    }
    out.flush()
}

/// Counts by kind, for the summary line.
pub fn counts(diags: &[Diagnostic]) -> BTreeMap<FindingKind, usize> {
    let mut m = BTreeMap::new();
    for d in diags {
        *m.entry(d.kind).or_insert(0) += 1;
    }
    m
}

/// The reliability report of one image (`stackval check --report`): what a release engineer
/// attaches to a livepatch-capable kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Reliability {
    pub file: String,
    pub kernel_release: Option<String>,
    pub functions: usize,
    pub validated: usize,
    pub validated_clean: usize,
    pub orc: Option<OrcSummary>,
    /// Walks of code outside functions started from unwind hints in the ORC table.
    pub hint_walks: usize,
    /// Returns outside functions in code the ORC table leaves undefined (not checked).
    pub unchecked_returns: usize,
    /// What was read from each kernel table: entries, unresolved ones, detected layout.
    pub tables: Vec<String>,
    /// Functions not validated, by reason.
    pub skipped: BTreeMap<&'static str, usize>,
    /// Functions whose stack traces cannot be certified, with why.
    pub uncertified: Vec<Uncertified>,
    /// "certified" when every validated function is clean and the ORC table (if any) agrees
    /// with every instruction checked; "not certified" otherwise.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct OrcSummary {
    /// Instructions whose entry was compared: confirmed + mismatched.
    pub checked: u64,
    #[serde(flatten)]
    pub counts: crate::check::orc::OrcStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct Uncertified {
    pub function: String,
    #[serde(serialize_with = "hex")]
    pub address: u64,
    pub reason: String,
}

impl Reliability {
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "stackval reliability report: {}", self.file);
        if let Some(r) = &self.kernel_release {
            let _ = writeln!(o, "  kernel:               {r}");
        }
        let _ = writeln!(o, "  functions:            {}", self.functions);
        let _ = writeln!(
            o,
            "  validated:            {} ({} clean)",
            self.validated, self.validated_clean
        );
        match &self.orc {
            Some(orc) => {
                let c = &orc.counts;
                let pct = 100.0 * c.confirmed as f64 / orc.checked.max(1) as f64;
                let _ = writeln!(
                    o,
                    "  ORC entries confirmed: {} of {} instructions ({pct:.3}%); {} mismatched, {} uncovered, {} undefined, {} in alternative groups",
                    c.confirmed, orc.checked, c.mismatched, c.uncovered, c.undefined, c.alt_group
                );
            }
            None => {
                let _ = writeln!(o, "  ORC:                  none in the image (frame-pointer kernel) or not verified");
            }
        }
        let _ = writeln!(o, "  kernel tables:        {}", self.tables.join("; "));
        let _ = writeln!(o, "  unwind hints walked:  {}", self.hint_walks);
        let _ = writeln!(
            o,
            "  returns not checked:  {} (code the ORC table leaves undefined)",
            self.unchecked_returns
        );
        let _ = writeln!(o, "  skipped functions:");
        for (why, n) in &self.skipped {
            let _ = writeln!(o, "    {n:>7}  {why}");
        }
        let _ = writeln!(
            o,
            "  functions whose stack traces cannot be certified: {}",
            self.uncertified.len()
        );
        for u in &self.uncertified {
            let _ = writeln!(o, "    {}() at {:#x}: {}", u.function, u.address, u.reason);
        }
        let _ = writeln!(o, "  verdict: {}", self.verdict);
        o
    }
}

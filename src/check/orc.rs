//! ORC verification: the unwind entry covering an instruction against the call-frame state
//! the walk computed there.
//!
//! An ORC entry says how to find the caller's frame at an address: the CFA as a base register
//! plus an offset (`sp_reg`, `sp_offset`), where the caller's rbp is saved (`bp_reg`,
//! `bp_offset`), and the entry's type. objtool derives it from the same state this walk
//! computes, mapping CFA bases and the saved-rbp location as below, so for code that follows
//! the rules the two must agree; a disagreement means the table does not describe the code.

use std::fmt;

use super::state::{Cfi, BP_INDIRECT, CFA, SP_INDIRECT, UNDEF};
use crate::decode::reg;
use crate::kernel::{orc_reg, Orc, OrcEntry, OrcType};

/// What the computed state says the ORC entry must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub sp_reg: u8,
    pub sp_offset: i32,
    pub bp_reg: u8,
    pub bp_offset: i32,
}

/// The ORC form of a call-frame state, or `None` for a CFA base ORC cannot express.
pub fn expected(c: &Cfi) -> Option<Expected> {
    let sp_reg = match c.cfa.base {
        reg::SP => orc_reg::SP,
        reg::AX => orc_reg::AX,
        reg::BP => orc_reg::BP,
        reg::DI => orc_reg::DI,
        reg::DX => orc_reg::DX,
        10 => orc_reg::R10,
        13 => orc_reg::R13,
        SP_INDIRECT => orc_reg::SP_INDIRECT,
        BP_INDIRECT => orc_reg::BP_INDIRECT,
        UNDEF => orc_reg::UNDEFINED,
        _ => return None,
    };
    let bp = c.reg(reg::BP);
    let (bp_reg, bp_offset) = match bp.base {
        CFA => (orc_reg::PREV_SP, bp.off),
        reg::BP => (orc_reg::BP, bp.off),
        UNDEF => (orc_reg::UNDEFINED, 0),
        _ => return None,
    };
    let sp_offset = if sp_reg == orc_reg::UNDEFINED {
        0
    } else {
        c.cfa.off
    };
    Some(Expected {
        sp_reg,
        sp_offset,
        bp_reg,
        bp_offset,
    })
}

pub fn reg_name(r: u8) -> &'static str {
    match r {
        orc_reg::UNDEFINED => "undef",
        orc_reg::PREV_SP => "prev_sp",
        orc_reg::DX => "rdx",
        orc_reg::DI => "rdi",
        orc_reg::BP => "rbp",
        orc_reg::SP => "rsp",
        orc_reg::R10 => "r10",
        orc_reg::R13 => "r13",
        orc_reg::AX => "rax",
        orc_reg::BP_INDIRECT => "(rbp)",
        orc_reg::SP_INDIRECT => "(rsp)",
        _ => "?",
    }
}

fn loc(r: u8, off: i32) -> String {
    if r == orc_reg::UNDEFINED {
        "undef".to_string()
    } else {
        format!("{}{:+}", reg_name(r), off)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sp={} bp={} type=call",
            loc(self.sp_reg, self.sp_offset),
            loc(self.bp_reg, self.bp_offset)
        )
    }
}

pub struct ShowEntry<'a>(pub &'a OrcEntry);

impl fmt::Display for ShowEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let kind = match e.kind {
            OrcType::Undefined => "undefined",
            OrcType::EndOfStack => "end_of_stack",
            OrcType::Call => "call",
            OrcType::Regs => "regs",
            OrcType::RegsPartial => "regs_partial",
        };
        write!(
            f,
            "sp={} bp={} type={kind}",
            loc(e.sp_reg, e.sp_offset as i32),
            loc(e.bp_reg, e.bp_offset as i32)
        )
    }
}

/// The state an unwind hint (a call-type ORC entry) describes, as the walk models it.
pub fn hint_state(e: &OrcEntry) -> Option<Cfi> {
    let mut c = Cfi::initial();
    c.cfa.base = match e.sp_reg {
        orc_reg::SP => reg::SP,
        orc_reg::BP => reg::BP,
        orc_reg::DI => reg::DI,
        orc_reg::DX => reg::DX,
        orc_reg::R10 => 10,
        orc_reg::R13 => 13,
        orc_reg::AX => reg::AX,
        _ => return None,
    };
    c.cfa.off = e.sp_offset as i32;
    c.stack_size = e.sp_offset as i32;
    let bp = match e.bp_reg {
        orc_reg::UNDEFINED => super::state::Loc::UNDEFINED,
        orc_reg::PREV_SP => super::state::Loc::new(CFA, e.bp_offset as i32),
        _ => return None,
    };
    c.set_reg(reg::BP, bp);
    Some(c)
}

/// The outcome of checking one instruction against the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Confirmed,
    /// The entry disagrees with the computed state: "ORC mismatch: ...".
    Mismatch(String),
    /// No entry covers the address (or only one from another section).
    Uncovered,
    /// The entry is undefined or end-of-stack: objtool left the unwinder no way through
    /// here (a function it was told not to validate, or an UNWIND_HINT_UNDEFINED/END_OF_STACK).
    Undefined,
    /// A REGS or REGS_PARTIAL entry: an unwind hint for code with a pt_regs frame.
    RegsHint,
    /// A disagreement inside an alternative's original instructions, where the entry may
    /// describe a replacement (see `kernel::ALT_BODY`).
    AltGroup,
}

/// Per-walk tallies.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct OrcStats {
    pub confirmed: u64,
    pub mismatched: u64,
    pub uncovered: u64,
    pub undefined: u64,
    pub regs_hints: u64,
    pub alt_group: u64,
}

impl OrcStats {
    pub fn add(&mut self, o: &OrcStats) {
        self.confirmed += o.confirmed;
        self.mismatched += o.mismatched;
        self.uncovered += o.uncovered;
        self.undefined += o.undefined;
        self.regs_hints += o.regs_hints;
        self.alt_group += o.alt_group;
    }

    pub fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Confirmed => self.confirmed += 1,
            Verdict::Mismatch(_) => self.mismatched += 1,
            Verdict::Uncovered => self.uncovered += 1,
            Verdict::Undefined => self.undefined += 1,
            Verdict::RegsHint => self.regs_hints += 1,
            Verdict::AltGroup => self.alt_group += 1,
        }
    }
}

/// Checks the entry covering `addr` against state `c`. `section` bounds which entries may
/// cover the address.
pub fn verify(orc: &Orc, addr: u64, section: (u64, u64), c: &Cfi) -> Verdict {
    verify_entry(orc.lookup(addr), addr, section, c)
}

/// [`verify`] with the covering entry already found (see [`Orc::lookup_near`]).
pub fn verify_entry(
    covering: Option<(u64, &OrcEntry)>,
    addr: u64,
    section: (u64, u64),
    c: &Cfi,
) -> Verdict {
    let Some((ip, e)) = covering else {
        return Verdict::Uncovered;
    };
    if ip < section.0 || addr >= section.1 {
        return Verdict::Uncovered;
    }
    match e.kind {
        OrcType::Undefined | OrcType::EndOfStack => return Verdict::Undefined,
        OrcType::Regs | OrcType::RegsPartial => return Verdict::RegsHint,
        OrcType::Call => {}
    }
    let Some(want) = expected(c) else {
        return Verdict::Mismatch(format!(
            "ORC mismatch: orc {} computed cfa={}",
            ShowEntry(e),
            c.cfa
        ));
    };
    if entry_says(e) == want {
        Verdict::Confirmed
    } else {
        Verdict::Mismatch(format!(
            "ORC mismatch: orc {} computed {}",
            ShowEntry(e),
            want
        ))
    }
}

/// Whether [`verify_entry`] says [`Verdict::Confirmed`], without building a verdict: the
/// walks' common case.
pub fn confirms(
    covering: Option<(u64, &OrcEntry)>,
    addr: u64,
    section: (u64, u64),
    c: &Cfi,
) -> bool {
    covering.is_some_and(|(ip, e)| {
        ip >= section.0
            && addr < section.1
            && e.kind == OrcType::Call
            && expected(c) == Some(entry_says(e))
    })
}

/// What a call-type entry says, in the form of [`expected`].
fn entry_says(e: &OrcEntry) -> Expected {
    Expected {
        sp_reg: e.sp_reg,
        sp_offset: if e.sp_reg == orc_reg::UNDEFINED {
            0
        } else {
            e.sp_offset as i32
        },
        bp_reg: e.bp_reg,
        bp_offset: if e.bp_reg == orc_reg::UNDEFINED {
            0
        } else {
            e.bp_offset as i32
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{OpKind, StackOp};

    fn entry(sp_reg: u8, sp: i16, bp_reg: u8, bp: i16) -> OrcEntry {
        OrcEntry {
            sp_offset: sp,
            bp_offset: bp,
            sp_reg,
            bp_reg,
            kind: OrcType::Call,
            signal: false,
        }
    }

    #[test]
    fn frame_states_map_to_orc() {
        let mut c = Cfi::initial();
        assert_eq!(
            expected(&c),
            Some(Expected {
                sp_reg: orc_reg::SP,
                sp_offset: 8,
                bp_reg: orc_reg::UNDEFINED,
                bp_offset: 0
            })
        );
        let push_bp = StackOp {
            kind: OpKind::PushReg,
            reg: reg::BP,
            base: reg::NONE,
            imm: 0,
        };
        let mov = StackOp {
            kind: OpKind::MovSpTo,
            reg: reg::BP,
            base: reg::NONE,
            imm: 0,
        };
        c.apply(&push_bp).unwrap();
        c.apply(&mov).unwrap();
        assert_eq!(
            expected(&c),
            Some(Expected {
                sp_reg: orc_reg::BP,
                sp_offset: 16,
                bp_reg: orc_reg::PREV_SP,
                bp_offset: -16
            })
        );
    }

    #[test]
    fn verify_confirms_and_reports() {
        let orc = Orc::new(
            vec![0x1000, 0x1001, 0x1010],
            vec![
                entry(orc_reg::SP, 8, orc_reg::UNDEFINED, 0),
                entry(orc_reg::SP, 16, orc_reg::UNDEFINED, 0),
                OrcEntry {
                    kind: OrcType::Undefined,
                    ..entry(orc_reg::UNDEFINED, 0, 0, 0)
                },
            ],
            "v3",
        );
        let sec = (0x1000, 0x2000);
        let init = Cfi::initial();
        assert_eq!(verify(&orc, 0x1000, sec, &init), Verdict::Confirmed);
        assert_eq!(
            verify(&orc, 0x1005, sec, &init),
            Verdict::Mismatch("ORC mismatch: orc sp=rsp+16 bp=undef type=call computed sp=rsp+8 bp=undef type=call".into())
        );
        assert_eq!(verify(&orc, 0x1010, sec, &init), Verdict::Undefined);
        assert_eq!(verify(&orc, 0x0fff, (0, 0x2000), &init), Verdict::Uncovered);
        assert_eq!(verify(&orc, 0x2000, sec, &init), Verdict::Uncovered);
        // The shortcut says confirmed exactly where the full verdict does.
        let mut pushed = Cfi::initial();
        pushed
            .apply(&StackOp {
                kind: OpKind::Push,
                reg: reg::NONE,
                base: reg::NONE,
                imm: 0,
            })
            .unwrap();
        for state in [&init, &pushed] {
            for addr in [0x0fff, 0x1000, 0x1005, 0x1010, 0x1fff, 0x2000] {
                for sec in [sec, (0x1001, 0x2000), (0, 0x1010)] {
                    let covering = orc.lookup(addr);
                    assert_eq!(
                        confirms(covering, addr, sec, state),
                        verify_entry(covering, addr, sec, state) == Verdict::Confirmed,
                        "{addr:#x} in {sec:x?}"
                    );
                }
            }
        }
    }
}

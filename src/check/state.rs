//! The call-frame state of one instruction, and how each stack operation changes it.
//!
//! The state says, before an instruction executes: where the canonical frame address (CFA,
//! the value rsp had before the call that entered the function) can be computed from, where
//! each callee-saved register's caller value is saved, and how many bytes the function has
//! on the stack. It is the same information an ORC entry carries, so it can be compared with
//! the image's ORC table directly.
//!
//! The transfer rules follow those of the kernel's objtool (tools/objtool/check.c,
//! `update_cfi_state`), so that a function is accepted or rejected for the same reasons:
//! frames set up with `push %rbp; mov %rsp,%rbp`, register saves by push or by `mov` to a stack
//! slot, rsp copies kept in another register, DRAP stack realignment (`lea 8(%rsp),%r10;
//! and $-N,%rsp`), and the stack swizzle of `call_on_stack()`.

use std::fmt;

use crate::decode::{reg, OpKind, StackOp};

/// A location: a base and an offset. Bases 0..=15 are the general registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub base: u8,
    pub off: i32,
}

pub const CFA: u8 = 16;
pub const UNDEF: u8 = 17;
/// CFA = *(rsp) + offset: during a stack swizzle.
pub const SP_INDIRECT: u8 = 18;
/// CFA = *(rbp + offset): DRAP register saved in the frame.
pub const BP_INDIRECT: u8 = 19;

impl Loc {
    pub const UNDEFINED: Loc = Loc {
        base: UNDEF,
        off: 0,
    };
    pub const fn new(base: u8, off: i32) -> Loc {
        Loc { base, off }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.base {
            CFA => "cfa",
            UNDEF => return f.write_str("undef"),
            SP_INDIRECT => "(rsp)",
            BP_INDIRECT => "(rbp)",
            r => reg::name(r),
        };
        write!(f, "{base}{:+}", self.off)
    }
}

/// Registers the x86-64 ABI makes a callee preserve, in register order; only their saves are
/// tracked (`Cfi::saved`).
pub const CALLEE_SAVED: [u8; 6] = [reg::BX, reg::BP, reg::R12, 13, 14, reg::R15];

/// Where register `r`'s save is kept in `Cfi::saved`, if it is callee-saved.
fn saved_slot(r: u8) -> Option<usize> {
    match r {
        reg::BX => Some(0),
        reg::BP => Some(1),
        reg::R12..=reg::R15 => Some(r as usize - 10),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cfi {
    pub cfa: Loc,
    /// Where the caller's value of each callee-saved register ([`CALLEE_SAVED`], in that
    /// order) is saved (base `CFA`), or `UNDEF` while the register still holds it. Other
    /// registers' values are never tracked (see [`Cfi::reg`]): leaving them out keeps the
    /// state, copied at every branch, small.
    saved: [Loc; 6],
    /// Registers known to hold a stack address (base `CFA`), or the top of a swizzled stack:
    /// bases and offsets kept apart (see [`Cfi::val`]), 80 bytes instead of 128.
    val_base: [u8; 16],
    val_off: [i32; 16],
    /// Bytes on the stack since the caller's rsp, return address included.
    pub stack_size: i32,
    pub drap_reg: u8,
    pub drap_off: i32,
    pub drap: bool,
    /// The stack size right after the latest call into the same code (a retpoline's or the
    /// RSB-stuffing loop's), or 0: a `ret` at exactly that depth pops that call's slot, which
    /// the code overwrote with the real target. An `add $N,%rsp` below it retires the slot.
    pub intra: i32,
}

/// An instruction whose effect on the stack cannot be modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackError {
    Undefined,
    Realign,
    UnknownInsn,
    SpModification,
}

impl StackError {
    pub fn message(self) -> &'static str {
        match self {
            StackError::Undefined => "undefined stack state",
            StackError::Realign => "unsupported stack pointer realignment",
            StackError::UnknownInsn => "unknown stack-related instruction",
            StackError::SpModification => "unsupported stack register modification",
        }
    }
}

impl Cfi {
    /// The state at a function's entry: CFA = rsp + 8, only the return address pushed.
    pub const fn initial() -> Cfi {
        Cfi {
            cfa: Loc::new(reg::SP, 8),
            saved: [Loc::UNDEFINED; 6],
            val_base: [UNDEF; 16],
            val_off: [0; 16],
            stack_size: 8,
            drap_reg: UNDEF,
            drap_off: -1,
            drap: false,
            intra: 0,
        }
    }

    /// Where the caller's value of register `r` is saved, or `UNDEF` while it still holds it
    /// (always, for a register that is not callee-saved).
    pub fn reg(&self, r: u8) -> Loc {
        saved_slot(r).map_or(Loc::UNDEFINED, |k| self.saved[k])
    }

    /// The stack address register `r` is known to hold, or `UNDEF`.
    pub fn val(&self, r: u8) -> Loc {
        Loc::new(self.val_base[r as usize], self.val_off[r as usize])
    }

    fn set_val(&mut self, r: u8, v: Loc) {
        self.val_base[r as usize] = v.base;
        self.val_off[r as usize] = v.off;
    }

    /// Records where the caller's value of callee-saved register `r` is.
    pub fn set_reg(&mut self, r: u8, at: Loc) {
        let k = saved_slot(r).expect("a callee-saved register");
        self.saved[k] = at;
    }

    /// Whether the function's frame differs from the entry state: what a return or a tail
    /// call must not leave behind.
    pub fn modified(&self) -> bool {
        let init = Cfi::initial();
        self.cfa != init.cfa || self.stack_size != init.stack_size || self.saved != init.saved
    }

    /// Whether rbp holds a frame pointer: rbp was pushed right after the return address and
    /// then set to point at it (or the DRAP equivalent).
    pub fn has_frame(&self) -> bool {
        (self.cfa.base == reg::BP && self.reg(reg::BP) == Loc::new(CFA, -16))
            || (self.drap && self.reg(reg::BP).base == reg::BP)
    }

    /// Whether the frame pointer register differs from its entry state.
    pub fn frame_pointer_changed(&self) -> bool {
        self.cfa.base == reg::BP || self.reg(reg::BP) != Loc::UNDEFINED
    }

    /// How two states reaching the same instruction differ, in objtool's terms, or `None`
    /// when they agree on everything an unwinder uses.
    pub fn mismatch(&self, other: &Cfi) -> Option<String> {
        if self.cfa != other.cfa {
            return Some(format!("cfa1={} cfa2={}", self.cfa, other.cfa));
        }
        for (k, &r) in CALLEE_SAVED.iter().enumerate() {
            if self.saved[k] != other.saved[k] {
                return Some(format!(
                    "reg1[{}]={} reg2[{}]={}",
                    reg::name(r),
                    self.saved[k],
                    reg::name(r),
                    other.saved[k]
                ));
            }
        }
        // The DRAP register only matters while the stack is realigned through it; a
        // `lea N(%rsp),%reg` elsewhere merely names a candidate.
        let drap = |c: &Cfi| {
            (
                c.drap,
                if c.drap {
                    (c.drap_reg, c.drap_off)
                } else {
                    (UNDEF, 0)
                },
            )
        };
        if drap(self) != drap(other) {
            return Some(format!(
                "drap1={}{:+}={} drap2={}{:+}={}",
                drap_name(self.drap_reg),
                self.drap_off,
                self.drap,
                drap_name(other.drap_reg),
                other.drap_off,
                other.drap
            ));
        }
        None
    }

    /// Whether the states differ in what a frame-pointer unwinder uses.
    pub fn frame_pointer_mismatch(&self, other: &Cfi) -> bool {
        (self.cfa.base == reg::BP) != (other.cfa.base == reg::BP)
            || self.reg(reg::BP) != other.reg(reg::BP)
    }

    fn save(&mut self, r: u8, at: Loc) {
        if let Some(k) = saved_slot(r) {
            if self.saved[k].base == UNDEF {
                self.saved[k] = at;
            }
        }
    }

    fn restore(&mut self, r: u8) {
        if let Some(k) = saved_slot(r) {
            self.saved[k] = Loc::UNDEFINED;
        }
    }

    fn pushed(&mut self, bytes: i32) {
        self.stack_size += bytes;
        if self.cfa.base == reg::SP {
            self.cfa.off += bytes;
        }
        if self.stack_size < self.intra {
            self.intra = 0;
        }
    }

    /// Moves rsp by `bytes` (a push when positive) for a slot no instruction names: the return
    /// address an intra-function call pushes, or the one a retpoline's `ret` consumes.
    pub fn slot(&mut self, bytes: i32) -> Result<(), StackError> {
        if self.cfa.base == UNDEF {
            return Err(StackError::Undefined);
        }
        self.pushed(bytes);
        Ok(())
    }

    /// Applies one instruction's stack operation.
    #[inline]
    pub fn apply(&mut self, op: &StackOp) -> Result<(), StackError> {
        if op.kind == OpKind::None {
            return Ok(());
        }
        self.apply_op(op)
    }

    /// [`Cfi::apply`] of an operation that is not [`OpKind::None`].
    #[inline(never)]
    fn apply_op(&mut self, op: &StackOp) -> Result<(), StackError> {
        if self.cfa.base == UNDEF {
            return Err(StackError::Undefined);
        }
        let (r, b, imm) = (op.reg, op.base, op.imm);
        match op.kind {
            OpKind::None => {}
            OpKind::Push => self.pushed(8),
            OpKind::PushReg => {
                self.pushed(8);
                if !self.drap {
                    self.save(r, Loc::new(CFA, -self.stack_size));
                } else if r == self.cfa.base && r == self.drap_reg {
                    // The DRAP register itself goes on the realigned stack; the CFA is
                    // then found through that slot.
                    self.cfa = Loc::new(BP_INDIRECT, -self.stack_size);
                    self.drap_off = -self.stack_size;
                } else if r == reg::BP && self.cfa.base == self.drap_reg {
                    // The realigned frame starts at the pushed rbp.
                    self.stack_size = 0;
                } else {
                    self.save(r, Loc::new(reg::BP, -self.stack_size));
                }
            }
            OpKind::Pop | OpKind::PopReg => {
                if op.kind == OpKind::PopReg {
                    if r == reg::SP && self.cfa.base == SP_INDIRECT {
                        // `pop %rsp` ends a stack swizzle: back on the original stack.
                        self.cfa.base = reg::SP;
                        return Ok(());
                    }
                    if !self.drap && r == self.cfa.base {
                        // `pop %rbp` tearing down a frame: the CFA is rsp-based again.
                        self.cfa.base = reg::SP;
                    }
                    if self.drap
                        && self.cfa.base == BP_INDIRECT
                        && r == self.drap_reg
                        && self.drap_off == -self.stack_size
                    {
                        self.cfa = Loc::new(self.drap_reg, 0);
                        self.drap_off = -1;
                    } else if self.reg(r).base != UNDEF && self.stack_size == -self.reg(r).off {
                        self.restore(r);
                    }
                }
                self.pushed(-8);
            }
            OpKind::AddSp => self.pushed(-imm),
            OpKind::AndSp => {
                let drap_set = self.drap_reg != UNDEF;
                if (drap_set && self.cfa.base != reg::SP) || (!drap_set && self.cfa.base != reg::BP)
                {
                    return Err(StackError::Realign);
                }
                if drap_set {
                    // The CFA is now found from the DRAP register, which holds it.
                    self.cfa = Loc::new(self.drap_reg, 0);
                    self.stack_size = 0;
                    self.drap = true;
                }
                // With a frame pointer the CFA is rbp-based and realignment does not move it.
            }
            OpKind::MovSpTo => {
                if r == reg::BP
                    && self.cfa.base == reg::SP
                    && self.reg(reg::BP) == Loc::new(CFA, -self.cfa.off)
                {
                    // `mov %rsp,%rbp` right after `push %rbp`: a frame.
                    self.cfa.base = reg::BP;
                } else if r == reg::BP && self.drap {
                    self.set_reg(reg::BP, Loc::new(reg::BP, -self.stack_size));
                } else if self.cfa.base == reg::SP {
                    self.set_val(r, Loc::new(CFA, -self.stack_size));
                }
            }
            OpKind::LeaFromSp => {
                if self.cfa.base == reg::SP {
                    // A stack address in a register: the candidate DRAP register.
                    self.drap_reg = r;
                    self.set_val(r, Loc::new(CFA, -self.stack_size + imm));
                }
            }
            OpKind::LeaSpFrom => {
                if b == reg::BP && self.reg(reg::BP).base != UNDEF {
                    // `lea disp(%rbp),%rsp`: rbp points at the saved rbp, whose slot is at
                    // -off from the CFA (or, in a DRAP frame, from the realigned frame base).
                    self.stack_size = -(imm + self.reg(reg::BP).off);
                } else if self.drap && b == self.drap_reg {
                    // Leaving a DRAP frame: rsp is computed back from the CFA.
                    self.stack_size = -imm;
                    self.cfa = Loc::new(reg::SP, self.stack_size);
                    self.drap_reg = UNDEF;
                    self.drap = false;
                } else if self.val(b).base == CFA {
                    self.stack_size = -(self.val(b).off + imm);
                    if self.cfa.base == reg::SP {
                        self.cfa.off = self.stack_size;
                    }
                } else if self.cfa.base == reg::SP {
                    return Err(StackError::SpModification);
                }
            }
            OpKind::MovToSp => {
                if r == reg::BP && (self.cfa.base == reg::BP || self.cfa.base == self.drap_reg) {
                    // `mov %rbp,%rsp`: back to the saved-rbp slot.
                    self.stack_size = -self.reg(reg::BP).off;
                } else if self.cfa.base == reg::SP {
                    let v = self.val(r);
                    if v.base == CFA {
                        self.cfa.off = -v.off;
                        self.stack_size = self.cfa.off;
                    } else if v.base == SP_INDIRECT && v.off == self.cfa.off {
                        // Onto a new stack whose top holds the old rsp.
                        self.cfa.base = SP_INDIRECT;
                    } else {
                        self.cfa = Loc::UNDEFINED;
                    }
                } else if self.val(r).base == SP_INDIRECT && self.val(r).off == self.cfa.off {
                    // A swizzle with a frame-based CFA: the later `pop %rsp` must balance.
                    self.stack_size += 8;
                }
            }
            OpKind::Leave => {
                // mov %rbp,%rsp; pop %rbp
                self.apply(&StackOp {
                    kind: OpKind::MovToSp,
                    reg: reg::BP,
                    base: reg::NONE,
                    imm: 0,
                })?;
                self.apply(&StackOp {
                    kind: OpKind::PopReg,
                    reg: reg::BP,
                    base: reg::NONE,
                    imm: 0,
                })?;
            }
            OpKind::Enter => {
                // push %rbp; mov %rsp,%rbp; sub $imm,%rsp
                self.apply(&StackOp {
                    kind: OpKind::PushReg,
                    reg: reg::BP,
                    base: reg::NONE,
                    imm: 0,
                })?;
                self.apply(&StackOp {
                    kind: OpKind::MovSpTo,
                    reg: reg::BP,
                    base: reg::NONE,
                    imm: 0,
                })?;
                self.pushed(imm);
            }
            OpKind::Store => {
                if r == reg::SP {
                    if imm == 0 && b != reg::SP && b != reg::BP {
                        // `mov %rsp,(%reg)`: the new stack's top will hold the old rsp.
                        self.set_val(b, Loc::new(SP_INDIRECT, self.cfa.off));
                    }
                } else if self.drap {
                    if b == reg::BP && r == self.cfa.base && r == self.drap_reg {
                        self.cfa = Loc::new(BP_INDIRECT, imm);
                        self.drap_off = imm;
                    } else if b == reg::BP {
                        self.save(r, Loc::new(reg::BP, imm));
                    }
                } else if b == self.cfa.base {
                    self.save(r, Loc::new(CFA, imm - self.cfa.off));
                } else if b == reg::SP {
                    self.save(r, Loc::new(CFA, imm - self.stack_size));
                }
            }
            OpKind::Load => {
                if !self.drap && r == self.cfa.base && r == reg::BP && b == reg::SP {
                    // `mov disp(%rsp),%rbp` restoring rbp: the CFA is rsp-based again.
                    self.cfa = Loc::new(reg::SP, self.stack_size);
                }
                if self.drap && b == reg::BP && imm == self.drap_off {
                    self.cfa = Loc::new(self.drap_reg, 0);
                    self.drap_off = -1;
                }
                let saved = self.reg(r);
                if saved.base == UNDEF {
                    return Ok(());
                }
                if (self.drap && b == reg::BP && imm == saved.off)
                    || (b == self.cfa.base && saved.base == CFA && imm == saved.off + self.cfa.off)
                    || (b == reg::SP && saved.base == CFA && imm == saved.off + self.stack_size)
                {
                    self.restore(r);
                }
            }
            // Like objtool: a stack switch keeps the frame layout; the new stack is the same
            // kind of frame (a task's, or an IRQ stack's, switched to at the same point).
            OpKind::LoadSp => {}
            // rsp moved by an unknown amount only matters while the CFA is found from rsp;
            // with a frame pointer or DRAP the CFA does not move, and the epilogue restores rsp
            // from it.
            OpKind::AddSpReg if self.cfa.base == reg::SP => {
                return Err(StackError::SpModification);
            }
            OpKind::UnknownSp if self.cfa.base == reg::SP => {
                return Err(StackError::UnknownInsn);
            }
            OpKind::AddSpReg | OpKind::UnknownSp => {}
        }
        Ok(())
    }
}

fn drap_name(r: u8) -> &'static str {
    if r == UNDEF {
        "undef"
    } else {
        reg::name(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StackOp;

    fn op(kind: OpKind, r: u8, b: u8, imm: i32) -> StackOp {
        StackOp {
            kind,
            reg: r,
            base: b,
            imm,
        }
    }

    fn run(ops: &[StackOp]) -> Cfi {
        let mut s = Cfi::initial();
        for o in ops {
            s.apply(o).unwrap();
        }
        s
    }

    #[test]
    fn saved_slots_follow_callee_saved_order() {
        for r in 0..16u8 {
            let want = CALLEE_SAVED.iter().position(|&c| c == r);
            assert_eq!(saved_slot(r), want, "register {}", reg::name(r));
        }
    }

    #[test]
    fn frame_setup_and_teardown() {
        let push_bp = op(OpKind::PushReg, reg::BP, reg::NONE, 0);
        let mov = op(OpKind::MovSpTo, reg::BP, reg::NONE, 0);
        let s = run(&[push_bp, mov]);
        assert_eq!(s.cfa, Loc::new(reg::BP, 16));
        assert_eq!(s.reg(reg::BP), Loc::new(CFA, -16));
        assert!(s.has_frame() && s.modified());
        let push_bx = op(OpKind::PushReg, reg::BX, reg::NONE, 0);
        let sub = op(OpKind::AddSp, reg::NONE, reg::NONE, -32);
        let s = run(&[push_bp, mov, push_bx, sub]);
        assert_eq!(s.reg(reg::BX), Loc::new(CFA, -24));
        assert_eq!(
            s.cfa,
            Loc::new(reg::BP, 16),
            "rbp-based CFA ignores rsp moves"
        );
        // lea -8(%rbp),%rsp; pop %rbx; pop %rbp
        let lea = op(OpKind::LeaSpFrom, reg::NONE, reg::BP, -8);
        let pop_bx = op(OpKind::PopReg, reg::BX, reg::NONE, 0);
        let pop_bp = op(OpKind::PopReg, reg::BP, reg::NONE, 0);
        let s = run(&[push_bp, mov, push_bx, sub, lea, pop_bx, pop_bp]);
        assert_eq!(s, Cfi::initial());
        // leave instead
        let leave = op(OpKind::Leave, reg::NONE, reg::NONE, 0);
        let s = run(&[push_bp, mov, sub, leave]);
        assert!(!s.modified());
    }

    #[test]
    fn unbalanced_push_is_modified() {
        let s = run(&[op(OpKind::PushReg, reg::R12, reg::NONE, 0)]);
        assert_eq!(s.cfa, Loc::new(reg::SP, 16));
        assert!(s.modified());
        assert!(!s.has_frame());
    }

    #[test]
    fn rsp_copy_restores() {
        // mov %rsp,%rax; sub $0x40,%rsp; mov %rax,%rsp
        let s = run(&[
            op(OpKind::MovSpTo, reg::AX, reg::NONE, 0),
            op(OpKind::AddSp, reg::NONE, reg::NONE, -0x40),
            op(OpKind::MovToSp, reg::AX, reg::NONE, 0),
        ]);
        assert_eq!(s.cfa, Loc::new(reg::SP, 8));
        assert!(!s.modified());
    }

    #[test]
    fn unknown_rsp_write_undefines() {
        let mut s = Cfi::initial();
        s.apply(&op(OpKind::MovToSp, reg::DI, reg::NONE, 0))
            .unwrap();
        assert_eq!(s.cfa.base, UNDEF);
        assert_eq!(
            s.apply(&op(OpKind::Push, reg::NONE, reg::NONE, 0)),
            Err(StackError::Undefined)
        );
    }

    #[test]
    fn drap_realignment() {
        // lea 0x8(%rsp),%r10; and $-16,%rsp; push -8(%r10); push %rbp; mov %rsp,%rbp; push %r10
        let mut s = Cfi::initial();
        s.apply(&op(OpKind::LeaFromSp, 10, reg::SP, 8)).unwrap();
        s.apply(&op(OpKind::AndSp, reg::NONE, reg::NONE, -16))
            .unwrap();
        assert_eq!(s.cfa, Loc::new(10, 0));
        assert!(s.drap);
        // realignment without a frame or DRAP is rejected
        let mut t = Cfi::initial();
        assert_eq!(
            t.apply(&op(OpKind::AndSp, reg::NONE, reg::NONE, -16)),
            Err(StackError::Realign)
        );
    }

    #[test]
    fn mismatch_names_the_difference() {
        let a = Cfi::initial();
        let mut b = Cfi::initial();
        b.apply(&op(OpKind::Push, reg::NONE, reg::NONE, 0)).unwrap();
        assert_eq!(a.mismatch(&b).unwrap(), "cfa1=rsp+8 cfa2=rsp+16");
        assert_eq!(a.mismatch(&a), None);
    }
}

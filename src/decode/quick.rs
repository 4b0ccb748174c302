//! The encodings whose [`Insn`] a table says in full, decoded without iced-x86.
//!
//! Most of a kernel's instructions are a few simple forms: `mov`, `lea`, `test`, `cmp`,
//! arithmetic and shifts between registers and memory, `mov $imm, %reg`, direct calls and
//! jumps, `push`/`pop` of a register, `ret`, `leave`, `ud2` and nops. For those, what a check
//! needs (length, kind, branch target, stack effect) follows from the opcode byte, the ModRM
//! and SIB bytes and which prefixes are present, and reading them costs a fraction of a full
//! decode into an `iced_x86::Instruction` and its classification. Memory operands in the stack
//! frame (based on rsp or rbp) are among them: a 64-bit register saved there (`mov %reg,
//! disp(%rsp)`) or restored (`mov disp(%rbp), %reg`) and `lea disp(%rsp), %reg` are the
//! stack operations [`super::stack_op`] gives them; any other use of such a slot has none.
//! [`decode`] takes exactly those forms and answers `None` for everything else, which then goes
//! to iced-x86 as before:
//!
//! - any prefix other than the segment overrides, the operand-size prefix and one REX right
//!   before the opcode (no `lock`, `rep`, address-size, VEX or EVEX);
//! - any form that names rsp as a register operand, whatever its width: the adjustments of
//!   rsp, copies to and from it and the rest stay with iced-x86 and [`super::stack_op`];
//! - `mov table(,%idx,8), %reg`, the load of a switch table ([`Kind::TableLoad`]).
//!
//! What it does decode it decodes exactly as iced-x86 and classification would: the tests
//! compare the two on every form the table takes, under every prefix combination, every ModRM
//! and SIB byte, and on every instruction of real kernels; debug builds compare them on every
//! instruction decoded.

use super::{reg, Insn, Kind, OpKind, StackOp};

/// An immediate after the ModRM operand.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Imm {
    None,
    /// One byte.
    B,
    /// Two bytes with an operand-size prefix and no REX.W, four otherwise.
    Z,
}

/// What a handled opcode byte is followed by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Not decoded here.
    No,
    /// A ModRM operand, any register field, then an immediate: `Kind::Other`, no stack effect.
    ModRm(Imm),
    /// As `ModRm`, where the register field extends the opcode (`80`, `81`, `83`: the
    /// arithmetic group; `c0`, `c1`, `d0`–`d3`: shifts and rotates) rather than naming one.
    Group(Imm),
    /// As `ModRm`, with a memory operand only (`lea`).
    Mem,
    /// As `ModRm`, for `mov r, r/m` (`8a`, `8b`): a memory operand indexed by 8 with no base
    /// is a switch-table load, left to iced-x86.
    Load,
    /// As `ModRm`, with register field 0 only (`c6 /0`, `c7 /0`, `0f 1f /0`).
    Reg0(Imm),
    /// `f6`, `f7`: `test r/m, imm` (/0) or a one-operand group member without immediate
    /// (/2–/7); /1 is left to iced-x86.
    Group3(Imm),
    /// `fe`, `ff`: `inc`/`dec` (/0, /1) only.
    IncDec,
    /// An immediate to al/ax/eax/rax (`04`, `05`, ...), no ModRM.
    Acc(Imm),
    /// `mov $imm, %reg` (`b0+r`: one byte; `b8+r`: two, four or, with REX.W, eight bytes),
    /// no ModRM: the register is in the opcode.
    MovImm(Imm),
}

/// The one-byte opcodes with a ModRM operand or accumulator form taken here.
const fn one_byte(op: u8) -> Form {
    use Form::*;
    match op {
        // add, or, adc, sbb, and, sub, xor, cmp: r/m,r and r,r/m forms, then al/eax, imm.
        0x00..=0x3f => match op & 7 {
            0..=3 => ModRm(Imm::None),
            4 => Acc(Imm::B),
            5 => Acc(Imm::Z),
            _ => No,
        },
        0x63 => ModRm(Imm::None),
        0x69 => ModRm(Imm::Z),
        0x6b => ModRm(Imm::B),
        0x80 | 0x83 => Group(Imm::B),
        0x81 => Group(Imm::Z),
        0x84 | 0x85 | 0x88 | 0x89 => ModRm(Imm::None),
        0x8a | 0x8b => Load,
        0x8d => Mem,
        0xa8 => Acc(Imm::B),
        0xa9 => Acc(Imm::Z),
        0xb0..=0xb7 => MovImm(Imm::B),
        0xb8..=0xbf => MovImm(Imm::Z),
        0xc0 | 0xc1 => Group(Imm::B),
        0xc6 => Reg0(Imm::B),
        0xc7 => Reg0(Imm::Z),
        0xd0..=0xd3 => Group(Imm::None),
        0xf6 => Group3(Imm::B),
        0xf7 => Group3(Imm::Z),
        0xfe | 0xff => IncDec,
        _ => No,
    }
}

/// The two-byte (`0f xx`) opcodes with a ModRM operand taken here.
const fn two_byte(op: u8) -> Form {
    use Form::*;
    match op {
        0x1f => Reg0(Imm::None),
        // cmovcc, setcc, imul r,r/m, movzx, movsx.
        0x40..=0x4f | 0x90..=0x9f | 0xaf | 0xb6 | 0xb7 | 0xbe | 0xbf => ModRm(Imm::None),
        _ => No,
    }
}

/// [`one_byte`] of every opcode byte, then [`two_byte`] of every byte after `0f`.
const FORMS: [Form; 512] = {
    let mut t = [Form::No; 512];
    let mut i = 0;
    while i < 256 {
        t[i] = one_byte(i as u8);
        t[256 + i] = two_byte(i as u8);
        i += 1;
    }
    t
};

/// The longest instruction the processor accepts.
pub(super) const MAX_LEN: usize = 15;

/// Decodes the instruction at the start of `code`, which lives at `addr`, if it is one of the
/// forms this module takes (see the module's documentation); `None` otherwise, and whenever
/// `code` ends before the instruction does.
#[inline(always)]
pub(super) fn decode(code: &[u8], addr: u64) -> Option<Insn> {
    // The first 16 bytes (zeros past the end): every byte a form reads lies within the
    // instruction, so a form that ends within `code` read only bytes of `code`, and the
    // window is read without a bounds check per byte.
    let avail = code.len().min(16);
    // Read in place where 16 bytes are there (a copy to the stack costs every byte read a
    // store-to-load forwarding on the way to the next instruction's start); copied only
    // within 15 bytes of the end.
    let tail: [u8; 16];
    let w: &[u8; 16] = match code.first_chunk::<16>() {
        Some(head) => head,
        None => {
            let mut t = [0; 16];
            t[..avail].copy_from_slice(code);
            tail = t;
            &tail
        }
    };
    let at = |i: usize| w[i & 15];
    let fits = |len: usize| len <= avail;
    let first = w[0];
    // The forms with no prefix at all come first: they are most of a kernel's branches.
    let plain = |len: usize, kind: Kind, op: StackOp| {
        fits(len).then(|| Insn::new(addr, len as u8, kind, 0, op))
    };
    let branch = |len: usize, kind: Kind, rel: i64| {
        let end = addr.wrapping_add(len as u64);
        let target = end.wrapping_add(rel as u64);
        fits(len).then(|| Insn::new(addr, len as u8, kind, target, StackOp::NONE))
    };
    let rel32 = |i: usize| i32::from_le_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as i64;
    match first {
        0xe8 => return branch(5, Kind::Call, rel32(1)),
        0xe9 => return branch(5, Kind::Jump, rel32(1)),
        0xeb => return branch(2, Kind::Jump, w[1] as i8 as i64),
        0x70..=0x7f => return branch(2, Kind::JumpCond, w[1] as i8 as i64),
        0xc3 => return plain(1, Kind::Return, StackOp::NONE),
        0xcc => return plain(1, Kind::Int3, StackOp::NONE),
        0x90 => return plain(1, Kind::Nop, StackOp::NONE),
        0xc9 => return plain(1, Kind::Other, op(OpKind::Leave, reg::NONE)),
        0x50..=0x5f => return fits(1).then(|| push_pop(addr, 0, first)),
        0x0f => match w[1] {
            0x80..=0x8f => return branch(6, Kind::JumpCond, rel32(2)),
            // Not `ud2; .ascii "xen"` (or "kvm"): the hypervisors' emulation prefix, which
            // decoding takes as one five-byte instruction.
            0x0b if !matches!(w[2..5], [b'x', b'e', b'n'] | [b'k', b'v', b'm']) => {
                return plain(2, Kind::Ud2, StackOp::NONE)
            }
            _ => {}
        },
        0x40..=0x4f if matches!(w[1], 0x50..=0x5f) => {
            return fits(2).then(|| push_pop(addr, first, w[1]))
        }
        0x66 if w[1] == 0x90 => return plain(2, Kind::Nop, StackOp::NONE),
        _ => {}
    }

    // Segment overrides and the operand-size prefix, then at most one REX.
    let mut i = 0;
    let mut osz = false;
    loop {
        match w[i] {
            0x66 => osz = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let mut rex = 0;
    if let b @ 0x40..=0x4f = w[i] {
        rex = b;
        i += 1;
    }
    let wide = rex & 8 != 0;
    let opcode = w[i];
    let (form, nop) = match opcode {
        0x0f => {
            i += 1;
            let op = w[i];
            (FORMS[256 + op as usize], op == 0x1f)
        }
        op => (FORMS[op as usize], false),
    };
    i += 1;
    let imm_len = |imm: Imm| match imm {
        Imm::None => 0,
        Imm::B => 1,
        Imm::Z if osz && !wide => 2,
        Imm::Z => 4,
    };
    let (imm, modrm) = match form {
        Form::No => return None,
        Form::Acc(imm) => (imm, false),
        Form::MovImm(imm) => {
            if (opcode & 7 | (rex & 1) << 3) == reg::SP {
                return None;
            }
            if imm == Imm::Z && wide {
                // `movabs $imm64, %reg`.
                return plain(i + 8, Kind::Other, StackOp::NONE);
            }
            (imm, false)
        }
        Form::ModRm(imm) | Form::Group(imm) | Form::Reg0(imm) | Form::Group3(imm) => (imm, true),
        Form::Mem | Form::Load | Form::IncDec => (Imm::None, true),
    };
    // Whether the ModRM register field extends the opcode instead of naming a register.
    let extends = matches!(
        form,
        Form::Group(_) | Form::Reg0(_) | Form::Group3(_) | Form::IncDec
    );
    let mut len = i;
    // The stack operation of a form whose memory operand is a slot of the stack frame.
    let mut frame = StackOp::NONE;
    let imm = if modrm {
        let m = at(i);
        let (md, regf, rm) = (m >> 6, (m >> 3) & 7, m & 7);
        let imm = match form {
            Form::Reg0(_) if regf != 0 => return None,
            Form::Group3(_) if regf == 1 => return None,
            Form::Group3(_) if regf != 0 => Imm::None,
            Form::IncDec if regf > 1 => return None,
            Form::Mem if md == 3 => return None,
            _ => imm,
        };
        // A nop's operands are never read: any register or base is fine.
        if !nop && !extends && (regf | (rex & 4) << 1) == reg::SP {
            return None;
        }
        let mut operand = 1;
        if md == 3 {
            if !nop && (rm | (rex & 1) << 3) == reg::SP {
                return None;
            }
        } else {
            let mut indexed = false;
            let base = if rm == 4 {
                let sib = at(i + 1);
                operand += 1;
                let base = sib & 7;
                // The index register, with REX.X; rsp's number means none.
                let index = (sib >> 3) & 7 | (rex & 2) << 2;
                indexed = index != reg::SP;
                if base == 5 && md == 0 {
                    // No base: a 32-bit address, maybe plus a scaled index. Indexed by 8,
                    // `mov table(,%idx,8), %reg` is a switch-table load.
                    if form == Form::Load && sib >> 6 == 3 && indexed {
                        return None;
                    }
                    operand += 4;
                    None
                } else {
                    Some(base | (rex & 1) << 3)
                }
            } else if rm == 5 && md == 0 {
                // rip-relative.
                operand += 4;
                None
            } else {
                Some(rm | (rex & 1) << 3)
            };
            if let Some(b @ (reg::SP | reg::BP)) = base.filter(|_| !nop) {
                // A slot of the stack frame: a 64-bit register saved to or restored from
                // it, or its address taken, is a stack operation.
                let disp = match md {
                    1 => at(i + operand) as i8 as i64,
                    2 => rel32(i + operand),
                    _ => 0,
                };
                let r = regf | (rex & 4) << 1;
                frame = match opcode {
                    _ if indexed || !wide => StackOp::NONE,
                    0x89 => StackOp::new(OpKind::Store, r, b, disp),
                    0x8b => StackOp::new(OpKind::Load, r, b, disp),
                    0x8d if b == reg::SP => StackOp::new(OpKind::LeaFromSp, r, b, disp),
                    _ => StackOp::NONE,
                };
            }
            operand += match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
        }
        len += operand;
        imm
    } else {
        imm
    };
    len += imm_len(imm);
    if len > MAX_LEN {
        return None;
    }
    plain(len, if nop { Kind::Nop } else { Kind::Other }, frame)
}

/// `push`/`pop` of a general register (`50+r`, `58+r`), after REX `rex` (0 for none).
#[inline(always)]
fn push_pop(addr: u64, rex: u8, opcode: u8) -> Insn {
    let r = (opcode & 7) | (rex & 1) << 3;
    let kind = if opcode < 0x58 {
        OpKind::PushReg
    } else {
        OpKind::PopReg
    };
    let len = 1 + (rex != 0) as u8;
    Insn::new(addr, len, Kind::Other, 0, op(kind, r))
}

fn op(kind: OpKind, r: u8) -> StackOp {
    StackOp::new(kind, r, reg::NONE, 0)
}

#[cfg(test)]
mod tests {
    use super::super::decode_one;
    use super::decode;

    /// Bytes after the opcode, ModRM and SIB: displacements and immediates of both signs.
    const TAILS: [[u8; 12]; 2] = [
        [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x0f, 0x1e, 0x2d, 0x3c,
        ],
        [
            0xf0, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x7f, 0xcc, 0xcc, 0xcc, 0xcc,
        ],
    ];

    /// Checks `decode` against iced-x86 on `code` (and, where it decodes, on `code` cut one
    /// byte short); returns whether it decoded.
    fn agrees(code: &[u8]) -> bool {
        let addr = 0xffff_ffff_8100_0ff0;
        let Some(quick) = decode(code, addr) else {
            return false;
        };
        assert_eq!(Some(quick), decode_one(code, addr), "{code:02x?}");
        let len = quick.len as usize;
        assert!(len <= code.len());
        assert_eq!(
            decode(&code[..len - 1], addr),
            None,
            "{code:02x?} cut short"
        );
        true
    }

    /// Every prefix combination it could be given, every opcode, every ModRM byte and, for
    /// the forms it takes that have one, every SIB byte (every fifth in debug builds): where it
    /// decodes, it agrees with iced-x86 and classification.
    #[test]
    fn agrees_with_iced_on_every_form_it_takes() {
        let prefixes: [&[u8]; 16] = [
            &[],
            &[0x66],
            &[0x65],
            &[0x2e],
            &[0x3e],
            &[0x64],
            &[0x66, 0x66, 0x2e],
            &[0x65, 0x66],
            &[0x66, 0x65],
            &[0x26, 0x36, 0x3e, 0x2e],
            &[0x66, 0x66, 0x66, 0x66, 0x2e],
            &[0xf0],
            &[0xf2],
            &[0xf3],
            &[0x67],
            &[0x48, 0x66],
        ];
        let sib_step = if cfg!(debug_assertions) { 7 } else { 1 };
        let (mut taken, mut tried) = (0u64, 0u64);
        let mut code = Vec::with_capacity(32);
        for (p, pre) in prefixes.into_iter().enumerate() {
            // Every REX after no prefix, the operand-size prefix and gs; after the others,
            // one with each of W, R, X and B.
            let rexes: Vec<Option<u8>> = if p < 3 {
                std::iter::once(None)
                    .chain((0x40..=0x4f).map(Some))
                    .collect()
            } else {
                vec![None, Some(0x48), Some(0x44), Some(0x42), Some(0x41)]
            };
            for rex in rexes {
                for opcode in 0..512u32 {
                    let start = |code: &mut Vec<u8>| {
                        code.clear();
                        code.extend_from_slice(pre);
                        code.extend(rex);
                        if opcode >= 256 {
                            code.push(0x0f);
                        }
                        code.push(opcode as u8);
                    };
                    // Forms without ModRM, and whether any ModRM byte is taken.
                    let mut any = false;
                    for tail in TAILS {
                        start(&mut code);
                        code.extend_from_slice(&tail);
                        tried += 1;
                        any |= agrees(&code);
                    }
                    for modrm in 0..=255u8 {
                        start(&mut code);
                        code.push(modrm);
                        code.extend_from_slice(&TAILS[0]);
                        tried += 1;
                        let took = agrees(&code);
                        any |= took;
                        taken += took as u64;
                    }
                    if !any {
                        continue;
                    }
                    // The register field does not change how a SIB byte reads: rax, rsp
                    // and rdi stand for all of them.
                    for md in 0..3u8 {
                        for reg in [0u8, 4, 7] {
                            for sib in (0..=255u8).step_by(sib_step) {
                                start(&mut code);
                                code.extend_from_slice(&[md << 6 | reg << 3 | 4, sib]);
                                code.extend_from_slice(&TAILS[(sib & 1) as usize]);
                                tried += 1;
                                taken += agrees(&code) as u64;
                            }
                        }
                    }
                }
            }
        }
        // The forms are common ones: a change that stopped taking them would show here.
        assert!(taken > tried / 20, "{taken} of {tried}");
    }

    #[test]
    fn the_common_forms_are_taken() {
        let addr = 0xffff_ffff_8100_0000;
        let taken: [&[u8]; 24] = [
            &[0x48, 0x89, 0xc7],                         // mov %rax,%rdi
            &[0x48, 0x8b, 0x47, 0x08],                   // mov 0x8(%rdi),%rax
            &[0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0], // mov %gs:0x0,%rax
            &[0xe8, 0, 0, 0, 0],                         // call
            &[0x0f, 0x84, 0x10, 0, 0, 0],                // je
            &[0x74, 0xfe],                               // je .
            &[0x41, 0x5c],                               // pop %r12
            &[0x55],                                     // push %rbp
            &[0xc3],                                     // ret
            &[0x66, 0x0f, 0x1f, 0x44, 0, 0],             // nopw 0x0(%rax,%rax,1)
            &[0x0f, 0x1f, 0x44, 0, 0],                   // nopl 0x0(%rax,%rax,1)
            &[0x48, 0x8d, 0x3d, 0, 0, 0, 0],             // lea 0x0(%rip),%rdi
            &[0x31, 0xc0],                               // xor %eax,%eax
            &[0x48, 0x83, 0xc7, 0x08],                   // add $0x8,%rdi
            &[0x0f, 0x0b],                               // ud2, at the end of the code
            &[0xbe, 0x01, 0, 0, 0],                      // mov $0x1,%esi
            &[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8],       // movabs $0x807060504030201,%rax
            &[0x83, 0xe0, 0xf8],                         // and $0xfffffff8,%eax
            &[0x48, 0xc1, 0xe0, 0x03],                   // shl $0x3,%rax
            &[0x0f, 0x0b, b'x', b'e'],                   // ud2, then not quite "xen"
            &[0x48, 0x89, 0x5c, 0x24, 0x08],             // mov %rbx,0x8(%rsp)
            &[0x48, 0x8b, 0x45, 0xf8],                   // mov -0x8(%rbp),%rax
            &[0x4c, 0x8d, 0x64, 0x24, 0x10],             // lea 0x10(%rsp),%r12
            &[0x8b, 0x44, 0x24, 0x0c],                   // mov 0xc(%rsp),%eax
        ];
        for code in taken {
            assert_eq!(decode(code, addr), decode_one(code, addr), "{code:02x?}");
            assert!(decode(code, addr).is_some(), "{code:02x?}");
        }
        // Stack operations, switch-table loads and the forms iced-x86 alone decodes.
        let left: [&[u8]; 12] = [
            &[0x48, 0x89, 0xe5],                   // mov %rsp,%rbp
            &[0x48, 0x83, 0xec, 0x10],             // sub $0x10,%rsp
            &[0x48, 0x83, 0xe4, 0xf0],             // and $0xfffffffffffffff0,%rsp
            &[0x48, 0xbc, 1, 2, 3, 4, 5, 6, 7, 8], // movabs $0x807060504030201,%rsp
            &[0x48, 0x89, 0x24, 0x24],             // mov %rsp,(%rsp)
            &[0x48, 0x8b, 0x65, 0xf8],             // mov -0x8(%rbp),%rsp
            &[0x48, 0x8b, 0x04, 0xc5, 0, 0, 0, 0], // mov 0x0(,%rax,8),%rax
            &[0xff, 0xe0],                         // jmp *%rax
            &[0xf0, 0x48, 0x0f, 0xb1, 0x17],       // lock cmpxchg %rdx,(%rdi)
            &[0xc5, 0xf9, 0xef, 0xc0],             // vpxor %xmm0,%xmm0,%xmm0
            &[0x0f, 0x0b, b'x', b'e', b'n'],       // Xen's emulation prefix
            &[0x0f, 0x0b, b'k', b'v', b'm', 0x90], // KVM's
        ];
        for code in left {
            assert_eq!(decode(code, addr), None, "{code:02x?}");
        }
    }
}

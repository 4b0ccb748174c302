//! Kernel code that is non-standard on purpose and whose exemption left no trace in the
//! final image, plus the user's own allow-list (`--allow FILE`).
//!
//! objtool is told about such code with annotations (STACK_FRAME_NON_STANDARD, unwind hints
//! inside functions, ANNOTATE_* markers) that live in `.discard.*` sections and are gone after
//! the link. Where the image keeps the fact (ORC undefined entries, hints in code outside
//! functions, `__bug_table`, `.return_sites`...) stackval reads it there instead; the entries
//! below are the rest. Each says why, with the kernel source that makes it so; a function here
//! is reported as skipped, never silently passed.

use std::collections::HashMap;
use std::sync::OnceLock;

/// `(function, reason)`.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "sev_verify_cbit",
        "arch/x86/kernel/sev_verify_cbit.S: on a C-bit mismatch it zeroes rsp on purpose \
         (`xorq %rsp, %rsp`) and halts forever, so no interrupt can leave the hlt loop",
    ),
    (
        "xen_hypercall_pv",
        "arch/x86/xen/xen-asm.S: the Xen PV hypercall is a `syscall` to the hypervisor, which \
         returns to the next instruction; the source brackets it with UNWIND_HINT_SAVE/RESTORE",
    ),
    (
        "asm_fred_entry_from_kvm",
        "arch/x86/entry/entry_64_fred.S (after 6.12): builds a FRED frame and pt_regs on its \
         own stack, then leaves them by ERETS (with FRED) or by restoring rsp from rbp, with \
         the callee-saved registers still recorded as pushed; UNWIND_HINT_SAVE/RESTORE give \
         objtool the state after that, and they do not survive the link",
    ),
    (
        "retbleed_untrain_ret",
        "arch/x86/lib/retpoline.S: jumps into the middle of its own `test` instruction \
         (`.byte 0xf6` + retbleed_return_thunk) to train the return predictor",
    ),
    (
        "srso_untrain_ret",
        "arch/x86/lib/retpoline.S: hides srso_safe_ret inside its own `movabs` \
         (`.byte 0x48, 0xb8`) and calls into the middle of that instruction",
    ),
    (
        "srso_alias_safe_ret",
        "arch/x86/lib/retpoline.S: `lea 8(%rsp),%rsp; UNWIND_HINT_FUNC; ret` drops its own \
         return address to return to its caller's caller (the SRSO safe-RET sequence)",
    ),
    (
        "srso_safe_ret",
        "arch/x86/lib/retpoline.S: the same safe-RET sequence as srso_alias_safe_ret",
    ),
    (
        "arch_rethook_trampoline",
        "arch/x86/kernel/rethook.c: entered by a return, not a call; pushes a fake return \
         address for the unwinder (UNWIND_HINT_FUNC), STACK_FRAME_NON_STANDARD_FP",
    ),
    (
        "ftrace_regs_caller",
        "arch/x86/kernel/ftrace_64.S: with a direct trampoline attached it rewrites its own \
         return address and returns into the trampoline (UNWIND_HINT_FUNC before that RET)",
    ),
];

/// Functions marked STACK_FRAME_NON_STANDARD in the source: on an ORC kernel the table shows
/// it (they are covered by undefined entries and skipped for that), on a frame-pointer kernel
/// nothing survives but this list. `(function, reason, frame-pointer kernels only)`.
pub const NON_STANDARD_ANNOTATED: &[(&str, &str, bool)] = &[
    (
        "machine_real_restart",
        "arch/x86/kernel/reboot.c: STACK_FRAME_NON_STANDARD(machine_real_restart); it far-jumps \
         into real-mode code",
        false,
    ),
    (
        "clear_bhb_loop",
        "arch/x86/entry/entry_64.S: STACK_FRAME_NON_STANDARD(clear_bhb_loop); two nested \
         intra-function calls whose RETs return inside the function",
        false,
    ),
    (
        "ftrace_caller",
        "arch/x86/kernel/ftrace_64.S: STACK_FRAME_NON_STANDARD_FP(ftrace_caller); \
         save_mcount_regs builds two frames",
        true,
    ),
    (
        "__fentry__",
        "arch/x86/kernel/ftrace_64.S: STACK_FRAME_NON_STANDARD_FP(__fentry__)",
        true,
    ),
];

/// The return thunks of arch/x86/lib/retpoline.S (SYM_CODE, UNWIND_HINT_FUNC,
/// ANNOTATE_UNRET_SAFE): their `ret` is every function's return, reached by the `jmp` at each
/// return site (or patched in at boot), not a return outside a callable function.
pub const RETURN_THUNKS: &[&str] = &[
    "__x86_return_thunk",
    "its_return_thunk",
    "retbleed_return_thunk",
    "srso_return_thunk",
    "srso_alias_return_thunk",
    "call_depth_return_thunk",
];

/// Why `name` is on the built-in list or the user's allow-list, if it is. `frame_pointer`
/// says whether the frame-pointer rules apply (STACK_FRAME_NON_STANDARD_FP entries).
pub fn non_standard(name: &str, frame_pointer: bool) -> Option<&'static str> {
    if let Some((_, why)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    if let Some((_, why, _)) = NON_STANDARD_ANNOTATED
        .iter()
        .find(|(n, _, fp_only)| *n == name && (frame_pointer || !fp_only))
    {
        return Some(why);
    }
    ALLOW.get().and_then(|m| m.get(name).copied())
}

static ALLOW: OnceLock<HashMap<String, &'static str>> = OnceLock::new();

/// Parses an allow-list: one `function  reason` per line, `#` comments and blank lines
/// ignored. Every entry needs a reason.
pub fn parse_allow(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line
            .split_once(char::is_whitespace)
            .map(|(a, b)| (a.trim(), b.trim()))
            .filter(|(_, b)| !b.is_empty())
            .ok_or_else(|| format!("line {}: expected `function  reason`", n + 1))?;
        out.push((name.to_string(), reason.to_string()));
    }
    Ok(out)
}

/// Installs the user's allow-list for this process (once; later calls are ignored).
pub fn set_allow(entries: Vec<(String, String)>) {
    let map = entries
        .into_iter()
        .map(|(n, r)| (n, &*Box::leak(format!("allow-list: {r}").into_boxed_str())))
        .collect();
    let _ = ALLOW.set(map);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_need_reasons() {
        let ok = parse_allow("# comment\n\nfoo   calls firmware with its own stack\n").unwrap();
        assert_eq!(
            ok,
            vec![(
                "foo".to_string(),
                "calls firmware with its own stack".to_string()
            )]
        );
        assert!(parse_allow("bar\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn built_in_entries_have_sources() {
        let annotated = NON_STANDARD_ANNOTATED.iter().map(|(n, w, _)| (n, w));
        for (name, why) in BUILT_IN.iter().map(|(n, w)| (n, w)).chain(annotated) {
            assert!(
                why.contains("arch/") || why.contains("kernel/"),
                "{name}: {why}"
            );
        }
    }
}

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Copied by stackval's scripts/source-faults.sh into its copy of the test kernel tree as
 * arch/x86/lib/stackval_faults.S (obj-y): two of the three injected faults.
 *
 * (b) a `ret` outside any function, after SYM_CODE_END;
 * (c) an asm function that sets up a frame and jumps to another file's code
 *     (__memcpy, arch/x86/lib/memcpy_64.S) without tearing the frame down.
 */
#include <linux/linkage.h>
#include <asm/unwind_hints.h>

	.text

SYM_CODE_START(stackval_fault_code)
	UNWIND_HINT_EMPTY
	ud2
SYM_CODE_END(stackval_fault_code)
	ret				/* fault (b): outside any function */
	int3

SYM_FUNC_START(stackval_fault_jump)
	push	%rbp
	mov	%rsp, %rbp
	jmp	__memcpy		/* fault (c): %rbp still points at our frame */
SYM_FUNC_END(stackval_fault_jump)

/*
 * Quark's vDSO: the time calls a program makes most, answered in guest user mode from the
 * TSC and a read-only data page (`vvar`, one page below the image) that qvisor keeps
 * current (qvisor/src/vclock.rs, docs/qvisor.md "Time without a syscall"). A call the page
 * cannot answer (a CPU-time clock, a clock the TSC does not drive, the page marked unusable)
 * makes the real syscall, so every answer is the one qkernel would give.
 *
 * Built by build.sh into vdso.so, whose bytes qvisor maps; the test
 * `vdso_image_matches_the_source` rebuilds it and compares.
 */

/* vvar layout: a seqlock (odd while qvisor writes) and the curve
 * CLOCK_MONOTONIC(tsc) = mono_ns + ((tsc - tsc_base) * mult) >> 32. */
#define VV_SEQ       0
#define VV_FLAGS     4
#define VV_TSC_BASE  8
#define VV_MULT      16
#define VV_MONO_NS   24
#define VV_REAL_OFF  32
#define VV_USABLE    1

/* Clock ids (bit masks): CLOCK_REALTIME, _COARSE, CLOCK_TAI are the wall clock;
 * CLOCK_MONOTONIC, _RAW, _COARSE and CLOCK_BOOTTIME the monotonic one, as qkernel has them. */
#define WALL_CLOCKS  0x821
#define MONO_CLOCKS  0xd2
#define COARSE_CLOCKS 0x60

#define NR_gettimeofday  96
#define NR_time          201
#define NR_clock_gettime 228
#define NR_clock_getres  229

	.text

/* Out: rax = CLOCK_MONOTONIC in ns, rdx = CLOCK_REALTIME - CLOCK_MONOTONIC in ns, CF clear;
 * CF set when the page cannot answer. Clobbers rcx, r8, r9. */
	.type read_clock, @function
read_clock:
	.cfi_startproc
1:	movl	vvar_page+VV_SEQ(%rip), %r8d
	testl	$1, %r8d
	jnz	3f
	testl	$VV_USABLE, vvar_page+VV_FLAGS(%rip)
	jz	4f
	lfence
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
	subq	vvar_page+VV_TSC_BASE(%rip), %rax
	xorl	%ecx, %ecx
	testq	%rax, %rax
	cmovsq	%rcx, %rax
	mulq	vvar_page+VV_MULT(%rip)
	shrdq	$32, %rdx, %rax
	addq	vvar_page+VV_MONO_NS(%rip), %rax
	movq	vvar_page+VV_REAL_OFF(%rip), %r9
	cmpl	vvar_page+VV_SEQ(%rip), %r8d
	jne	1b
	movq	%r9, %rdx
	clc
	ret
3:	pause
	jmp	1b
4:	stc
	ret
	.cfi_endproc
	.size read_clock, .-read_clock

/* int clock_gettime(clockid_t clock, struct timespec *ts) */
	.globl __vdso_clock_gettime
	.type __vdso_clock_gettime, @function
__vdso_clock_gettime:
	.cfi_startproc
	cmpl	$11, %edi
	ja	9f
	movl	$WALL_CLOCKS, %eax
	btl	%edi, %eax
	jc	1f
	movl	$MONO_CLOCKS, %eax
	btl	%edi, %eax
	jnc	9f
	call	read_clock
	jc	9f
	jmp	2f
1:	call	read_clock
	jc	9f
	addq	%rdx, %rax
2:	xorl	%edx, %edx
	movl	$1000000000, %ecx
	divq	%rcx
	movq	%rax, (%rsi)
	movq	%rdx, 8(%rsi)
	xorl	%eax, %eax
	ret
9:	movl	$NR_clock_gettime, %eax
	syscall
	ret
	.cfi_endproc
	.size __vdso_clock_gettime, .-__vdso_clock_gettime

/* int gettimeofday(struct timeval *tv, struct timezone *tz) */
	.globl __vdso_gettimeofday
	.type __vdso_gettimeofday, @function
__vdso_gettimeofday:
	.cfi_startproc
	call	read_clock
	jc	9f
	addq	%rdx, %rax
	testq	%rdi, %rdi
	jz	1f
	xorl	%edx, %edx
	movl	$1000, %ecx
	divq	%rcx
	xorl	%edx, %edx
	movl	$1000000, %ecx
	divq	%rcx
	movq	%rax, (%rdi)
	movq	%rdx, 8(%rdi)
1:	testq	%rsi, %rsi
	jz	2f
	movq	$0, (%rsi)
2:	xorl	%eax, %eax
	ret
9:	movl	$NR_gettimeofday, %eax
	syscall
	ret
	.cfi_endproc
	.size __vdso_gettimeofday, .-__vdso_gettimeofday

/* time_t time(time_t *t) */
	.globl __vdso_time
	.type __vdso_time, @function
__vdso_time:
	.cfi_startproc
	call	read_clock
	jc	9f
	addq	%rdx, %rax
	xorl	%edx, %edx
	movl	$1000000000, %ecx
	divq	%rcx
	testq	%rdi, %rdi
	jz	1f
	movq	%rax, (%rdi)
1:	ret
9:	movl	$NR_time, %eax
	syscall
	ret
	.cfi_endproc
	.size __vdso_time, .-__vdso_time

/* int clock_getres(clockid_t clock, struct timespec *res): 1 ns, 4 ms for the coarse
 * clocks (what qkernel answers); other clocks ask qkernel. */
	.globl __vdso_clock_getres
	.type __vdso_clock_getres, @function
__vdso_clock_getres:
	.cfi_startproc
	cmpl	$11, %edi
	ja	9f
	movl	$(WALL_CLOCKS | MONO_CLOCKS), %eax
	btl	%edi, %eax
	jnc	9f
	testq	%rsi, %rsi
	jz	2f
	movl	$1, %ecx
	movl	$COARSE_CLOCKS, %eax
	btl	%edi, %eax
	jnc	1f
	movl	$4000000, %ecx
1:	movq	$0, (%rsi)
	movq	%rcx, 8(%rsi)
2:	xorl	%eax, %eax
	ret
9:	movl	$NR_clock_getres, %eax
	syscall
	ret
	.cfi_endproc
	.size __vdso_clock_getres, .-__vdso_clock_getres

/* int getcpu(unsigned *cpu, unsigned *node, void *cache): the VM's one vCPU, node 0. */
	.globl __vdso_getcpu
	.type __vdso_getcpu, @function
__vdso_getcpu:
	.cfi_startproc
	testq	%rdi, %rdi
	jz	1f
	movl	$0, (%rdi)
1:	testq	%rsi, %rsi
	jz	2f
	movl	$0, (%rsi)
2:	xorl	%eax, %eax
	ret
	.cfi_endproc
	.size __vdso_getcpu, .-__vdso_getcpu

	.weak clock_gettime, gettimeofday, time, clock_getres, getcpu
	.set clock_gettime, __vdso_clock_gettime
	.set gettimeofday, __vdso_gettimeofday
	.set time, __vdso_time
	.set clock_getres, __vdso_clock_getres
	.set getcpu, __vdso_getcpu

	.section .note.GNU-stack, "", @progbits

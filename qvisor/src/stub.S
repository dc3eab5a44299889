/* The syscall entry stub (LSTAR) of the polled path. Mailbox at MB (top 2 GiB, so absolute
 * 32-bit sign-extended addressing works). FLAG: 0 idle, 1 request, 2 answer, 3 host asleep,
 * 4 trap (a call that may block is served by the vCPU thread), 5 taken back (the host thread
 * did not pick the request up within SPINS pauses: it is off its CPU, so the vCPU thread
 * serves the call rather than spin a whole time slice), 6 picked up (being served).
 * Clobbers only rax, rcx, rsp and flags before it either returns with iretq or traps (ud2)
 * for the slow path.
 * Two ways in: `entry` (LSTAR, the `syscall` instruction: rcx and r11 hold the return address
 * and flags) and `jump_entry` (a jump from a patched syscall site's trampoline, which sets rax
 * and rcx as `syscall` would; the flags are still the app's). VIA tells the host which. */
#define MB 0xffffffff80001000
#define FLAG (MB+0x00)
#define NR (MB+0x08)
#define A0 (MB+0x10)
#define A1 (MB+0x18)
#define A2 (MB+0x20)
#define A3 (MB+0x28)
#define A4 (MB+0x30)
#define A5 (MB+0x38)
#define URSP (MB+0x40)
#define RET (MB+0x48)
#define URIP (MB+0x50)
#define UFLAGS (MB+0x58)
#define SETFS (MB+0x60)
#define FSVAL (MB+0x68)
#define VIA (MB+0x70)
#define STACK (MB+0x1000)
#define SPINS 2048
	.text
	.code64
	.globl entry
entry:
	mov %rsp, URSP
	mov $STACK, %rsp
	movb $0, VIA
post:
	mov %rax, NR
	mov %rdi, A0
	mov %rsi, A1
	mov %rdx, A2
	mov %r10, A3
	mov %r8, A4
	mov %r9, A5
	mov %rcx, URIP
	mov %r11, UFLAGS
	mov $1, %ecx
	xor %eax, %eax
	lock cmpxchg %ecx, FLAG
	jne slow
	mov $SPINS, %ecx
1:	pause
	cmpl $1, FLAG
	jne 3f
	dec %ecx
	jnz 1b
	mov $1, %eax
	mov $5, %ecx
	lock cmpxchg %ecx, FLAG
	je slow
3:	cmpl $6, FLAG
	jne 4f
	pause
	jmp 3b
4:	cmpl $4, FLAG
	je slow
	cmpl $0, SETFS
	je 2f
	movl $0, SETFS
	mov FSVAL, %rax
	wrfsbase %rax
2:	mov RET, %rax
	pushq $0x2b
	pushq URSP
	pushq UFLAGS
	pushq $0x33
	pushq URIP
	movl $0, FLAG
	iretq
	.globl jump_entry
jump_entry:
	mov %rsp, URSP
	mov $STACK, %rsp
	pushfq
	pop %r11
	movb $1, VIA
	jmp post
	.globl slow
slow:
	ud2

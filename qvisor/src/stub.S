/* The syscall entry stub (LSTAR) of the polled path. Mailbox at MB (top 2 GiB, so absolute
 * 32-bit sign-extended addressing works). FLAG: 0 idle, 1 request, 2 answer, 3 host asleep,
 * 4 trap (a call that may block is served by the vCPU thread), 5 taken back (the host thread
 * did not pick the request up within SPINS pauses: it is off its CPU, so the vCPU thread
 * serves the call rather than spin a whole time slice), 6 picked up (being served).
 * Clobbers only rax, rcx, rsp and flags before it either returns with iretq or traps (ud2)
 * for the slow path.
 * Two ways in: `entry` (LSTAR, the `syscall` instruction: rcx and r11 hold the return address
 * and flags) and `jump_entry` (a jump from a patched syscall site's trampoline, which sets rax
 * and rcx as `syscall` would; the flags are still the app's). VIA tells the host which.
 * Fast reads (fastread.rs): a read(2), or a recvfrom(2) without flags or address (what
 * recv(fd, buf, len, 0) makes), of a descriptor FASTTAB names (bits 0-15: slot + 1;
 * 16-30: where its receive ring is in the window at FAST_RINGS; 31: blocking) copies what
 * the socket's receive ring holds straight into the app's buffer and returns, without the
 * mailbox; an empty ring, a forged table or geometry, or a fault in the copy (the host moves
 * rip to `fast_retreat`) fall back to the ordinary call, which nothing here has changed. The
 * ring's rx_head moves only after the copy, with one locked store, and FAST_COUNT counts it
 * (a statistic: app-writable). A buffer that does not lie in the user half is the ordinary
 * call's to refuse. A blocking descriptor whose ring is empty makes the ordinary call marked VIA 2: it will
 * most likely wait, and such a call does not renew the host thread's polling budget. VIA 3:
 * the call after a fast read that tells qkernel of it (does not renew it either).
 * Fast writes: a write(2), or a sendto(2) without flags or address (send(fd, buf, len, 0)), of
 * a listed descriptor whose slot the stack last saw connected and open for writing (readiness
 * OUT and CONNECTED, not ERR or HUP) and whose transmit ring has room for the whole buffer
 * (tx_limit - (tx_tail - tx_head)) copies it into the ring at FAST_TXRINGS (same place as the
 * receive ring's) and publishes it with one locked store of tx_tail; then sets tx_kick, and if
 * no kick was outstanding (the stack sleeps) makes the private call WRITE_DONE (VIA 3) so
 * qkernel kicks the stack. A ring without room for it all (a blocking write would wait, a
 * non-blocking one write part) is the ordinary call's, marked VIA 2 when blocking. */
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
#define FAST_SLOTS (MB+0x78)
#define FAST_RINGS (MB+0x80)
#define FAST_STRIDE (MB+0x88)
#define FAST_RXSIZE (MB+0x90)
#define FAST_COUNT (MB+0x98)
#define FAST_TXRINGS (MB+0xa0)
#define FAST_TXSIZE (MB+0xa8)
#define STACK (MB+0x1000)
#define FASTTAB (MB+0x1000)
#define FAST_FDS 1024
#define READ_DONE 0x5100
#define WRITE_DONE 0x5101
#define SENDTO 44
#define RECVFROM 45
/* readiness: OUT 2, HUP 8, ERR 16, CONNECTED 32 */
#define WRITE_MASK 58
#define WRITE_OK 34
#define USER_END 0x800000000000
#define SPINS 2048
	.text
	.code64
	.globl entry
entry:
	mov %rsp, URSP
	mov $STACK, %rsp
	movb $0, VIA
try_fast:
	mov %rax, NR
	cmp $1, %rax
	jbe 1f
	cmp $RECVFROM, %rax
	je 0f
	cmp $SENDTO, %rax
	jne post
0:	test %r10, %r10
	jnz post
	test %r8, %r8
	jnz post
1:	cmp $FAST_FDS, %rdi
	jae post
	mov FASTTAB(,%rdi,4), %eax
	test %eax, %eax
	jz 9f
	test %rdx, %rdx
	jz 9f
	cmpq $0, FAST_SLOTS
	je 9f
	mov %rcx, URIP
	mov %r11, UFLAGS
	push %rsi
	push %rdi
	push %rdx
	push %r8
	push %r9
	push %r10
	.globl fast_body
fast_body:
	mov %rsi, %rcx
	add %rdx, %rcx
	jc fast_retreat
	movabs $USER_END, %r11
	cmp %r11, %rcx
	ja fast_retreat
	mov %eax, %r10d
	movzwl %ax, %r8d
	dec %r8d
	mov %r8, %r9
	shl $7, %r9
	add FAST_SLOTS, %r9
	cmpq $1, NR
	je fast_write
	cmpq $SENDTO, NR
	je fast_write
	mov 68(%r9), %eax
	sub 4(%r9), %eax
	jz fast_wait
	cmp FAST_RXSIZE, %eax
	ja fast_retreat
	cmp %rdx, %rax
	jbe 1f
	mov %rdx, %rax
1:	mov %r10d, %r8d
	shr $16, %r8d
	and $0x7fff, %r8d
	imul FAST_STRIDE, %r8
	add FAST_RINGS, %r8
	mov 4(%r9), %edx
	mov FAST_RXSIZE, %ecx
	dec %ecx
	and %ecx, %edx
	inc %ecx
	sub %edx, %ecx
	cmp %rax, %rcx
	jbe 2f
	mov %rax, %rcx
2:	cld
	mov %rsi, %rdi
	lea (%r8,%rdx), %rsi
	mov %rax, %rdx
	sub %rcx, %rdx
	rep movsb
	mov %rdx, %rcx
	mov %r8, %rsi
	rep movsb
	mov 4(%r9), %ecx
	add %eax, %ecx
	jmp read_commit
fast_write:
	cmpq $0, FAST_TXRINGS
	je fast_retreat
	mov 72(%r9), %eax
	and $WRITE_MASK, %eax
	cmp $WRITE_OK, %eax
	jne fast_retreat
	mov (%r9), %r11d
	mov %r11d, %ecx
	sub 64(%r9), %ecx
	mov 92(%r9), %eax
	cmp FAST_TXSIZE, %eax
	ja fast_retreat
	sub %ecx, %eax
	jb fast_retreat
	cmp %rdx, %rax
	jb fast_wait
	mov %r10d, %r8d
	shr $16, %r8d
	and $0x7fff, %r8d
	imul FAST_TXSIZE, %r8
	add FAST_TXRINGS, %r8
	mov FAST_TXSIZE, %ecx
	dec %ecx
	mov %r11d, %eax
	and %ecx, %eax
	inc %ecx
	sub %eax, %ecx
	cmp %rdx, %rcx
	jbe 2f
	mov %rdx, %rcx
2:	cld
	lea (%r8,%rax), %rdi
	mov %rdx, %rax
	sub %rcx, %rdx
	rep movsb
	mov %rdx, %rcx
	mov %r8, %rdi
	rep movsb
	.globl fast_commit
fast_commit:
	add %eax, %r11d
	xchg %r11d, (%r9)
	mov $1, %ecx
	xchg %ecx, 8(%r9)
	incq FAST_COUNT
	dec %ecx
	mov $WRITE_DONE, %ecx
	jmp 3f
read_commit:
	xchg %ecx, 4(%r9)
	incq FAST_COUNT
	cmpl $0, 80(%r9)
	mov $READ_DONE, %ecx
3:	pop %r10
	pop %r9
	pop %r8
	pop %rdx
	pop %rdi
	pop %rsi
	je to_app
	mov %rdi, A0
	mov %rax, A1
	mov %rcx, NR
	movb $3, VIA
	jmp claim
fast_wait:
	test %r10d, %r10d
	jns fast_retreat
	movb $2, VIA
	.globl fast_retreat
fast_retreat:
	pop %r10
	pop %r9
	pop %r8
	pop %rdx
	pop %rdi
	pop %rsi
	mov URIP, %rcx
	mov UFLAGS, %r11
9:	mov NR, %rax
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
claim:
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
	movl $0, FLAG
to_app:
	pushq $0x2b
	pushq URSP
	pushq UFLAGS
	pushq $0x33
	pushq URIP
	iretq
	.globl jump_entry
jump_entry:
	mov %rsp, URSP
	mov $STACK, %rsp
	pushfq
	pop %r11
	movb $1, VIA
	jmp try_fast
	.globl slow
slow:
	ud2

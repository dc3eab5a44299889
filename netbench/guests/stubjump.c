/* What syscall-site rewriting (issue 12) would save: getpid through the `syscall` instruction
 * (PVM's transition into the polled path's stub at LSTAR) against a plain jump into the same
 * stub with the registers `syscall` would have set (rcx = return address, r11 = flags), which
 * is what a patched call site would do. Run by hand in a container:
 *   gcc -O2 -static -o ROOT/bin/stubjump netbench/guests/stubjump.c
 *   ./target/release/qvisor launch --rootfs ROOT /bin/stubjump [CALLS]
 * The stub's address is qvisor's STUB_VA (qvisor/src/poll.rs). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

/* The stub returns with iretq to rcx; rdx carries its address and is clobbered. */
static long via_stub(long nr) {
  long ret;
  __asm__ volatile("lea 1f(%%rip), %%rcx\n\t"
                   "pushfq\n\t"
                   "pop %%r11\n\t"
                   "movabs $0xffffffff80000000, %%rdx\n\t"
                   "jmp *%%rdx\n"
                   "1:\n"
                   : "=a"(ret)
                   : "a"(nr)
                   : "rcx", "r11", "rdx", "memory", "cc");
  return ret;
}

int main(int argc, char **argv) {
  long calls = argc > 1 ? atol(argv[1]) : 200000;
  long a = syscall(SYS_getpid), b = via_stub(SYS_getpid);
  double t0 = now_ns();
  for (long i = 0; i < calls; i++) syscall(SYS_getpid);
  double t1 = now_ns();
  for (long i = 0; i < calls; i++) via_stub(SYS_getpid);
  double t2 = now_ns();
  printf("getpid %ld/%ld: syscall %.0f ns, jump into the stub %.0f ns\n", a, b, (t1 - t0) / calls,
         (t2 - t1) / calls);
  return a == b ? 0 : 1;
}

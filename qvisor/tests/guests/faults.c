/* Misbehaves as argv[1] says: null (write to address 0), kernel (write to a kernel address),
 * ud2 (invalid instruction), hlt (privileged instruction), jump (execute unmapped memory),
 * spin (loop forever without a syscall), deep (use 6 MiB of stack, then exit 0), overflow
 * (recurse past the 8 MiB stack). And survives: recover (overflow the stack with a SIGSEGV
 * handler on an alternate stack, which jumps back out), child (a child dies of SIGSEGV,
 * the parent reports its status), ud2-handled (a SIGILL handler skips the instruction). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

/* Each level keeps 64 KiB on the stack and touches all of it. */
static long down(int levels) {
  volatile char frame[64 << 10];
  for (unsigned i = 0; i < sizeof frame; i += 4096) frame[i] = (char)levels;
  return levels == 0 ? frame[0] : frame[4096] + down(levels - 1);
}

static sigjmp_buf back;
static char altstack[64 << 10];
static volatile uintptr_t fault_addr, handler_sp;

static void on_segv(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  volatile char here;
  fault_addr = (uintptr_t)si->si_addr;
  handler_sp = (uintptr_t)&here;
  siglongjmp(back, 1);
}

static int recover(void) {
  stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
  stack_t old;
  if (sigaltstack(&ss, NULL) || sigaltstack(NULL, &old) || old.ss_sp != altstack ||
      old.ss_size != sizeof altstack || old.ss_flags != 0) {
    printf("sigaltstack not recorded\n");
    return 1;
  }
  struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_ONSTACK};
  sigaction(SIGSEGV, &sa, NULL);
  if (sigsetjmp(back, 1) == 0) {
    down(1 << 20);
    printf("no fault\n");
    return 1;
  }
  int on_alt = handler_sp > (uintptr_t)altstack && handler_sp < (uintptr_t)altstack + sizeof altstack;
  printf("recovered: handler on the alternate stack %s, fault below the stack %s\n",
         on_alt ? "yes" : "no", fault_addr > 0x7f0000000000ul ? "yes" : "no");
  return on_alt ? 0 : 1;
}

static void skip_ud2(int sig, siginfo_t *si, void *ucv) {
  (void)sig;
  (void)si;
  ucontext_t *uc = ucv;
  uc->uc_mcontext.gregs[REG_RIP] += 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "null")) *(volatile int *)0 = 1;
  if (!strcmp(argv[1], "kernel")) *(volatile long *)0xffff800000001000ul = 1;
  if (!strcmp(argv[1], "ud2")) __asm__ volatile("ud2");
  if (!strcmp(argv[1], "hlt")) __asm__ volatile("hlt");
  if (!strcmp(argv[1], "jump")) ((void (*)(void))0x123456789000ul)();
  if (!strcmp(argv[1], "spin")) for (volatile long i = 0;; i++) {}
  if (!strcmp(argv[1], "deep")) return down(96) == 96 * 97 / 2 ? 0 : 1;
  if (!strcmp(argv[1], "overflow")) return (int)down(1 << 20);
  if (!strcmp(argv[1], "recover")) return recover();
  if (!strcmp(argv[1], "child")) {
    pid_t c = fork();
    if (c == 0) *(volatile int *)0 = 1;
    int status = 0;
    waitpid(c, &status, 0);
    printf("child killed by signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV ? 0 : 1;
  }
  if (!strcmp(argv[1], "ud2-handled")) {
    struct sigaction sa = {.sa_sigaction = skip_ud2, .sa_flags = SA_SIGINFO};
    sigaction(SIGILL, &sa, NULL);
    __asm__ volatile("ud2");
    printf("went on past ud2\n");
    return 0;
  }
  return 0;
}

/* A hostile app: each attack runs in a child process, and the parent reports how the child
 * ended. qkernel must refuse (an error) or kill the child (a signal); the parent, the other
 * processes and the VMM carry on. Prints one line per attack, "NAME: signal N", "NAME: exit N"
 * (the child's own verdict, 0 when every call was refused), then "survived".
 *
 * The syscall stub and its mailbox live at fixed addresses in the top of the address space
 * (qvisor/src/poll.rs): they are user-visible by necessity, so they are attacked too.
 * So are the descriptor tables (where sgdt/sidt say they are) and the parent's memory (through
 * process_vm_writev, ptrace and /proc/PID/mem).
 * Then floods (syscalls good, bad and unknown; faults caught by a handler) and a path changed
 * by another thread while it is opened. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define STUB_VA 0xffffffff80000000UL
#define MAILBOX_VA (STUB_VA + 0x1000)

static long raw(long nr, long a, long b, long c) { return syscall(nr, a, b, c); }

/* Each call must fail with -EFAULT/-EINVAL or similar: exit 0 if all were refused. */
static int bad_pointers(void) {
  int bad = 0;
  char buf[16];
  if (raw(SYS_write, 1, 16, 5) != -1) bad |= 1;                        /* page zero */
  if (raw(SYS_write, 1, 0xffff800000000000UL, 8) != -1) bad |= 2;      /* kernel half */
  int p[2];
  if (pipe(p)) return 100;
  raw(SYS_write, p[1], (long)buf, -1L); /* huge length: any answer but a crash (not on stdout) */
  if (raw(SYS_read, 0, 0x7ffffffff000UL, 1 << 20) > 0) bad |= 8;       /* past the stack */
  struct iovec v[2] = {{buf, 8}, {(void *)0xdead0000UL, 1UL << 62}};
  if (raw(SYS_writev, 1, (long)v, 2) > 8) bad |= 16;                   /* overflowing iovec */
  if (raw(SYS_getdents64, 0, 0xffffffffffff0000UL, 1L << 40) >= 0) bad |= 32;
  return bad;
}

/* Overwrite the stub through the kernel (read from a pipe into it), then make a syscall:
 * this process may die, nobody else may notice. */
static int overwrite_stub(void) {
  int p[2];
  if (pipe(p)) return 100;
  char junk[64];
  memset(junk, 0xcc, sizeof junk);
  write(p[1], junk, sizeof junk);
  long r = raw(SYS_read, p[0], STUB_VA, 64);
  (void)r;
  return getpid() > 0 ? 0 : 1; /* a syscall through whatever the stub is now */
}

/* Scribble over the mailbox: a forged request the host thread may serve or ignore. */
static int forge_mailbox(void) {
  volatile uint64_t *mb = (volatile uint64_t *)MAILBOX_VA;
  for (int i = 0; i < 32; i++) mb[i] = 0x4141414141414141ULL;
  mb[0] = 1;             /* "request" */
  mb[1] = 0xffffffffUL;  /* a syscall number */
  for (volatile int i = 0; i < 1000000; i++) {}
  mb[0] = 7;
  return getpid() > 0 ? 0 : 1;
}

static void privileged(int which) {
  switch (which) {
    case 0: __asm__ volatile("cli"); break;
    case 1: __asm__ volatile("hlt"); break;
    case 2: __asm__ volatile("wrmsr" ::"c"(0xc0000082), "a"(0), "d"(0)); break; /* LSTAR */
    case 3: __asm__ volatile("outb %%al, %%dx" ::"a"(0), "d"(0x80)); break;
    case 4: { uint64_t v = 0; __asm__ volatile("mov %0, %%cr3" ::"r"(v)); break; }
    case 5: { struct { uint16_t l; uint64_t b; } __attribute__((packed)) d = {0, 0};
              __asm__ volatile("lidt %0" ::"m"(d)); break; }
  }
}

static void write_kernel_memory(int which) {
  /* Page tables, descriptor tables and the kernel half are not the app's. */
  volatile uint64_t *p = which == 0 ? (uint64_t *)0xffff800000000000UL
                       : which == 1 ? (uint64_t *)0xfffffe0000000000UL
                                    : (uint64_t *)(STUB_VA + 8);
  *p = 0;
}

/* The descriptor tables where the CPU says they are (sgdt/sidt work in user mode unless UMIP
 * is on; with UMIP they fault, which is as good). */
static void write_descriptor_table(int which) {
  struct { uint16_t limit; uint64_t base; } __attribute__((packed)) d = {0, 0};
  if (which == 0) __asm__ volatile("sgdt %0" : "=m"(d));
  else __asm__ volatile("sidt %0" : "=m"(d));
  *(volatile uint64_t *)d.base = 0;
}

/* Another process's memory: the child tries to change the parent's `secret` through every
 * door Linux has for it; each must be refused. The parent checks its value afterwards. */
static volatile long secret = 1234;
static int write_parent_memory(void) {
  pid_t parent = getppid();
  int bad = 0;
  long evil = 666;
  struct iovec local = {&evil, sizeof evil}, remote = {(void *)&secret, sizeof secret};
  if (syscall(SYS_process_vm_writev, parent, &local, 1, &remote, 1, 0) >= 0) bad |= 1;
  if (ptrace(PTRACE_ATTACH, parent, 0, 0) == 0) bad |= 2;
  if (ptrace(PTRACE_POKEDATA, parent, (void *)&secret, (void *)evil) == 0) bad |= 4;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", (int)parent);
  int fd = open(path, O_RDWR);
  if (fd >= 0 && pwrite(fd, &evil, sizeof evil, (off_t)(uintptr_t)&secret) == sizeof evil)
    bad |= 8;
  return bad;
}

static void jump_into_stub(void) {
  void (*f)(void) = (void (*)(void))(STUB_VA + 0x33);
  f();
}

static void run(const char *name, int (*fn)(int), int arg) {
  fflush(stdout);
  pid_t c = fork();
  if (c == 0) _exit(fn(arg));
  int st = 0;
  waitpid(c, &st, 0);
  if (WIFSIGNALED(st)) printf("%s: signal %d\n", name, WTERMSIG(st));
  else printf("%s: exit %d\n", name, WEXITSTATUS(st));
}

static int t_bad(int a) { (void)a; return bad_pointers(); }
static int t_stub(int a) { (void)a; return overwrite_stub(); }
static int t_mailbox(int a) { (void)a; return forge_mailbox(); }
static int t_priv(int a) { privileged(a); return 42; }
static int t_kmem(int a) { write_kernel_memory(a); return 42; }
static int t_jump(int a) { (void)a; jump_into_stub(); return 42; }
static int t_dt(int a) { write_descriptor_table(a); return 42; }
static int t_parent(int a) { (void)a; return write_parent_memory(); }

/* Floods: many syscalls (good and bad), then many faults, each answered in turn. */
static int flood_syscalls(void) {
  for (int i = 0; i < 100000; i++)
    if (raw(SYS_getpid, 0, 0, 0) <= 0) return 1;
  for (int i = 0; i < 10000; i++)
    if (raw(SYS_write, 1, 0xffff800000000000UL + i, 8) != -1) return 2;
  for (int i = 0; i < 10000; i++) raw(1000 + i % 1000, i, i, i); /* unknown numbers: ENOSYS */
  return 0;
}

static sigjmp_buf fault_return;
static void on_fault(int sig) { (void)sig; siglongjmp(fault_return, 1); }

static int flood_faults(void) {
  signal(SIGSEGV, on_fault);
  volatile int faults = 0;
  for (int i = 0; i < 2000; i++)
    if (sigsetjmp(fault_return, 1) == 0) *(volatile int *)(uintptr_t)(16 + i) = i;
    else faults++;
  return faults == 2000 ? 0 : 1;
}

/* Time of check, time of use: one thread keeps flipping a path between a file of the root
 * and a climb towards the host's /etc/shadow while another opens it. Whatever qkernel reads,
 * it resolves once, inside the root: no open may give anything but the root's own file. */
static char flip_path[] = "/etc/hostname\0\0\0\0";
static volatile int flipping = 1;
static void *flipper(void *arg) {
  (void)arg;
  while (flipping) {
    memcpy(flip_path, "/../../etc/shadow", 18);
    memcpy(flip_path, "/etc/hostname\0\0\0\0", 18);
  }
  return NULL;
}

static int toctou_path(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, flipper, NULL)) return 100;
  int bad = 0, opened = 0;
  for (int i = 0; i < 20000 && !bad; i++) {
    int fd = open(flip_path, O_RDONLY);
    if (fd < 0) continue;
    opened++;
    char got[64] = {0};
    if (read(fd, got, sizeof got - 1) < 0 || strcmp(got, "inside-the-root\n")) bad = 1;
    close(fd);
  }
  flipping = 0;
  pthread_join(t, NULL);
  return bad ? 1 : (opened ? 0 : 2);
}

static int t_flood_syscalls(int a) { (void)a; return flood_syscalls(); }
static int t_flood_faults(int a) { (void)a; return flood_faults(); }
static int t_toctou(int a) { (void)a; return toctou_path(); }

int main(void) {
  run("bad-pointers", t_bad, 0);
  run("overwrite-stub", t_stub, 0);
  run("forge-mailbox", t_mailbox, 0);
  const char *names[] = {"cli", "hlt", "wrmsr", "out", "mov-cr3", "lidt"};
  for (int i = 0; i < 6; i++) run(names[i], t_priv, i);
  run("write-kernel-half", t_kmem, 0);
  run("write-high-kernel", t_kmem, 1);
  run("write-stub-page", t_kmem, 2);
  run("jump-into-stub", t_jump, 0);
  run("write-gdt", t_dt, 0);
  run("write-idt", t_dt, 1);
  run("write-parent-memory", t_parent, 0);
  printf("parent-secret: %ld\n", secret);
  run("flood-syscalls", t_flood_syscalls, 0);
  run("flood-faults", t_flood_faults, 0);
  run("toctou-path", t_toctou, 0);
  /* The parent's own syscalls still work after all that. */
  fflush(stdout);
  char msg[] = "survived\n";
  if (write(1, msg, sizeof msg - 1) != (ssize_t)(sizeof msg - 1)) return 1;
  return 0;
}

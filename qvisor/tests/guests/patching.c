/* Syscall-site patching seen from the app (built dynamically: libc's sites are the ones
 * patched). patching MODE:
 *   sites     - print what libc's getpid() starts with before and after calls to it: "mov"
 *               (as built) or "jump" (patched into a jump)
 *   fork      - patch, fork: the child's calls answer for the child; it then execs `sites`,
 *               whose fresh libc starts unpatched
 *   spawn     - vfork+exec and posix_spawn (glibc's clone and vfork sites patched first)
 *   stop      - a child making patched calls is stopped (SIGSTOP), seen stopped, continued
 *   hostile   - the app goes after the slots and trampolines: writes through syscalls
 *               (EFAULT), stores (SIGSEGV), MAP_FIXED over the slots (refused), munmap and
 *               mprotect of them (no effect): patched calls keep working
 *   selfcheck - checksum the program's own code, make syscalls from it and from libc, check
 *               again
 *   jit       - generate code with a syscall at run time (mmap, mprotect), run it, change it
 *   threads   - four threads making syscalls through libc at once, every answer checked
 *   signals   - signals arriving during patched calls, and a patched blocking call
 *               (waitpid) interrupted by an SA_RESTART handler, restarted, answered */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern const unsigned char __executable_start[], __etext[];

static void fail(const char *what) {
  printf("FAIL %s\n", what);
  exit(1);
}

/* A `mov $39, %eax; syscall` pair in the program's own image (never patched). */
static long own_getpid(void) {
  long r;
  __asm__ volatile("mov $39, %%eax\n\tsyscall" : "=a"(r) : : "rcx", "r11", "memory");
  return r;
}

static uint64_t checksum(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static const char *getpid_code(void) {
  const unsigned char *code = (const unsigned char *)&getpid;
  if (code[0] == 0xb8) return "mov";
  if (code[0] == 0xff && code[1] == 0x24 && code[2] == 0x25) return "jump";
  return "something else";
}

static int sites(void) {
  printf("libc getpid before: %s\n", getpid_code());
  pid_t me = getpid();
  for (int i = 0; i < 100; i++)
    if (getpid() != me) fail("getpid changed");
  printf("libc getpid after: %s\n", getpid_code());
  return 0;
}

static const char *self_path;

static int forked(void) {
  pid_t parent = getpid();
  for (int i = 0; i < 10; i++) getpid();
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    pid_t me = getpid();
    if (me == parent) fail("the child got its parent's pid");
    for (int i = 0; i < 1000; i++)
      if (getpid() != me) fail("child getpid");
    printf("child's libc getpid: %s\n", getpid_code());
    fflush(stdout);
    execl(self_path, "patching", "sites", (char *)NULL);
    fail("exec");
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
    fail("child");
  if (getpid() != parent) fail("parent getpid");
  printf("fork: ok\n");
  return 0;
}

extern char **environ;

static void reap(pid_t child, const char *what) {
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
    fail(what);
}

static int spawn(void) {
  for (int round = 0; round < 3; round++) { /* the first round patches, the rest jump */
    pid_t child = vfork();
    if (child < 0) fail("vfork");
    if (child == 0) {
      execl(self_path, "patching", "sites", (char *)NULL);
      _exit(127);
    }
    reap(child, "vfork child");
    char *argv[] = {"patching", "sites", NULL};
    if (posix_spawn(&child, self_path, NULL, NULL, argv, environ)) fail("posix_spawn");
    reap(child, "spawned child");
  }
  printf("vfork and posix_spawn: ok\n");
  return 0;
}

static int stop_continue(void) {
  pid_t child = fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    pid_t me = getpid();
    for (;;)
      if (getpid() != me) _exit(3);
  }
  struct timespec t = {0, 20000000};
  nanosleep(&t, NULL);
  for (int round = 0; round < 3; round++) {
    int status = 0;
    kill(child, SIGSTOP);
    if (waitpid(child, &status, WUNTRACED) != child || !WIFSTOPPED(status)) fail("not stopped");
    kill(child, SIGCONT);
    if (waitpid(child, &status, WCONTINUED) != child || !WIFCONTINUED(status))
      fail("not continued");
    nanosleep(&t, NULL);
  }
  kill(child, SIGKILL);
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
    fail("child did not die of SIGKILL");
  printf("stopped and continued during patched calls: ok\n");
  return 0;
}

/* Runs `fn` in a child and says whether it died of SIGSEGV. */
static int segfaults(void (*fn)(void)) {
  pid_t child = fork();
  if (child == 0) {
    fn();
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

static uintptr_t slot, trampoline;
static void store_to_slot(void) { *(volatile uint64_t *)slot = 0x41414141; }
static void store_to_trampoline(void) { *(volatile uint8_t *)trampoline = 0xcc; }

static int hostile(void) {
  pid_t me = getpid();
  for (int i = 0; i < 10; i++) getpid();
  const unsigned char *code = (const unsigned char *)&getpid;
  if (code[0] != 0xff) fail("getpid was not patched");
  uint32_t disp;
  memcpy(&disp, code + 3, 4);
  slot = disp;
  trampoline = *(volatile uint64_t *)slot; /* readable: the jump reads it */
  /* /proc/self/maps names them, read-only. */
  char maps[8192] = {0};
  int mf = open("/proc/self/maps", O_RDONLY);
  if (mf < 0 || read(mf, maps, sizeof maps - 1) <= 0) fail("reading /proc/self/maps");
  close(mf);
  char want[64];
  snprintf(want, sizeof want, "%08lx-", (unsigned long)(slot & ~0xfffful));
  char *line = strstr(maps, want);
  if (!line || strncmp(strchr(line, ' ') + 1, "r--p", 4) || !strstr(line, "[syscall-slots]"))
    fail("/proc/self/maps does not show the slots read-only");
  int zero = open("/dev/zero", O_RDONLY);
  if (zero < 0) fail("open /dev/zero");
  if (read(zero, (void *)slot, 8) != -1 || errno != EFAULT) fail("read(2) into a slot");
  if (read(zero, (void *)trampoline, 8) != -1 || errno != EFAULT) fail("read(2) into a trampoline");
  if (!segfaults(store_to_slot)) fail("a store to a slot did not fault");
  if (!segfaults(store_to_trampoline)) fail("a store to a trampoline did not fault");
  void *over = mmap((void *)(slot & ~4095ul), 4096, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (over != MAP_FAILED) fail("MAP_FIXED over the slots");
  munmap((void *)(slot & ~4095ul), 4096);
  mprotect((void *)(slot & ~4095ul), 4096, PROT_READ | PROT_WRITE);
  if (!segfaults(store_to_slot)) fail("the slots became writable");
  for (int i = 0; i < 1000; i++)
    if (getpid() != me) fail("getpid after the attacks");
  printf("slots and trampolines held; patched calls still answer\n");
  return 0;
}

static int selfcheck(void) {
  size_t n = __etext - __executable_start;
  uint64_t before = checksum(__executable_start, n);
  pid_t me = getpid();
  for (int i = 0; i < 1000; i++) {
    if (own_getpid() != me || getpid() != me) fail("getpid");
    if (getuid() != 0) fail("getuid");
  }
  uint64_t after = checksum(__executable_start, n);
  printf("own code %s (%zu bytes)\n", before == after ? "unchanged" : "CHANGED", n);
  return before != after;
}

static int jit(void) {
  /* mov $NR, %eax; syscall; ret */
  unsigned char code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
  unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) fail("mmap");
  for (int round = 0; round < 2; round++) {
    code[1] = round == 0 ? SYS_getpid : SYS_getuid;
    long want = round == 0 ? getpid() : (long)getuid();
    if (mprotect(page, 4096, PROT_READ | PROT_WRITE)) fail("mprotect rw");
    memcpy(page, code, sizeof code);
    if (mprotect(page, 4096, PROT_READ | PROT_EXEC)) fail("mprotect rx");
    long (*fn)(void) = (long (*)(void))page;
    for (int i = 0; i < 1000; i++)
      if (fn() != want) fail("generated code's answer");
    if (memcmp(page, code, sizeof code)) fail("generated code changed under the program");
  }
  printf("generated code ran and stayed as written\n");
  return 0;
}

static void *worker(void *arg) {
  pid_t me = getpid();
  pid_t tid = gettid();
  for (int i = 0; i < 20000; i++) {
    if (getpid() != me || gettid() != tid || getuid() != 0) {
      printf("FAIL thread %ld call %d\n", (long)arg, i);
      exit(1);
    }
  }
  return NULL;
}

static int threads(void) {
  pthread_t t[4];
  for (long i = 0; i < 4; i++)
    if (pthread_create(&t[i], NULL, worker, (void *)i)) fail("pthread_create");
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  printf("4 threads x 20000 calls answered right\n");
  return 0;
}

static volatile sig_atomic_t handled, stop;
static pthread_t main_thread;
static void on_usr1(int sig) {
  (void)sig;
  handled++;
}

/* SIGUSR1 to the main thread every 2 ms until told to stop. */
static void *pester(void *arg) {
  (void)arg;
  struct timespec ms = {0, 2000000};
  while (!stop) {
    pthread_kill(main_thread, SIGUSR1);
    nanosleep(&ms, NULL);
  }
  return NULL;
}

static int signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  pid_t me = getpid();
  main_thread = pthread_self();
  /* Signals landing while the main thread makes patched calls back to back. */
  pthread_t t;
  if (pthread_create(&t, NULL, pester, NULL)) fail("pthread_create");
  long calls = 0;
  while (handled < 50) {
    if (getpid() != me) fail("getpid during signals");
    calls++;
  }
  /* A patched blocking call (the second waitpid runs through the jump) interrupted by the
   * handler and restarted: it still reaps its child. */
  for (int round = 0; round < 2; round++) {
    int before = handled;
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
      struct timespec t = {0, 150000000};
      nanosleep(&t, NULL);
      _exit(7 + round);
    }
    int status = 0;
    pid_t got = waitpid(child, &status, 0);
    if (got != child) fail("waitpid returned another pid (not restarted?)");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 7 + round) fail("child status");
    if (handled == before) fail("no signal arrived during waitpid");
  }
  stop = 1;
  pthread_join(t, NULL);
  printf("signals during %ld patched calls and restarted waits: ok\n", calls);
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  self_path = argv[0];
  if (!strcmp(mode, "sites")) return sites();
  if (!strcmp(mode, "fork")) return forked();
  if (!strcmp(mode, "spawn")) return spawn();
  if (!strcmp(mode, "stop")) return stop_continue();
  if (!strcmp(mode, "hostile")) return hostile();
  if (!strcmp(mode, "selfcheck")) return selfcheck();
  if (!strcmp(mode, "jit")) return jit();
  if (!strcmp(mode, "threads")) return threads();
  if (!strcmp(mode, "signals")) return signals();
  fprintf(stderr, "usage: patching sites|fork|spawn|stop|hostile|selfcheck|jit|threads|signals\n");
  return 2;
}

/* Exercises file and process syscalls busybox does not reach; prints one line per check. */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <stdint.h>
#include <stddef.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif
#ifndef SYS_membarrier
#define SYS_membarrier 324
#endif
#define CHECK(name, cond) printf("%s %s\n", (cond) ? "ok" : "FAIL", name)

static volatile int got_sig, got_code, got_pid;
static void on_usr1(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  got_sig = sig;
  got_code = si->si_code;
  got_pid = si->si_pid;
}

int main(void) {
  int dir = open("/data", O_RDONLY | O_DIRECTORY);
  CHECK("open dir", dir >= 0);
  int fd = openat(dir, "lines.txt", O_RDONLY | O_CLOEXEC);
  CHECK("openat relative to a dirfd", fd >= 0);
  char buf[64] = {0};
  CHECK("pread at offset", pread(fd, buf, 6, 7) == 6 && !memcmp(buf, "line 2", 6));
  {
    char a[4], b[2];
    struct iovec v[2] = {{a, 4}, {b, 2}};
    off_t at = lseek(fd, 0, SEEK_CUR);
    CHECK("preadv at offset, file position kept",
          preadv(fd, v, 2, 7) == 6 && !memcmp(a, "line", 4) && !memcmp(b, " 2", 2) &&
              lseek(fd, 0, SEEK_CUR) == at);
    lseek(fd, 0, SEEK_SET);
    CHECK("preadv2 at -1 reads at the file position",
          preadv2(fd, v, 2, -1, 0) == 6 && !memcmp(a, "line", 4) && !memcmp(b, " 1", 2) &&
              lseek(fd, 0, SEEK_CUR) == 6);
    CHECK("preadv2 with an unknown flag is EOPNOTSUPP",
          preadv2(fd, v, 2, 0, 0x100) == -1 && errno == EOPNOTSUPP);
    int w = open("/dev/shm/quark-pwritev", O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct iovec out[2] = {{"abc", 3}, {"defg", 4}};
    char back[10] = {0};
    CHECK("pwritev at offset",
          w >= 0 && pwritev(w, out, 2, 3) == 7 && pread(w, back, 10, 0) == 10 &&
              !memcmp(back, "\0\0\0abcdefg", 10));
    close(w);
    unlink("/dev/shm/quark-pwritev");
    int p[2];
    CHECK("preadv on a pipe is ESPIPE",
          pipe(p) == 0 && preadv(p[0], v, 2, 0) == -1 && errno == ESPIPE);
    close(p[0]);
    close(p[1]);
    unsigned cpu = 7, node = 7;
    CHECK("getcpu", getcpu(&cpu, &node) == 0 && cpu == 0 && node == 0 && sched_getcpu() == 0);
  }
  CHECK("lseek end", lseek(fd, 0, SEEK_END) == 9 * 7 + 90 * 8 + 9);
  struct stat st;
  CHECK("fstat size", fstat(fd, &st) == 0 && st.st_size == 9 * 7 + 90 * 8 + 9 && S_ISREG(st.st_mode));
  CHECK("F_GETFD cloexec", fcntl(fd, F_GETFD) == FD_CLOEXEC);
  CHECK("dup2", dup2(fd, 10) == 10 && fcntl(10, F_GETFD) == 0);
  CHECK("close", close(10) == 0 && close(10) == -1 && errno == EBADF);
  char exe[256] = {0};
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  CHECK("readlink /proc/self/exe", n > 0 && !strcmp(exe, "/bin/syscalls"));
  CHECK("stat missing is ENOENT", stat("/no/such/file", &st) == -1 && errno == ENOENT);
  CHECK("open missing is ENOENT", open("/no/such", O_RDONLY) == -1 && errno == ENOENT);
  DIR *d = opendir("/data");
  int seen = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) seen += !strcmp(e->d_name, "lines.txt");
  CHECK("getdents64 lists the directory", seen == 1);
  int z = open("/dev/zero", O_RDONLY);
  memset(buf, 1, sizeof buf);
  CHECK("/dev/zero reads zeros", read(z, buf, 8) == 8 && buf[0] == 0 && buf[7] == 0);
  int nul = open("/dev/null", O_WRONLY);
  CHECK("/dev/null swallows writes", write(nul, "x", 1) == 1);
  struct iovec iov[2] = {{"writev-", 7}, {"ok\n", 3}};
  CHECK("writev", writev(1, iov, 2) == 10);
  char cwd[64];
  CHECK("chdir + getcwd", chdir("/data") == 0 && getcwd(cwd, sizeof cwd) && !strcmp(cwd, "/data"));
  CHECK("relative open after chdir", open("lines.txt", O_RDONLY) >= 0);
  CHECK("getcwd too small is ERANGE", getcwd(cwd, 3) == NULL && errno == ERANGE);
  struct utsname u;
  CHECK("uname", uname(&u) == 0 && !strcmp(u.sysname, "Linux") && !strcmp(u.machine, "x86_64"));
  struct timespec t0, t1, nap = {0, 20 * 1000 * 1000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  nanosleep(&nap, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  CHECK("nanosleep 20 ms", ms >= 20 && ms < 1000);
  struct sigaction sa = {0}, back = {0};
  sa.sa_handler = SIG_IGN;
  sa.sa_flags = SA_RESTART;
  CHECK("sigaction is recorded", sigaction(SIGUSR1, &sa, NULL) == 0 && sigaction(SIGUSR1, NULL, &back) == 0 &&
                                     back.sa_handler == SIG_IGN && (back.sa_flags & SA_RESTART));
  CHECK("SIGKILL cannot be caught", sigaction(SIGKILL, &sa, NULL) == -1 && errno == EINVAL);
  sigset_t set, was;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR2);
  sigaddset(&set, SIGKILL);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sigprocmask(SIG_BLOCK, NULL, &was);
  CHECK("sigprocmask is recorded, SIGKILL stays unblocked", sigismember(&was, SIGUSR2) && !sigismember(&was, SIGKILL));
  int churn = 1;
  for (int i = 0; i < 2000 && churn; i++) { /* 2 GiB through a 512 MiB guest */
    char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    churn = p != MAP_FAILED && p[4096] == 0;
    if (churn) { memset(p, 0x33, 1 << 20); munmap(p, 1 << 20); }
  }
  CHECK("munmap'd memory is reused, zeroed", churn);
  char *r = mmap(NULL, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK("PROT_NONE reservation then mprotect", r != MAP_FAILED && mprotect(r, 65536, PROT_READ | PROT_WRITE) == 0 &&
                                                  (r[100] = 5) == 5 && r[65535] == 0);
  char *f = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  f[0] = 9;
  CHECK("MAP_FIXED over a mapping gives zeroed memory",
        mmap(f, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == f && f[0] == 0);
  struct statx sx;
  CHECK("statx", statx(AT_FDCWD, "/data/lines.txt", 0, STATX_BASIC_STATS, &sx) == 0 &&
                     sx.stx_size == 9 * 7 + 90 * 8 + 9 && S_ISREG(sx.stx_mode) && sx.stx_mtime.tv_sec > 0);
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_nsec += 20 * 1000 * 1000;
  if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
  CHECK("clock_nanosleep TIMER_ABSTIME", clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  /* Woke at or after the target (not early), and not absurdly late. */
  long late_ms = (t1.tv_sec - until.tv_sec) * 1000 + (t1.tv_nsec - until.tv_nsec) / 1000000;
  CHECK("... slept until then", (t1.tv_sec > until.tv_sec || (t1.tv_sec == until.tv_sec && t1.tv_nsec >= until.tv_nsec)) &&
                                    late_ms < 1000);
  /* eventfd between a parent and its forked child; the file mapping of a forked copy. */
  int efd = eventfd(0, 0);
  int fm = open("/data/lines.txt", O_RDONLY);
  char *mapped = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fm, 0);
  CHECK("mmap of a file", mapped != MAP_FAILED && !memcmp(mapped, "line 1\n", 7));
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    uint64_t one = 41;
    write(efd, &one, 8);
    _exit(mapped[5] == '1' ? 3 : 4);
  }
  uint64_t got = 0;
  int status = 0;
  CHECK("eventfd read waits for the child's write", read(efd, &got, 8) == 8 && got == 41);
  CHECK("fork and wait4 with the child's status",
        child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 3);
  /* Signal handlers: siginfo, the interrupted code's state, blocking, EINTR and SA_RESTART. */
  struct sigaction su;
  memset(&su, 0, sizeof su);
  su.sa_sigaction = on_usr1;
  su.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &su, NULL);
  volatile double fp = 1.5;
  kill(getpid(), SIGUSR1);
  CHECK("a handler runs with its siginfo", got_sig == SIGUSR1 && got_code == SI_USER && got_pid == getpid() && fp * 2 == 3.0);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
  got_sig = 0;
  kill(getpid(), SIGUSR1);
  int before = got_sig;
  sigprocmask(SIG_UNBLOCK, &usr1, NULL);
  CHECK("a blocked signal waits for its unblocking", before == 0 && got_sig == SIGUSR1);
  fflush(stdout);
  got_sig = 0;
  pid_t c2 = fork();
  if (c2 == 0) { kill(getppid(), SIGUSR1); _exit(0); }
  int st2 = 0;
  int r2 = waitpid(c2, &st2, 0);
  CHECK("waitpid interrupted by a handler without SA_RESTART", r2 == -1 && errno == EINTR && got_sig == SIGUSR1);
  CHECK("... and the child reaped after", waitpid(c2, &st2, 0) == c2);
  su.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGUSR1, &su, NULL);
  got_sig = 0;
  pid_t c3 = fork();
  if (c3 == 0) { kill(getppid(), SIGUSR1); _exit(5); }
  int st3 = 0;
  CHECK("waitpid restarted after an SA_RESTART handler",
        waitpid(c3, &st3, 0) == c3 && WEXITSTATUS(st3) == 5 && got_sig == SIGUSR1);
  /* AF_UNIX socket pairs: both ways, across fork, a descriptor passed in SCM_RIGHTS, EOF. */
  int sv[2];
  CHECK("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pid_t c4 = fork();
  if (c4 == 0) {
    close(sv[0]);
    char req[16] = {0};
    ssize_t n = read(sv[1], req, sizeof req);
    int pfd[2];
    pipe(pfd);
    write(pfd[1], "through the pipe", 16);
    close(pfd[1]);
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec io = {.iov_base = "pong", .iov_len = 4};
    struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pfd[0], sizeof(int));
    ssize_t sent = sendmsg(sv[1], &mh, 0);
    close(pfd[0]); /* the one in flight keeps the pipe open */
    _exit(n == 4 && !memcmp(req, "ping", 4) && sent == 4 ? 0 : 1);
  }
  close(sv[1]);
  CHECK("socket pair write", write(sv[0], "ping", 4) == 4);
  char pong[8] = {0}, cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec io = {.iov_base = pong, .iov_len = sizeof pong};
  struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t pgot = recvmsg(sv[0], &mh, 0);
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  int passed = -1;
  if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
    memcpy(&passed, CMSG_DATA(cm), sizeof(int));
  char via[17] = {0};
  CHECK("recvmsg with a descriptor from another process",
        pgot == 4 && !memcmp(pong, "pong", 4) && passed >= 0 && read(passed, via, 16) == 16 &&
        !strcmp(via, "through the pipe"));
  int st4 = 0;
  waitpid(c4, &st4, 0);
  struct pollfd pp = {.fd = sv[0], .events = POLLIN};
  CHECK("the peer's exit is EOF and POLLHUP", WIFEXITED(st4) && WEXITSTATUS(st4) == 0 &&
        poll(&pp, 1, 0) == 1 && (pp.revents & POLLHUP) && read(sv[0], pong, 1) == 0);
  close(sv[0]);
  close(passed);
  /* Stop and continue: a stopped child makes no progress until SIGCONT; waits report both. */
  int tick[2];
  pipe(tick);
  pid_t c5 = fork();
  if (c5 == 0) {
    for (;;) { write(tick[1], "t", 1); usleep(5000); }
  }
  char t;
  read(tick[0], &t, 1);
  kill(c5, SIGSTOP);
  int st5 = 0;
  int stopped = waitpid(c5, &st5, WUNTRACED) == c5 && WIFSTOPPED(st5) && WSTOPSIG(st5) == SIGSTOP;
  fcntl(tick[0], F_SETFL, O_NONBLOCK);
  while (read(tick[0], &t, 1) == 1) {}
  usleep(50000);
  int idle = read(tick[0], &t, 1) == -1 && errno == EAGAIN;
  CHECK("SIGSTOP stops a child and WUNTRACED reports it", stopped && idle);
  kill(c5, SIGCONT);
  int continued = waitpid(c5, &st5, WCONTINUED) == c5 && WIFCONTINUED(st5);
  fcntl(tick[0], F_SETFL, 0);
  CHECK("SIGCONT resumes it and WCONTINUED reports it", continued && read(tick[0], &t, 1) == 1);
  kill(c5, SIGKILL);
  CHECK("... and SIGKILL ends it", waitpid(c5, &st5, 0) == c5 && WIFSIGNALED(st5) && WTERMSIG(st5) == SIGKILL);
  close(tick[0]);
  close(tick[1]);
  char *adv = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(adv, 'x', 3 * 4096);
  CHECK("madvise DONTNEED gives zeros back",
        madvise(adv + 4096, 4096, MADV_DONTNEED) == 0 && adv[4096] == 0 && adv[8191] == 0 &&
        adv[4095] == 'x' && adv[8192] == 'x' && madvise(adv, 4096, MADV_WILLNEED) == 0);
  /* AF_UNIX sockets by name: a path and an abstract name, accept in the parent. */
  struct sockaddr_un ua = {.sun_family = AF_UNIX};
  strcpy(ua.sun_path, "/tmp/srv.sock");
  unlink(ua.sun_path); /* a socket file a host run left */
  int ls = socket(AF_UNIX, SOCK_STREAM, 0);
  int bound = bind(ls, (struct sockaddr *)&ua, sizeof ua) == 0 && listen(ls, 4) == 0;
  int dup_ls = socket(AF_UNIX, SOCK_STREAM, 0);
  int in_use = bind(dup_ls, (struct sockaddr *)&ua, sizeof ua) == -1 && errno == EADDRINUSE;
  close(dup_ls);
  pid_t c6 = fork();
  if (c6 == 0) {
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&ua, sizeof ua)) _exit(1);
    write(c, "hi", 2);
    char r[8] = {0};
    _exit(read(c, r, sizeof r) == 5 && !memcmp(r, "hello", 5) ? 0 : 2);
  }
  struct pollfd lp = {.fd = ls, .events = POLLIN};
  int ready = poll(&lp, 1, 5000) == 1 && (lp.revents & POLLIN);
  int as = accept(ls, NULL, NULL);
  char hi[4] = {0};
  int got_hi = read(as, hi, sizeof hi) == 2 && !memcmp(hi, "hi", 2) && write(as, "hello", 5) == 5;
  int st6 = 0;
  waitpid(c6, &st6, 0);
  CHECK("AF_UNIX path socket: bind, listen, poll, accept, both ways",
        bound && in_use && ready && got_hi && WIFEXITED(st6) && WEXITSTATUS(st6) == 0);
  close(as);
  close(ls);
  struct sockaddr_un ab = {.sun_family = AF_UNIX};
  memcpy(ab.sun_path, "\0quark-abstract", 15);
  socklen_t ablen = offsetof(struct sockaddr_un, sun_path) + 15;
  int nc = socket(AF_UNIX, SOCK_STREAM, 0);
  int refused = connect(nc, (struct sockaddr *)&ab, ablen) == -1 && errno == ECONNREFUSED;
  struct sockaddr_un none = {.sun_family = AF_UNIX, .sun_path = "/tmp/never-bound.sock"};
  int missing = connect(nc, (struct sockaddr *)&none, sizeof none) == -1 && errno == ENOENT;
  int al = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int abound = bind(al, (struct sockaddr *)&ab, ablen) == 0 && listen(al, 1) == 0;
  int empty = accept(al, NULL, NULL) == -1 && errno == EAGAIN;
  int conn = connect(nc, (struct sockaddr *)&ab, ablen) == 0;
  int acc = accept(al, NULL, NULL);
  CHECK("AF_UNIX abstract names, ECONNREFUSED, ENOENT, non-blocking accept",
        refused && missing && abound && empty && conn && acc >= 0 && write(nc, "x", 1) == 1 &&
        read(acc, hi, 1) == 1 && hi[0] == 'x');
  close(acc);
  close(al);
  close(nc);
  {
    // membarrier: the private commands need a registration, which a fork child inherits;
    // flags and unknown commands are EINVAL. (Linux also offers the RSEQ commands.)
    long q = syscall(SYS_membarrier, 0, 0, 0);
    int unregistered = syscall(SYS_membarrier, 8, 0, 0) == -1 && errno == EPERM;
    int registered = syscall(SYS_membarrier, 16, 0, 0) == 0 && syscall(SYS_membarrier, 8, 0, 0) == 0 &&
                     syscall(SYS_membarrier, 512, 0, 0) == 16;
    int global = syscall(SYS_membarrier, 1, 0, 0) == 0;
    int bad = syscall(SYS_membarrier, 1, 1, 0) == -1 && errno == EINVAL &&
              syscall(SYS_membarrier, 1 << 20, 0, 0) == -1 && errno == EINVAL;
    pid_t child = fork();
    if (child == 0) _exit(syscall(SYS_membarrier, 8, 0, 0) == 0 ? 0 : 1);
    int status = -1;
    waitpid(child, &status, 0);
    CHECK("membarrier", q > 0 && (q & 0x7f) == 0x7f && unregistered && registered && global && bad &&
                            WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  {
    // epoll_pwait2: a timespec timeout (waited out on an empty set), none (returns at once
    // with the ready pipe), a bad one (EINVAL).
    int ep = epoll_create1(0), pp[2];
    struct epoll_event ev = {.events = EPOLLIN}, got[2];
    struct timespec five_ms = {0, 5000000}, bad = {0, 1000000000};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int empty = pipe(pp) == 0 && epoll_ctl(ep, EPOLL_CTL_ADD, pp[0], &ev) == 0 &&
                syscall(SYS_epoll_pwait2, ep, got, 2, &five_ms, NULL, 8) == 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long waited_us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
    int ready = write(pp[1], "x", 1) == 1 && syscall(SYS_epoll_pwait2, ep, got, 2, NULL, NULL, 8) == 1 &&
                got[0].events == EPOLLIN;
    int einval = syscall(SYS_epoll_pwait2, ep, got, 2, &bad, NULL, 8) == -1 && errno == EINVAL;
    CHECK("epoll_pwait2", empty && waited_us >= 5000 && ready && einval);
    // Sub-millisecond timeouts are waited out too, never cut to nothing.
    char drain;
    int drained = read(pp[0], &drain, 1) == 1;
    struct pollfd pfd = {.fd = pp[0], .events = POLLIN};
    struct timespec half_ms = {0, 500000};
    struct timeval half_ms_tv = {0, 500};
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(pp[0], &rd);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int pp_none = ppoll(&pfd, 1, &half_ms, NULL) == 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ppoll_us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int sel_none = select(pp[0] + 1, &rd, NULL, NULL, &half_ms_tv) == 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long select_us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
    CHECK("ppoll and select wait out sub-millisecond timeouts",
          drained && pp_none && ppoll_us >= 500 && sel_none && select_us >= 500);
    close(pp[0]);
    close(pp[1]);
    close(ep);
  }
  CHECK("bad pointer is EFAULT", write(1, (void *)16, 5) == -1 && errno == EFAULT);
  CHECK("unknown syscall is ENOSYS", syscall(1000) == -1 && errno == ENOSYS);
  return 0;
}

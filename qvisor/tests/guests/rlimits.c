/* Resource limits as Linux keeps them: RLIMIT_NOFILE bounds the descriptors a process gets
 * (EMFILE past it, dup2 and F_DUPFD beyond it refused), is lowered and raised again under the
 * hard limit, is inherited by a fork child and read by prlimit from the parent; soft above
 * hard and unknown resources are EINVAL. Prints "rlimits: ok"; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld (errno %d)\n", what, got, wanted, errno);
    exit(1);
  }
}

int main(void) {
  struct rlimit r, orig;
  want("getrlimit", getrlimit(RLIMIT_NOFILE, &orig), 0);
  want("soft under hard", orig.rlim_cur > 0 && orig.rlim_cur <= orig.rlim_max, 1);
  want("prlimit of oneself", prlimit(getpid(), RLIMIT_NOFILE, NULL, &r), 0);
  want("the same", r.rlim_cur == orig.rlim_cur && r.rlim_max == orig.rlim_max, 1);

  r = (struct rlimit){.rlim_cur = 64, .rlim_max = orig.rlim_max};
  want("lowering the soft limit", setrlimit(RLIMIT_NOFILE, &r), 0);
  int last = -1, fd;
  while ((fd = open("/dev/null", O_RDONLY)) >= 0) {
    last = fd;
  }
  want("EMFILE at the limit", errno, EMFILE);
  want("the last descriptor", last, 63);
  errno = 0;
  want("dup2 past the limit", dup2(0, 100), -1);
  want("EBADF", errno, EBADF);
  errno = 0;
  want("F_DUPFD past the limit", fcntl(0, F_DUPFD, 100), -1);
  want("EINVAL", errno, EINVAL);
  for (int i = 3; i <= last; i++) {
    close(i);
  }

  pid_t child = fork();
  if (child == 0) {
    struct rlimit mine;
    getrlimit(RLIMIT_NOFILE, &mine);
    if (mine.rlim_cur != 64) {
      _exit(1);
    }
    pause();
    _exit(0);
  }
  usleep(100000);
  want("prlimit of the child", prlimit(child, RLIMIT_NOFILE, NULL, &r), 0);
  want("inherited", r.rlim_cur, 64);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);

  r = (struct rlimit){.rlim_cur = 1000, .rlim_max = orig.rlim_max};
  want("raising it again", setrlimit(RLIMIT_NOFILE, &r), 0);
  int fds = 0;
  while (fds < 200 && open("/dev/null", O_RDONLY) >= 0) {
    fds++;
  }
  want("more descriptors", fds, 200);
  r = (struct rlimit){.rlim_cur = 10, .rlim_max = 5};
  errno = 0;
  want("soft above hard", setrlimit(RLIMIT_NOFILE, &r), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("an unknown resource", getrlimit(99, &r), -1);
  want("EINVAL", errno, EINVAL);
  r = (struct rlimit){.rlim_cur = 0, .rlim_max = RLIM_INFINITY};
  want("RLIMIT_CORE", setrlimit(RLIMIT_CORE, &r), 0);
  getrlimit(RLIMIT_STACK, &r);
  want("a stack limit", r.rlim_cur > 0, 1);
  printf("rlimits: ok\n");
  return 0;
}

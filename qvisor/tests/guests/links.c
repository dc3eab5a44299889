/* Hard links, symlinks and close_range as Linux has them, and a POSIX named semaphore shared
 * with a child (glibc's sem_open makes it in /dev/shm with link(2)). Works in the directory
 * argv[1] (default /tmp/links). Prints "links: ok"; exits 1 at the first failure with what
 * failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld (errno %d)\n", what, got, wanted, errno);
    exit(1);
  }
}

static void fails(const char *what, long got, int err) {
  if (got != -1 || errno != err) {
    printf("FAIL %s: %ld errno %d, wanted errno %d\n", what, got, errno, err);
    exit(1);
  }
  errno = 0;
}

static ino_t inode(const char *p, int follow) {
  struct stat st;
  if ((follow ? stat(p, &st) : lstat(p, &st)) != 0) {
    printf("FAIL stat %s (errno %d)\n", p, errno);
    exit(1);
  }
  return st.st_ino;
}

static char *slurp(const char *p) {
  static char buf[64];
  int fd = open(p, O_RDONLY);
  if (fd < 0) {
    return "";
  }
  long n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n < 0 ? 0 : n] = 0;
  return buf;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "/tmp/links";
  mkdir(dir, 0755);
  if (chdir(dir) != 0) {
    printf("FAIL chdir %s\n", dir);
    return 1;
  }
  char abs_b[256];
  snprintf(abs_b, sizeof abs_b, "%s/b", dir);
  int fd = open("a", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  write(fd, "data", 4);
  close(fd);

  want("link", link("a", "b"), 0);
  want("the same file", inode("a", 1) == inode("b", 1), 1);
  struct stat st;
  stat("a", &st);
  want("two names", st.st_nlink, 2);
  fails("a name that exists", link("a", "b"), EEXIST);
  fails("a missing file", link("nothing", "c"), ENOENT);
  mkdir("d", 0755);
  fails("a directory", link("d", "e"), EPERM);

  want("a relative symlink", symlink("a", "s"), 0);
  char buf[64] = {0};
  want("readlink", readlink("s", buf, sizeof buf), 1);
  want("its target", strcmp(buf, "a"), 0);
  want("read through it", strcmp(slurp("s"), "data"), 0);
  lstat("s", &st);
  want("lstat sees a symlink", S_ISLNK(st.st_mode), 1);
  want("an absolute symlink", symlink(abs_b, "abs"), 0);
  want("read through it", strcmp(slurp("abs"), "data"), 0);
  fails("an existing name", symlink("a", "s"), EEXIST);
  fails("an empty target", symlink("", "t"), ENOENT);
  want("symlinkat", symlinkat("a", AT_FDCWD, "s2"), 0);
  want("a dangling symlink", symlink("gone", "dangling"), 0);
  fails("opening it", open("dangling", O_RDONLY), ENOENT);

  want("linkat following the symlink", linkat(AT_FDCWD, "s", AT_FDCWD, "f", AT_SYMLINK_FOLLOW), 0);
  want("links the target", inode("f", 0) == inode("a", 1), 1);
  want("linkat of the symlink itself", linkat(AT_FDCWD, "s", AT_FDCWD, "l", 0), 0);
  lstat("l", &st);
  want("is a symlink", S_ISLNK(st.st_mode), 1);
  fails("a bad flag", linkat(AT_FDCWD, "a", AT_FDCWD, "g", 0x8000), EINVAL);

  unlink("a");
  want("the data stays under its other names", strcmp(slurp("b"), "data"), 0);
  fails("the relative symlink dangles", open("s", O_RDONLY), ENOENT);

  /* close_range. */
  int base = open("b", O_RDONLY);
  dup2(base, 20);
  dup2(base, 21);
  want("close_range with CLOEXEC", syscall(SYS_close_range, 20, 21, 4), 0);
  want("marked", fcntl(20, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  want("closing a range", syscall(SYS_close_range, 20, ~0U, 0), 0);
  fails("closed", fcntl(21, F_GETFD), EBADF);
  want("below it stays", fcntl(base, F_GETFD) >= 0, 1);
  fails("first past last", syscall(SYS_close_range, 5, 4, 0), EINVAL);
  fails("unknown flags", syscall(SYS_close_range, 20, 30, 1), EINVAL);

  /* A named semaphore across fork. */
  sem_unlink("/links-sem");
  sem_t *sem = sem_open("/links-sem", O_CREAT | O_EXCL, 0600, 0);
  if (sem == SEM_FAILED) {
    printf("FAIL sem_open (errno %d)\n", errno);
    return 1;
  }
  pid_t c = fork();
  if (c == 0) {
    sem_t *s = sem_open("/links-sem", 0);
    _exit(s != SEM_FAILED && sem_post(s) == 0 ? 0 : 1);
  }
  want("sem_wait for the child's post", sem_wait(sem), 0);
  int status;
  waitpid(c, &status, 0);
  want("the child", status, 0);
  want("sem_unlink", sem_unlink("/links-sem"), 0);
  printf("links: ok\n");
  return 0;
}

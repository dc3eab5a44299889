/* Advisory locks between processes as Linux keeps them: fcntl record locks (conflicts,
 * F_GETLK's report, read locks shared, ranges from SEEK_CUR and SEEK_END, F_SETLKW waiting for
 * the holder, release when the holder closes any descriptor of the file or exits), OFD locks
 * (owned by the open file: two opens in one process conflict), flock (separate from record
 * locks; LOCK_NB), and the errors. Prints "locks: ok"; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PATH "/tmp/locks-file"

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld (errno %d)\n", what, got, wanted, errno);
    exit(1);
  }
}

static int lk(int fd, int cmd, short type, short whence, off_t start, off_t len) {
  struct flock f = {.l_type = type, .l_whence = whence, .l_start = start, .l_len = len};
  return fcntl(fd, cmd, &f);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* Runs `body` in a child and checks it exits 0. */
static void in_child(const char *what, int (*body)(void)) {
  pid_t c = fork();
  if (c == 0) {
    _exit(body());
  }
  int st;
  waitpid(c, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("FAIL %s (child status %d)\n", what, st);
    exit(1);
  }
}

static pid_t parent;

static int sees_the_parents_lock(void) {
  int fd = open(PATH, O_RDWR);
  errno = 0;
  if (lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 50, 10) != -1 || (errno != EAGAIN && errno != EACCES)) {
    return 1;
  }
  struct flock f = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10};
  if (fcntl(fd, F_GETLK, &f) != 0 || f.l_type != F_WRLCK || f.l_pid != parent ||
      f.l_start != 0 || f.l_len != 100) {
    return 2;
  }
  if (lk(fd, F_SETLK, F_RDLCK, SEEK_SET, 100, 100) != 0) {
    return 3; /* past the parent's range */
  }
  /* The parent's read lock on [200, 300) admits readers, not writers. */
  if (lk(fd, F_SETLK, F_RDLCK, SEEK_SET, 250, 10) != 0) {
    return 4;
  }
  if (lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 290, 20) != -1) {
    return 5;
  }
  /* SEEK_END: the parent holds [990, 1000) of the 1000-byte file. */
  f = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_END, .l_start = -5, .l_len = 1};
  if (fcntl(fd, F_GETLK, &f) != 0 || f.l_type != F_WRLCK || f.l_start != 990 || f.l_len != 10) {
    return 6;
  }
  return 0;
}

static int waits_for_the_lock(void) {
  int fd = open(PATH, O_RDWR);
  double t0 = now();
  if (lk(fd, F_SETLKW, F_WRLCK, SEEK_SET, 0, 10) != 0) {
    return 1;
  }
  return now() - t0 > 0.08 ? 0 : 2; /* the parent let go after 200 ms */
}

static int takes_it_at_once(void) {
  int fd = open(PATH, O_RDWR);
  return lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 0) == 0 ? 0 : 1;
}

static int takes_it_and_exits(void) {
  int fd = open(PATH, O_RDWR);
  return lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 0) == 0 ? 0 : 1; /* held until the exit */
}

static int record_lock_beside_a_flock(void) {
  int fd = open(PATH, O_RDWR);
  if (lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 0) != 0) {
    return 1; /* flocks and record locks do not meet */
  }
  return flock(fd, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK ? 0 : 2;
}

int main(void) {
  parent = getpid();
  int fd = open(PATH, O_RDWR | O_CREAT | O_TRUNC, 0644);
  char zeros[1000] = {0};
  want("writing the file", write(fd, zeros, sizeof zeros), sizeof zeros);

  want("a write lock", lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 100), 0);
  lseek(fd, 200, SEEK_SET);
  want("a read lock from SEEK_CUR", lk(fd, F_SETLK, F_RDLCK, SEEK_CUR, 0, 100), 0);
  want("a lock from SEEK_END", lk(fd, F_SETLK, F_WRLCK, SEEK_END, -10, 10), 0);
  want("relocking one's own range", lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 10, 20), 0);
  in_child("the parent's locks conflict", sees_the_parents_lock);

  /* F_SETLKW waits until the holder unlocks. */
  pid_t c = fork();
  if (c == 0) {
    _exit(waits_for_the_lock());
  }
  usleep(200000);
  want("unlocking", lk(fd, F_SETLK, F_UNLCK, SEEK_SET, 0, 0), 0);
  int st;
  waitpid(c, &st, 0);
  want("the waiter got the lock after the unlock", WIFEXITED(st) ? WEXITSTATUS(st) : 99, 0);

  /* Closing any descriptor of the file drops the process's locks. */
  want("locking again", lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 0), 0);
  int other = open(PATH, O_RDONLY);
  close(other);
  in_child("the lock went with a close", takes_it_at_once);
  /* A child's locks go when it exits. */
  in_child("a child locking", takes_it_and_exits);
  want("free after the child's exit", lk(fd, F_SETLK, F_WRLCK, SEEK_SET, 0, 0), 0);
  want("unlock", lk(fd, F_SETLK, F_UNLCK, SEEK_SET, 0, 0), 0);

  /* OFD locks belong to the open file. */
  int a = open(PATH, O_RDWR), b = open(PATH, O_RDWR);
  want("an OFD lock", lk(a, F_OFD_SETLK, F_WRLCK, SEEK_SET, 0, 10), 0);
  errno = 0;
  want("another open of the same process conflicts", lk(b, F_OFD_SETLK, F_WRLCK, SEEK_SET, 5, 1),
       -1);
  struct flock f = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
  want("F_OFD_GETLK", fcntl(b, F_OFD_GETLK, &f), 0);
  want("reports an OFD lock", f.l_type == F_WRLCK && f.l_pid == -1, 1);
  f = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_pid = 1};
  errno = 0;
  want("an OFD lock with l_pid", fcntl(b, F_OFD_SETLK, &f), -1);
  want("EINVAL", errno, EINVAL);
  close(a);
  want("free once its file closed", lk(b, F_OFD_SETLK, F_WRLCK, SEEK_SET, 0, 10), 0);
  close(b);

  /* flock. */
  a = open(PATH, O_RDWR);
  b = open(PATH, O_RDONLY);
  want("LOCK_EX", flock(a, LOCK_EX), 0);
  errno = 0;
  want("another open's LOCK_SH|LOCK_NB", flock(b, LOCK_SH | LOCK_NB), -1);
  want("EWOULDBLOCK", errno, EWOULDBLOCK);
  in_child("record locks beside a flock", record_lock_beside_a_flock);
  want("LOCK_UN", flock(a, LOCK_UN), 0);
  want("then LOCK_SH", flock(b, LOCK_SH | LOCK_NB), 0);
  want("and another LOCK_SH", flock(a, LOCK_SH | LOCK_NB), 0);
  errno = 0;
  want("a bad operation", flock(a, 0), -1);
  want("EINVAL", errno, EINVAL);
  close(a);
  close(b);

  /* Errors. */
  int ro = open(PATH, O_RDONLY);
  errno = 0;
  want("a write lock on a read-only descriptor", lk(ro, F_SETLK, F_WRLCK, SEEK_SET, 0, 1), -1);
  want("EBADF", errno, EBADF);
  errno = 0;
  want("a bad type", lk(fd, F_SETLK, 7, SEEK_SET, 0, 1), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a bad whence", lk(fd, F_SETLK, F_WRLCK, 9, 0, 1), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a range before the start", lk(fd, F_SETLK, F_WRLCK, SEEK_SET, -5, 1), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a bad pointer", fcntl(fd, F_SETLK, (void *)8), -1);
  want("EFAULT", errno, EFAULT);
  close(ro);
  close(fd);
  printf("locks: ok\n");
  return 0;
}

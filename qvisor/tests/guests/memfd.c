/* memfd_create as Linux has it: an unnamed file that reads and writes, grows with ftruncate,
 * maps shared (a forked child's writes through the descriptor show in the parent's mapping),
 * is named /memfd:NAME (deleted) in /proc, is listed in no directory, takes no seals without
 * MFD_ALLOW_SEALING, and the errors. Prints "memfd: ok"; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld (errno %d)\n", what, got, wanted, errno);
    exit(1);
  }
}

int main(void) {
  int fd = memfd_create("quark-test", MFD_CLOEXEC);
  if (fd < 0) {
    printf("FAIL memfd_create (errno %d)\n", errno);
    return 1;
  }
  want("close-on-exec", fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  want("write", write(fd, "hello", 5), 5);
  char buf[64] = {0};
  want("pread", pread(fd, buf, 5, 0), 5);
  want("what was written", strcmp(buf, "hello"), 0);
  want("ftruncate", ftruncate(fd, 3 * 4096), 0);
  struct stat st;
  fstat(fd, &st);
  want("its size", st.st_size, 3 * 4096);
  want("a regular file", S_ISREG(st.st_mode), 1);

  char *map = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    printf("FAIL mmap (errno %d)\n", errno);
    return 1;
  }
  want("the mapping sees the file", strncmp(map, "hello", 5), 0);
  memcpy(map + 4096, "mapped", 6);
  want("pread sees the mapping", pread(fd, buf, 6, 4096), 6);
  want("its bytes", strncmp(buf, "mapped", 6), 0);
  pid_t c = fork();
  if (c == 0) {
    _exit(pwrite(fd, "child", 5, 8192) == 5 ? 0 : 1);
  }
  int status;
  waitpid(c, &status, 0);
  want("the child wrote", status, 0);
  want("the parent's mapping sees the child's write", strncmp(map + 8192, "child", 5), 0);

  char link[64], target[128] = {0};
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  want("readlink", readlink(link, target, sizeof target) > 0, 1);
  want("its /proc name", strcmp(target, "/memfd:quark-test (deleted)"), 0);
  DIR *d = opendir("/dev/shm");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (strstr(e->d_name, "quark-test")) {
      printf("FAIL /dev/shm lists %s\n", e->d_name);
      return 1;
    }
  }
  if (d) {
    closedir(d);
  }
  want("no seals but F_SEAL_SEAL", fcntl(fd, F_GET_SEALS), F_SEAL_SEAL);
  errno = 0;
  want("adding one", fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
  want("EPERM", errno, EPERM);

  char longname[300];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  errno = 0;
  want("a name too long", memfd_create(longname, 0), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("unknown flags", memfd_create("x", 0x100), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a bad name", memfd_create((char *)8, 0), -1);
  want("EFAULT", errno, EFAULT);
  munmap(map, 3 * 4096);
  close(fd);
  printf("memfd: ok\n");
  return 0;
}

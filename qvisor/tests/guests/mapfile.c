/* Shared file mappings (MAP_SHARED of a file): one memory for every process that maps the
 * file, coherent with read/write of the file, written back to it. What databases, POSIX shared
 * memory (shm_open) and log-structured servers rely on. Prints one line a check; exits 1 at
 * the first failure. argv[1]: a file path to work in (created); the last step leaves a store
 * in the mapping and exits without munmap or msync, for the caller to find in the file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static void fail(const char *what) {
  printf("FAIL %s (errno %d)\n", what, errno);
  exit(1);
}

static void reap(pid_t child) {
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
    fail("child");
}

/* MemFree from /proc/meminfo, in KiB. */
static long mem_free_kb(void) {
  char text[4096] = {0};
  int fd = open("/proc/meminfo", O_RDONLY);
  if (fd < 0 || read(fd, text, sizeof text - 1) <= 0) fail("/proc/meminfo");
  close(fd);
  char *at = strstr(text, "MemFree:");
  if (at == NULL) fail("MemFree");
  return atol(at + 8);
}

static char *map(int fd, size_t len) {
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail("mmap");
  return p;
}

static void expect_at(int fd, off_t at, const char *want, const char *what) {
  char got[64] = {0};
  if (pread(fd, got, strlen(want), at) != (ssize_t)strlen(want) || memcmp(got, want, strlen(want)))
    fail(what);
}

int main(int argc, char **argv) {
  if (argc < 2) fail("usage");
  const char *path = argv[1];
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("open");
  char page[PAGE];
  for (int i = 0; i < 4; i++) {
    memset(page, 'a' + i, PAGE);
    if (write(fd, page, PAGE) != PAGE) fail("write");
  }
  char *m = map(fd, 4 * PAGE);
  if (m[0] != 'a' || m[PAGE] != 'b' || m[3 * PAGE + 4095] != 'd') fail("the mapping shows the file");

  /* Another process opens and maps the file on its own (not a fork's copy of the mapping). */
  pid_t child = fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    munmap(m, 4 * PAGE);
    int own = open(path, O_RDWR);
    char *c = map(own, 4 * PAGE);
    memcpy(c + 100, "child", 5);
    _exit(0); /* no msync, no munmap */
  }
  reap(child);
  if (memcmp(m + 100, "child", 5)) fail("a store by another process's mapping is not seen");
  expect_at(fd, 100, "child", "read(2) does not see a store in the mapping");
  if (pwrite(fd, "pwrite", 6, PAGE + 200) != 6) fail("pwrite");
  if (memcmp(m + PAGE + 200, "pwrite", 6)) fail("the mapping does not see pwrite(2)");
  lseek(fd, 2 * PAGE + 10, SEEK_SET);
  if (write(fd, "write", 5) != 5) fail("write at the position");
  if (memcmp(m + 2 * PAGE + 10, "write", 5)) fail("the mapping does not see write(2)");
  printf("one memory for every mapping, coherent with read and write: ok\n");

  /* Two processes counting in the file's memory. */
  long *counter = (long *)(m + 3 * PAGE);
  *counter = 0;
  child = fork();
  if (child == 0) {
    int own = open(path, O_RDWR);
    char *c = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, own, 3 * PAGE);
    if (c == MAP_FAILED) _exit(2);
    for (int i = 0; i < 100000; i++) __atomic_fetch_add((long *)c, 1, __ATOMIC_SEQ_CST);
    _exit(0);
  }
  for (int i = 0; i < 100000; i++) __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
  reap(child);
  if (*counter != 200000) fail("increments from two processes were lost");
  printf("atomic increments from two processes: ok\n");

  /* A futex in the file's memory, waited on and woken through two mappings at different
   * addresses (a process-shared lock between processes that mapped the file on their own). */
  int *word = (int *)(m + 3 * PAGE + 64);
  *word = 0;
  child = fork();
  if (child == 0) {
    int own = open(path, O_RDWR);
    char *c = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, own, 0);
    if (c == MAP_FAILED) _exit(2);
    if (c == m) _exit(4); /* the point is two addresses */
    int *w = (int *)(c + 3 * PAGE + 64);
    for (int i = 0; i < 200; i++) {
      usleep(10000);
      __atomic_store_n(w, 1, __ATOMIC_SEQ_CST);
      if (syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0) == 1) _exit(0);
    }
    _exit(3); /* nobody was waiting there */
  }
  struct timespec ten = {10, 0};
  long waited = syscall(SYS_futex, word, FUTEX_WAIT, 0, &ten, NULL, 0);
  if (waited != 0 && errno != EAGAIN) fail("futex wait in a shared file mapping");
  reap(child);
  printf("futex across two mappings of the file: ok\n");

  /* Written back: msync, munmap, and the last mapping's process exiting. */
  memcpy(m + 300, "msync", 5);
  if (msync(m, 4 * PAGE, MS_SYNC)) fail("msync");
  if (msync(m, PAGE, MS_SYNC | MS_ASYNC) == 0 || errno != EINVAL) fail("msync flags");
  if (msync(m + 1, PAGE, MS_SYNC) == 0 || errno != EINVAL) fail("msync alignment");
  memcpy(m + 400, "munmap", 6);
  if (munmap(m, 4 * PAGE)) fail("munmap");
  int again = open(path, O_RDONLY);
  expect_at(again, 300, "msync", "msync did not reach the file");
  expect_at(again, 400, "munmap", "munmap did not reach the file");
  child = fork();
  if (child == 0) {
    char *c = map(fd, 4 * PAGE);
    memcpy(c + 500, "exit", 4);
    _exit(0);
  }
  reap(child);
  expect_at(again, 500, "exit", "an exiting process's stores did not reach the file");
  printf("written back on msync, munmap and exit: ok\n");

  /* Truncation zeroes the part of a page past the new end. */
  m = map(fd, 2 * PAGE);
  memset(m + PAGE, 'x', PAGE);
  if (ftruncate(fd, PAGE + 100)) fail("ftruncate");
  if (m[PAGE + 99] != 'x' || m[PAGE + 100] != 0 || m[PAGE + 4095] != 0) fail("truncated page");
  struct stat st;
  if (fstat(fd, &st) || st.st_size != PAGE + 100) fail("a mapping changed the size");
  munmap(m, 2 * PAGE);
  if (fstat(fd, &st) || st.st_size != PAGE + 100) fail("write-back grew the file");
  printf("truncation: ok\n");

  /* Permissions: a shared writable mapping needs a descriptor open for reading and writing. */
  int ro = open(path, O_RDONLY), wo = open(path, O_WRONLY);
  if (mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) != MAP_FAILED || errno != EACCES)
    fail("a writable shared mapping of a read-only descriptor");
  if (mmap(NULL, PAGE, PROT_READ, MAP_SHARED, wo, 0) != MAP_FAILED || errno != EACCES)
    fail("a mapping of a write-only descriptor");
  char *r = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ro, 0);
  if (r == MAP_FAILED || memcmp(r + 100, "child", 5)) fail("a read-only shared mapping");
  printf("access modes: ok\n");

  /* POSIX shared memory: a file in /dev/shm opened by name in two processes. */
  int shm = open("/dev/shm/quark-test", O_RDWR | O_CREAT | O_EXCL, 0600);
  if (shm < 0 || ftruncate(shm, PAGE)) fail("shm file");
  char *s = map(shm, PAGE);
  child = fork();
  if (child == 0) {
    int own = open("/dev/shm/quark-test", O_RDWR);
    char *c = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, own, 0);
    if (c == MAP_FAILED) _exit(2);
    strcpy(c, "through /dev/shm");
    _exit(0);
  }
  reap(child);
  if (strcmp(s, "through /dev/shm")) fail("/dev/shm");
  unlink("/dev/shm/quark-test");
  printf("shared memory in /dev/shm: ok\n");

  /* Private read-only mappings of a data file: four processes that map 8 MiB each on their own
   * see the file's pages (and a later write to the file), all alive at once; the memory that
   * took (MemFree in /proc/meminfo) is printed for the caller. */
  int data = open(path, O_RDWR);
  if (data < 0 || ftruncate(data, 8 << 20)) fail("8 MiB file");
  if (pwrite(data, "first", 5, 5 << 20) != 5) fail("pwrite data");
  int up[2], down[2];
  if (pipe(up) || pipe(down)) fail("pipes");
  long before = mem_free_kb();
  pid_t readers[4];
  for (int i = 0; i < 4; i++) {
    readers[i] = fork();
    if (readers[i] == 0) {
      int own = open(path, O_RDONLY);
      volatile char *c = mmap(NULL, 8 << 20, PROT_READ, MAP_PRIVATE, own, 0);
      if (c == MAP_FAILED) _exit(2);
      long sum = 0;
      for (long at = 0; at < (8 << 20); at += PAGE) sum += c[at];
      if (sum < 'a' || c[0] != 'a' || memcmp((char *)c + (5 << 20), "first", 5)) _exit(3);
      if (write(up[1], "r", 1) != 1) _exit(4);
      char go;
      if (read(down[0], &go, 1) != 1) _exit(5);
      /* The parent wrote to the file meanwhile: an unwritten private page shows it. */
      _exit(memcmp((char *)c + (5 << 20), "later", 5) ? 6 : 0);
    }
  }
  close(up[1]); /* a reader that fails ends the wait below */
  for (int i = 0; i < 4; i++) {
    char r;
    if (read(up[0], &r, 1) != 1) fail("a reader");
  }
  long after = mem_free_kb();
  if (pwrite(data, "later", 5, 5 << 20) != 5) fail("pwrite later");
  if (write(down[1], "gogo", 4) != 4) fail("release the readers");
  for (int i = 0; i < 4; i++) reap(readers[i]);
  if (ftruncate(data, PAGE + 100)) fail("shrink back");
  printf("private read-only mappings: ok\n");
  fprintf(stderr, "memory for 4 x 8 MiB private read-only: %ld KiB\n", before - after);

  /* Left in the mapping at exit: the caller finds it in the file. */
  m = map(fd, PAGE);
  memcpy(m, "left at exit", 12);
  return 0;
}

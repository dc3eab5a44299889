/* The client side of netbench's guest suite, the same static binary natively, under qvisor and
 * under runsc:
 *   tcpbench send IP PORT SECONDS   write 64 KiB chunks for SECONDS, then close (the peer measures)
 *   tcpbench recv IP PORT           read to end of stream; prints gbps (first byte to end)
 *   tcpbench rr IP PORT SECONDS     1-byte request/response; prints p50_us, p99_us and count */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static char chunk[1 << 16];

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: tcpbench send|recv|rr IP PORT [SECONDS]\n");
    return 2;
  }
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
  a.sin_addr.s_addr = inet_addr(argv[2]);
  double secs = argc > 4 ? atof(argv[4]) : 2;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  if (!strcmp(argv[1], "send")) {
    double end = now_s() + secs;
    long sent = 0;
    while (now_s() < end) {
      ssize_t n = write(s, chunk, sizeof chunk);
      if (n <= 0) {
        perror("write");
        return 1;
      }
      sent += n;
    }
    printf("bytes %ld\n", sent);
    return close(s);
  }
  if (!strcmp(argv[1], "recv")) {
    long got = 0;
    double start = 0;
    ssize_t n;
    while ((n = read(s, chunk, sizeof chunk)) > 0) {
      if (!got) start = now_s();
      got += n;
    }
    double took = now_s() - start;
    printf("gbps %.3f\nbytes %ld\n", got * 8 / (took > 0 ? took : 1e-9) / 1e9, got);
    return 0;
  }
  if (!strcmp(argv[1], "rr")) {
    size_t cap = 1 << 20, count = 0;
    double *rtt = malloc(cap * sizeof *rtt), end = now_s() + secs;
    char b = 7;
    while (count < cap) {
      double t0 = now_s();
      if (t0 >= end) break;
      if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) {
        perror("rr");
        return 1;
      }
      rtt[count++] = (now_s() - t0) * 1e6;
    }
    qsort(rtt, count, sizeof *rtt, cmp);
    printf("p50_us %.2f\np99_us %.2f\ncount %zu\n", rtt[count / 2], rtt[count * 99 / 100], count);
    return 0;
  }
  fprintf(stderr, "unknown mode %s\n", argv[1]);
  return 2;
}

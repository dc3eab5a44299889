/* The server side of netbench's scenario suite: one static binary every runtime runs unchanged.
 *   netserve PORT
 * TCP PORT: echoes every byte on every connection and closes at end of stream. The 1-byte
 *   request/response scenario holds one connection; the connection-rate scenario opens, asks
 *   one byte, and closes, over and over.
 * UDP PORT: counts datagrams. A datagram "!" resets the count; a datagram "?" is answered with
 *   the count (decimal) to its sender.
 * One thread, one poll loop: nothing here depends on the runtime's threads or epoll. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 1024

static int listen_on(int type, int port) {
  int s = socket(AF_INET, type, 0);
  if (s < 0) { perror("socket"); exit(1); }
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); exit(1); }
  if (type == SOCK_STREAM && listen(s, 1024)) { perror("listen"); exit(1); }
  fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
  return s;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: netserve PORT\n");
    return 2;
  }
  int port = atoi(argv[1]);
  static struct pollfd fds[MAX_FDS];
  int n = 2;
  fds[0] = (struct pollfd){.fd = listen_on(SOCK_STREAM, port), .events = POLLIN};
  fds[1] = (struct pollfd){.fd = listen_on(SOCK_DGRAM, port), .events = POLLIN};
  unsigned long long count = 0;
  char buf[65536];
  printf("netserve listening on %d\n", port);
  fflush(stdout);
  for (;;) {
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      perror("poll");
      return 1;
    }
    if (fds[0].revents & POLLIN) {
      int c;
      while (n < MAX_FDS && (c = accept(fds[0].fd, NULL, NULL)) >= 0) {
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
      }
    }
    if (fds[1].revents & POLLIN) {
      struct sockaddr_in from;
      socklen_t len;
      ssize_t r;
      while (len = sizeof from,
             (r = recvfrom(fds[1].fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len)) >= 0) {
        if (r == 1 && buf[0] == '!') {
          count = 0;
        } else if (r == 1 && buf[0] == '?') {
          int m = snprintf(buf, sizeof buf, "%llu", count);
          sendto(fds[1].fd, buf, m, 0, (struct sockaddr *)&from, len);
        } else {
          count++;
        }
      }
    }
    for (int i = 2; i < n; i++) {
      if (!fds[i].revents) continue;
      ssize_t r = read(fds[i].fd, buf, sizeof buf);
      if (r > 0 && write(fds[i].fd, buf, r) == r) continue;
      if (r < 0 && errno == EAGAIN) continue;
      close(fds[i].fd);
      fds[i--] = fds[--n];
    }
  }
}

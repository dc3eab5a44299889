/* An epoll echo server: epoll PORT N serves until N connections have come and gone. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  int want = atoi(argv[2]), done = 0;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 256)) { perror("listen"); return 1; }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev)) { perror("epoll_ctl"); return 1; }
  if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) == 0 || errno != EEXIST) { puts("EEXIST expected"); return 1; }
  printf("listening\n");
  fflush(stdout);
  struct epoll_event evs[64];
  char buf[4096];
  while (done < want) {
    int n = epoll_wait(ep, evs, 64, 10000);
    if (n <= 0) { printf("epoll_wait %d\n", n); return 1; }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        int c;
        while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          struct epoll_event ce = {.events = EPOLLIN | EPOLLET, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        if (errno != EAGAIN) { perror("accept4"); return 1; }
        continue;
      }
      for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) { write(fd, buf, r); continue; }
        if (r == 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); done++; }
        else if (errno != EAGAIN) { perror("read"); return 1; }
        break;
      }
    }
  }
  printf("served %d\n", done);
  return 0;
}

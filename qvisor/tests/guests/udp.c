/* UDP through the container's network: udp ask IP PORT | udp echo PORT N */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  char buf[2048];
  struct sockaddr_in a = {.sin_family = AF_INET}, from;
  socklen_t len = sizeof from;
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) { perror("socket"); return 1; }
  if (argc == 4 && !strcmp(argv[1], "ask")) {
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    const char *q = "question from the guest";
    if (sendto(s, q, strlen(q), 0, (struct sockaddr *)&a, sizeof a) < 0) { perror("sendto"); return 1; }
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) { puts("no answer within 10 s"); return 1; }
    ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
    if (n < 0) { perror("recvfrom"); return 1; }
    buf[n] = 0;
    printf("%s from %s:%d\n", buf, inet_ntoa(from.sin_addr), ntohs(from.sin_port));
    return 0;
  }
  if (argc == 4 && !strcmp(argv[1], "echo")) {
    a.sin_port = htons(atoi(argv[2]));
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
    printf("bound\n");
    fflush(stdout);
    for (int i = 0; i < atoi(argv[3]); i++) {
      len = sizeof from;
      ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
      if (n < 0) { perror("recvfrom"); return 1; }
      sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
    return 0;
  }
  return 2;
}

/* UDP through the container's network: udp ask IP PORT | udp echo PORT N | udp msg PORT (sendmsg,
 * recvmsg, sendmmsg and recvmmsg to itself over 127.0.0.1) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int main(int argc, char **argv) {
  char buf[2048];
  struct sockaddr_in a = {.sin_family = AF_INET}, from;
  socklen_t len = sizeof from;
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) { perror("socket"); return 1; }
  if (argc == 3 && !strcmp(argv[1], "msg")) {
    a.sin_port = htons(atoi(argv[2]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
    /* One datagram gathered from two iovecs, scattered into two on receipt. */
    struct iovec out[2] = {{"gathered ", 9}, {"datagram", 8}};
    struct msghdr m = {.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = out, .msg_iovlen = 2};
    if (sendmsg(s, &m, 0) != 17) { perror("sendmsg"); return 1; }
    char x[5], y[32] = {0};
    struct iovec in[2] = {{x, 5}, {y, sizeof y - 1}};
    struct msghdr r = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = in, .msg_iovlen = 2};
    ssize_t n = recvmsg(s, &r, 0);
    printf("recvmsg %zd: [%.5s][%s] from %s:%d namelen %u\n", n, x, y, inet_ntoa(from.sin_addr),
           ntohs(from.sin_port), r.msg_namelen);
    /* Two datagrams in one sendmmsg, both back in one recvmmsg. */
    struct iovec v1 = {"first", 5}, v2 = {"second", 6};
    struct mmsghdr mm[2] = {{.msg_hdr = {.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &v1, .msg_iovlen = 1}},
                            {.msg_hdr = {.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &v2, .msg_iovlen = 1}}};
    printf("sendmmsg %d\n", sendmmsg(s, mm, 2, 0));
    char b1[16] = {0}, b2[16] = {0};
    struct iovec r1 = {b1, 15}, r2 = {b2, 15};
    struct mmsghdr rm[2] = {{.msg_hdr = {.msg_iov = &r1, .msg_iovlen = 1}}, {.msg_hdr = {.msg_iov = &r2, .msg_iovlen = 1}}};
    /* Without MSG_WAITFORONE: wait for both (the second may still be on its way). */
    int k = recvmmsg(s, rm, 2, 0, NULL);
    printf("recvmmsg %d: %s/%u %s/%u\n", k, b1, rm[0].msg_len, b2, rm[1].msg_len);
    /* writev on a connected datagram socket is one datagram too; readv scatters it. */
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    struct iovec w[2] = {{"one ", 4}, {"datagram", 8}};
    printf("writev %zd\n", writev(s, w, 2));
    char p1[3] = {0}, p2[16] = {0};
    struct iovec rv[2] = {{p1, 2}, {p2, 15}};
    ssize_t got = readv(s, rv, 2);
    printf("readv %zd: [%s][%s]\n", got, p1, p2);
    return 0;
  }
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

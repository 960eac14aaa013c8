#define _GNU_SOURCE
#include "cfuzz.h"
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int cfuzz_unshare_network(void) { return unshare(CLONE_NEWNET); }

int cfuzz_interface_up(const char *name) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int r = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP;
        r = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
    return r;
}

int cfuzz_packet_socket(void) { return socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0); }

long cfuzz_send_frame(int fd, int ifindex, const void *frame, size_t length) {
    struct sockaddr_ll a;
    memset(&a, 0, sizeof a);
    a.sll_family = AF_PACKET;
    a.sll_ifindex = ifindex;
    a.sll_halen = ETH_ALEN;
    return sendto(fd, frame, length, MSG_DONTWAIT, (struct sockaddr *)&a, sizeof a);
}

/* What the fuzz targets need from Linux that Swift's Glibc module leaves
 * out (GNU and packet-socket declarations). */
#ifndef CFUZZ_H
#define CFUZZ_H
#include <stddef.h>

/* unshare(CLONE_NEWNET): this thread, and those it starts, get a network
 * namespace of their own. 0 or -1 (errno). */
int cfuzz_unshare_network(void);
/* Brings interface `name` up. 0 or -1 (errno). */
int cfuzz_interface_up(const char *name);
/* A packet socket for sending raw frames, or -1. */
int cfuzz_packet_socket(void);
/* Sends `frame` out of interface `ifindex`; what sendto returns. */
long cfuzz_send_frame(int fd, int ifindex, const void *frame, size_t length);
#endif

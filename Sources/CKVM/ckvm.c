#define _GNU_SOURCE
#include <fcntl.h>
#include "CKVM.h"
#include <pthread.h>
#include <string.h>
#include <errno.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <stdlib.h>

static void ckvm_kick(int signo) { (void)signo; }

int ckvm_install_kick_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ckvm_kick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
    return sigaction(signo, &sa, NULL);
}

int ckvm_thread_block_signal(int signo, int block) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

int ckvm_o_direct(void) { return O_DIRECT; }

int ckvm_fallocate(int fd, int mode, off_t offset, off_t length) {
    return fallocate(fd, mode, offset, length);
}

int ckvm_open_tap(const char *name, char actual[16]) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    memcpy(actual, ifr.ifr_name, 16);
    return fd;
}

int ckvm_msr_index_list(int kvm_fd, uint32_t *indices, uint32_t capacity) {
    struct kvm_msr_list *list = calloc(1, sizeof(*list) + capacity * sizeof(uint32_t));
    if (!list) return -1;
    list->nmsrs = capacity;
    int r = ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list);
    if (r < 0 && errno != E2BIG) { free(list); return -1; }
    uint32_t n = list->nmsrs;
    if (r == 0) memcpy(indices, list->indices, (n < capacity ? n : capacity) * sizeof(uint32_t));
    free(list);
    return (int)n;
}

static struct kvm_msrs *msr_buffer(const uint32_t *indices, const uint64_t *values, uint32_t count) {
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + count * sizeof(struct kvm_msr_entry));
    if (!msrs) return NULL;
    msrs->nmsrs = count;
    for (uint32_t i = 0; i < count; i++) {
        msrs->entries[i].index = indices[i];
        if (values) msrs->entries[i].data = values[i];
    }
    return msrs;
}

int ckvm_get_msrs(int vcpu_fd, const uint32_t *indices, uint64_t *values, uint32_t count) {
    struct kvm_msrs *msrs = msr_buffer(indices, NULL, count);
    if (!msrs) return -1;
    int r = ioctl(vcpu_fd, KVM_GET_MSRS, msrs);
    for (int i = 0; i < r && (uint32_t)i < count; i++) values[i] = msrs->entries[i].data;
    free(msrs);
    return r;
}

int ckvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, uint32_t count) {
    struct kvm_msrs *msrs = msr_buffer(indices, values, count);
    if (!msrs) return -1;
    int r = ioctl(vcpu_fd, KVM_SET_MSRS, msrs);
    free(msrs);
    return r;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    while (n >= 8) { uint64_t v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; n -= 8; }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

static uint32_t crc32c_soft(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return ~crc;
}

uint32_t ckvm_crc32c(uint32_t crc, const void *data, size_t length) {
    return __builtin_cpu_supports("sse4.2") ? crc32c_sse42(crc, data, length) : crc32c_soft(crc, data, length);
}


int ckvm_cmpxchg16b(void *p, uint64_t *lo, uint64_t *hi, uint64_t new_lo, uint64_t new_hi) {
    uint8_t swapped;
    __asm__ volatile("lock cmpxchg16b %1\n\tsete %0"
                     : "=q"(swapped), "+m"(*(volatile __int128 *)p), "+a"(*lo), "+d"(*hi)
                     : "b"(new_lo), "c"(new_hi)
                     : "memory", "cc");
    return swapped;
}

void ckvm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3]) : "a"(leaf), "c"(subleaf));
}

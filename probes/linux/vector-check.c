/* vector-check PROCS CHECKS [WINDOW_MS]
 *
 * A Linux user program for the guest (static). Forks PROCS processes; in
 * each check, each loads its own pattern (from its index and the check's
 * number) into every vector register the CPU and XCR0 expose to user mode:
 * ymm0-15 (all 256 bits), and with AVX-512 zmm0-31 (all 512 bits) and the
 * opmask registers k0-7. It then spins WINDOW_MS (default 15) milliseconds
 * on the TSC, in assembly using only general-purpose registers and no
 * system calls, so that the kernel (HZ=100) preempts it, and stores every
 * register back and compares every byte. Load, spin and store are one asm
 * statement: no compiler-generated code runs between them.
 *
 * Context switches are counted outside the window (getrusage before and
 * after each check: ru_nvcsw + ru_nivcsw), so `switched` is the number of
 * checks whose window really saw another task run on its CPU.
 *
 * Each child prints
 *   vector-check: proc I: checks C mismatches M switched S ymm zmm opmask (bad xmm X ymm-high Y zmm-high Z zmm16-31 W opmask K)
 * where the `bad` counts say which part of the state was lost (a check can
 * count in several). The parent prints `vector-check: total mismatches N`
 * and exits 1 if N > 0.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int has_avx, has_avx512, has_bw, has_pkru;

/* The whole state one check loads and reads back. */
struct state {
    uint8_t zmm[32][64];   /* with AVX only: ymm0-15 in zmm[0..15][0..31] */
    uint64_t k[8];
    uint32_t pkru;
} __attribute__((aligned(64)));

static uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void features(void) {
    unsigned a, b, c, d;
    __cpuid(1, a, b, c, d);
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return;
    uint64_t xcr0 = xgetbv0();
    has_avx = (xcr0 & 6) == 6;
    if (!has_avx) return;
    __cpuid_count(7, 0, a, b, c, d);
    has_avx512 = ((b >> 16) & 1) && (xcr0 & 0xe0) == 0xe0;
    has_bw = has_avx512 && ((b >> 30) & 1);
    has_pkru = ((c >> 4) & 1) && (xcr0 & 0x200);   /* OSPKE, and PKRU in XCR0 */
}

static uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* TSC ticks per millisecond, against CLOCK_MONOTONIC over about 50 ms. */
static uint64_t tsc_per_ms(void) {
    double t0 = now();
    uint64_t c0 = rdtsc();
    while (now() - t0 < 0.05) {}
    double t1 = now();
    uint64_t c1 = rdtsc();
    return (uint64_t)((c1 - c0) / ((t1 - t0) * 1000.0));
}

/* Spins until the TSC passes `until` (rax, rdx, rcx only). */
#define SPIN \
    "1: pause\n\t" \
    "rdtsc\n\t" \
    "shl $32, %%rdx\n\t" \
    "or %%rax, %%rdx\n\t" \
    "cmp %[until], %%rdx\n\t" \
    "jb 1b\n\t"

/* PKRU (when %[pk] is not null): written after the vector loads, read
 * back after the spin; key 0 (bits 0-1) keeps full access. */
#define PK_LOAD \
    "test %[pk], %[pk]\n\t" \
    "jz 2f\n\t" \
    "mov (%[pk]), %%eax\n\t" \
    "xor %%ecx, %%ecx\n\t" \
    "xor %%edx, %%edx\n\t" \
    "wrpkru\n\t" \
    "2:\n\t"
#define PK_STORE \
    "test %[pk], %[pk]\n\t" \
    "jz 3f\n\t" \
    "xor %%ecx, %%ecx\n\t" \
    "rdpkru\n\t" \
    "mov %%eax, (%[pko])\n\t" \
    "3:\n\t"
#define PK_OPERANDS [pk] "r"(pk), [pko] "r"(pko)

#define Y(op, n) op " " #n "*32(%[in]), %%ymm" #n "\n\t"
#define YS(n) "vmovdqu %%ymm" #n ", " #n "*64(%[out])\n\t"

static void run_avx(const struct state *in, struct state *out, uint64_t until, const uint32_t *pk, uint32_t *pko) {
    __asm__ volatile(
        /* ymm n from in->zmm[n/2] rows: use a packed 32-byte stride view */
        Y("vmovdqu", 0) Y("vmovdqu", 1) Y("vmovdqu", 2) Y("vmovdqu", 3)
        Y("vmovdqu", 4) Y("vmovdqu", 5) Y("vmovdqu", 6) Y("vmovdqu", 7)
        Y("vmovdqu", 8) Y("vmovdqu", 9) Y("vmovdqu", 10) Y("vmovdqu", 11)
        Y("vmovdqu", 12) Y("vmovdqu", 13) Y("vmovdqu", 14) Y("vmovdqu", 15)
        PK_LOAD
        SPIN
        PK_STORE
        YS(0) YS(1) YS(2) YS(3) YS(4) YS(5) YS(6) YS(7)
        YS(8) YS(9) YS(10) YS(11) YS(12) YS(13) YS(14) YS(15)
        :
        : [in] "r"(in), [out] "r"(out), [until] "r"(until), PK_OPERANDS
        : "rax", "rcx", "rdx", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#define Z(n) "vmovdqu64 " #n "*64(%[in]), %%zmm" #n "\n\t"
#define ZS(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%[out])\n\t"
#define KQ(n) "kmovq 2048+" #n "*8(%[in]), %%k" #n "\n\t"
#define KQS(n) "kmovq %%k" #n ", 2048+" #n "*8(%[out])\n\t"
#define KW(n) "kmovw 2048+" #n "*8(%[in]), %%k" #n "\n\t"
#define KWS(n) "kmovw %%k" #n ", 2048+" #n "*8(%[out])\n\t"

/* zmm16-31 and k0-7 are not named as clobbers (gcc knows them only with
 * -mavx512f); nothing in this program keeps a value in them, and they are
 * call-clobbered in the ABI. */
static void run_avx512(const struct state *in, struct state *out, uint64_t until, const uint32_t *pk, uint32_t *pko) {
    __asm__ volatile(
        Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13) Z(14) Z(15)
        Z(16) Z(17) Z(18) Z(19) Z(20) Z(21) Z(22) Z(23) Z(24) Z(25) Z(26) Z(27) Z(28) Z(29) Z(30) Z(31)
        KQ(0) KQ(1) KQ(2) KQ(3) KQ(4) KQ(5) KQ(6) KQ(7)
        PK_LOAD
        SPIN
        PK_STORE
        ZS(0) ZS(1) ZS(2) ZS(3) ZS(4) ZS(5) ZS(6) ZS(7) ZS(8) ZS(9) ZS(10) ZS(11) ZS(12) ZS(13) ZS(14) ZS(15)
        ZS(16) ZS(17) ZS(18) ZS(19) ZS(20) ZS(21) ZS(22) ZS(23) ZS(24) ZS(25) ZS(26) ZS(27) ZS(28) ZS(29) ZS(30) ZS(31)
        KQS(0) KQS(1) KQS(2) KQS(3) KQS(4) KQS(5) KQS(6) KQS(7)
        :
        : [in] "r"(in), [out] "r"(out), [until] "r"(until), PK_OPERANDS
        : "rax", "rcx", "rdx", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* AVX-512F without BW: 16-bit opmask registers (kmovw). */
static void run_avx512_w(const struct state *in, struct state *out, uint64_t until, const uint32_t *pk, uint32_t *pko) {
    __asm__ volatile(
        Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13) Z(14) Z(15)
        Z(16) Z(17) Z(18) Z(19) Z(20) Z(21) Z(22) Z(23) Z(24) Z(25) Z(26) Z(27) Z(28) Z(29) Z(30) Z(31)
        KW(0) KW(1) KW(2) KW(3) KW(4) KW(5) KW(6) KW(7)
        PK_LOAD
        SPIN
        PK_STORE
        ZS(0) ZS(1) ZS(2) ZS(3) ZS(4) ZS(5) ZS(6) ZS(7) ZS(8) ZS(9) ZS(10) ZS(11) ZS(12) ZS(13) ZS(14) ZS(15)
        ZS(16) ZS(17) ZS(18) ZS(19) ZS(20) ZS(21) ZS(22) ZS(23) ZS(24) ZS(25) ZS(26) ZS(27) ZS(28) ZS(29) ZS(30) ZS(31)
        KWS(0) KWS(1) KWS(2) KWS(3) KWS(4) KWS(5) KWS(6) KWS(7)
        :
        : [in] "r"(in), [out] "r"(out), [until] "r"(until), PK_OPERANDS
        : "rax", "rcx", "rdx", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

static long switches(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_nvcsw + u.ru_nivcsw;
}

struct result { long checks, mismatches, switched, bad_xmm, bad_ymmh, bad_zmmh, bad_zmm16, bad_k, bad_pkru; };

static void child(int index, long checks, uint64_t window, struct result *r) {
    static struct state in, out;
    for (long c = 0; c < checks; c++) {
        /* The pattern: every byte depends on the process, the check and its place. */
        uint64_t seed = ((uint64_t)(index + 1) << 48) ^ ((uint64_t)c << 16);
        uint64_t *w = (uint64_t *)in.zmm;
        for (int i = 0; i < 32 * 8; i++) w[i] = splitmix(seed + i);
        for (int i = 0; i < 8; i++) in.k[i] = splitmix(seed + 0x1000 + i);
        if (!has_bw) for (int i = 0; i < 8; i++) in.k[i] &= 0xffff;
        in.pkru = (uint32_t)splitmix(seed + 0x2000) & ~3u;
        const uint32_t *pk = has_pkru ? &in.pkru : 0;
        memset(&out, 0xa5, sizeof out);
        if (!has_avx512) {
            /* run_avx reads ymm n at in + 32n and writes it at out + 64n. */
            static uint8_t packed[16][32] __attribute__((aligned(32)));
            for (int n = 0; n < 16; n++) memcpy(packed[n], in.zmm[n], 32);
            long s0 = switches();
            run_avx((const struct state *)packed, &out, rdtsc() + window, pk, &out.pkru);
            if (switches() != s0) r->switched++;
        } else {
            long s0 = switches();
            if (has_bw) run_avx512(&in, &out, rdtsc() + window, pk, &out.pkru);
            else run_avx512_w(&in, &out, rdtsc() + window, pk, &out.pkru);
            if (switches() != s0) r->switched++;
        }
        int nregs = has_avx512 ? 32 : 16, width = has_avx512 ? 64 : 32;
        int xmm = 0, ymmh = 0, zmmh = 0, zmm16 = 0, k = 0;
        for (int n = 0; n < nregs; n++) {
            if (n < 16) {
                if (memcmp(out.zmm[n], in.zmm[n], 16)) xmm = 1;
                if (memcmp(out.zmm[n] + 16, in.zmm[n] + 16, 16)) ymmh = 1;
                if (width == 64 && memcmp(out.zmm[n] + 32, in.zmm[n] + 32, 32)) zmmh = 1;
            } else if (memcmp(out.zmm[n], in.zmm[n], 64)) {
                zmm16 = 1;
            }
        }
        if (has_avx512 && memcmp(out.k, in.k, sizeof in.k)) k = 1;
        /* PKRU is reported on its own, not counted in `mismatches`. */
        if (has_pkru && out.pkru != in.pkru) r->bad_pkru++;
        r->checks++;
        r->bad_xmm += xmm; r->bad_ymmh += ymmh; r->bad_zmmh += zmmh; r->bad_zmm16 += zmm16; r->bad_k += k;
        if (xmm | ymmh | zmmh | zmm16 | k) r->mismatches++;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: vector-check PROCS CHECKS [WINDOW_MS]\n");
        return 2;
    }
    int procs = atoi(argv[1]);
    long checks = atol(argv[2]);
    double window_ms = argc > 3 ? atof(argv[3]) : 15;
    if (procs < 1 || procs > 64 || checks < 1) return 2;
    features();
    if (!has_avx) {
        printf("vector-check: no AVX in CPUID/XCR0: nothing to check\n");
        return 2;
    }
    uint64_t per_ms = tsc_per_ms();
    uint64_t window = (uint64_t)(per_ms * window_ms);
    printf("vector-check: %d procs, %ld checks each, window %.1f ms (%llu TSC ticks at %llu kHz), xcr0 %#llx, %s%s%s\n",
           procs, checks, window_ms, (unsigned long long)window, (unsigned long long)per_ms,
           (unsigned long long)xgetbv0(), has_avx512 ? "ymm zmm opmask" : "ymm", has_pkru ? " pkru" : "",
           has_avx512 && !has_bw ? " (16-bit opmask)" : "");
    fflush(stdout);

    struct result *results = mmap(NULL, sizeof(struct result) * procs, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (results == MAP_FAILED) return 2;
    memset(results, 0, sizeof(struct result) * procs);
    int go[2];
    if (pipe(go)) return 2;
    for (int i = 0; i < procs; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 2; }
        if (p == 0) {
            char b;
            close(go[1]);
            if (read(go[0], &b, 1) != 1) _exit(2);   /* start together */
            struct result *r = &results[i];
            child(i, checks, window, r);
            char line[256];
            int n = snprintf(line, sizeof line,
                             "vector-check: proc %d: checks %ld mismatches %ld switched %ld %s (bad xmm %ld ymm-high %ld zmm-high %ld zmm16-31 %ld opmask %ld) pkru-mismatches %ld%s\n",
                             i, r->checks, r->mismatches, r->switched, has_avx512 ? "ymm zmm opmask" : "ymm",
                             r->bad_xmm, r->bad_ymmh, r->bad_zmmh, r->bad_zmm16, r->bad_k, r->bad_pkru,
                             has_pkru ? "" : " (no pkru)");
            if (write(1, line, n) != n) _exit(2);
            _exit(r->mismatches ? 1 : 0);
        }
    }
    close(go[0]);
    double t0 = now();
    char bytes[64] = {0};
    if (write(go[1], bytes, procs) != procs) return 2;
    close(go[1]);
    int failed = 0;
    for (int i = 0; i < procs; i++) {
        int st;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) > 1) failed = 1;
    }
    long total = 0, switched = 0, done = 0, pkru = 0;
    for (int i = 0; i < procs; i++) {
        total += results[i].mismatches; switched += results[i].switched; done += results[i].checks; pkru += results[i].bad_pkru;
    }
    printf("vector-check: total checks %ld switched %ld in %.1f s\n", done, switched, now() - t0);
    if (has_pkru) printf("vector-check: total pkru-mismatches %ld\n", pkru);
    printf("vector-check: total mismatches %ld\n", total);
    if (failed || done != procs * checks) printf("vector-check: a child failed\n");
    return total || failed || done != procs * checks ? 1 : 0;
}

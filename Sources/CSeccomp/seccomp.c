// Per-thread-role seccomp allow-lists (see CSeccomp.h). The lists were made
// by running every test tier with the filters on and reading what each
// role calls; they name the calls glibc and the Swift runtime make on a
// role's behalf too (futex, mmap for allocation, rt_sigreturn for the
// vCPU kick signal, ...). ioctl is allowed by request number only.
#define _GNU_SOURCE
#include "CSeccomp.h"
#include "syscall_names.h"

#include <errno.h>
#include <linux/kvm.h>
#include <linux/sockios.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <ucontext.h>
#include <unistd.h>

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

// Every thread: memory, locks, signals, its own end, the log line on stderr.
static const int common_calls[] = {
    SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(close), SCMP_SYS(futex),
    SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(mprotect), SCMP_SYS(madvise), SCMP_SYS(mremap), SCMP_SYS(brk),
    SCMP_SYS(rt_sigprocmask), SCMP_SYS(rt_sigreturn), SCMP_SYS(sigaltstack),
    SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(gettid), SCMP_SYS(getpid), SCMP_SYS(tgkill),
    SCMP_SYS(clock_gettime), SCMP_SYS(clock_nanosleep), SCMP_SYS(nanosleep), SCMP_SYS(sched_yield),
    SCMP_SYS(restart_syscall), SCMP_SYS(getrandom), SCMP_SYS(poll), SCMP_SYS(ppoll),
    SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(lseek),
};

// Queue workers and the control thread make and use eventfds.
static const int eventfd_calls[] = { SCMP_SYS(eventfd2) };

// Creating threads (the spawner only; threads it creates inherit its
// filter and add their own). pthread_create maps and guards a stack and
// the new thread registers its robust list and rseq area.
static const int spawn_thread_calls[] = {
    SCMP_SYS(clone), SCMP_SYS(clone3), SCMP_SYS(set_robust_list), SCMP_SYS(rseq),
    SCMP_SYS(sched_getaffinity), SCMP_SYS(prctl), SCMP_SYS(seccomp),
};

// Running a host program (posix_spawn) and waiting for it.
static const int spawn_process_calls[] = {
    SCMP_SYS(clone), SCMP_SYS(clone3), SCMP_SYS(vfork), SCMP_SYS(execve), SCMP_SYS(wait4),
    SCMP_SYS(pipe2), SCMP_SYS(dup2), SCMP_SYS(rt_sigaction), SCMP_SYS(set_robust_list), SCMP_SYS(rseq),
};

static const int block_calls[] = {
    SCMP_SYS(pread64), SCMP_SYS(pwrite64), SCMP_SYS(preadv), SCMP_SYS(pwritev),
    SCMP_SYS(fdatasync), SCMP_SYS(fsync), SCMP_SYS(fallocate),
};
static const int net_calls[] = { SCMP_SYS(readv), SCMP_SYS(writev) };
static const int vsock_calls[] = {
    SCMP_SYS(connect), SCMP_SYS(accept), SCMP_SYS(accept4), SCMP_SYS(shutdown), SCMP_SYS(fcntl),
    SCMP_SYS(getsockopt), SCMP_SYS(sendto), SCMP_SYS(recvfrom), SCMP_SYS(openat), SCMP_SYS(readlink),
    SCMP_SYS(access), SCMP_SYS(faccessat), SCMP_SYS(faccessat2), // is /proc there (not in the jail)?
};
static const int control_calls[] = {
    SCMP_SYS(accept), SCMP_SYS(accept4), SCMP_SYS(fcntl), SCMP_SYS(getsockopt), SCMP_SYS(recvmsg),
    SCMP_SYS(sendmsg), SCMP_SYS(sendto), SCMP_SYS(recvfrom), SCMP_SYS(shutdown),
    // snapshots: into the files the client sent; /proc/self/pagemap
    // (opened here when not jailed)
    SCMP_SYS(pread64), SCMP_SYS(pwrite64), SCMP_SYS(ftruncate), SCMP_SYS(fdatasync), SCMP_SYS(fsync),
    SCMP_SYS(openat),
    // backup-begin keeps its own copies of the files the client sent
    SCMP_SYS(dup),
};
// unlink: an unjailed VMM's launcher is this thread, and removes the
// sockets it bound once the VM has stopped. pwrite, ftruncate, fdatasync:
// once the VM has stopped, each tracked disk is synced and its
// changed-block map saved, marked clean.
static const int main_calls[] = {
    SCMP_SYS(rt_sigtimedwait), SCMP_SYS(unlink), SCMP_SYS(unlinkat),
    SCMP_SYS(pwrite64), SCMP_SYS(ftruncate), SCMP_SYS(fdatasync),
};

// ioctl request numbers by role.
static const unsigned long vcpu_ioctls[] = {
    KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_GET_MSRS, KVM_SET_MSRS,
    KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS, KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS,
    // A deterministic machine injects its interrupts at the vCPU's exits.
    KVM_INTERRUPT,
    // Completing instructions KVM's emulator lacks (XSAVE, XRSTOR, FNCLEX).
    KVM_GET_XSAVE, KVM_SET_XSAVE, KVM_GET_XCRS,
};
// The control thread reads every vCPU's and the VM's state for a snapshot.
static const unsigned long control_ioctls[] = {
    KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_MSRS, KVM_GET_LAPIC, KVM_GET_MP_STATE, KVM_GET_VCPU_EVENTS,
    KVM_GET_XSAVE, KVM_GET_XCRS, KVM_GET_DEBUGREGS, KVM_GET_MSR_INDEX_LIST, KVM_GET_PIT2,
    KVM_GET_IRQCHIP, KVM_GET_CLOCK, KVM_GET_DIRTY_LOG,
};
static const unsigned long console_ioctls[] = { KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, TCGETS };
static const unsigned long main_ioctls[] = { KVM_GET_REGS, KVM_GET_SREGS, TCGETS, TCSETS, TCSETSW, TCSETSF };

static __thread char thread_name[32];

static void sigsys_handler(int sig, siginfo_t *info, void *context) {
    (void)sig;
    int nr = info->si_syscall;
    const char *name = nr >= 0 && nr < N(skiff_syscall_names) && skiff_syscall_names[nr] ? skiff_syscall_names[nr] : 0;
    char line[160];
    int n = 0;
    const char *parts[] = { "skiff: seccomp: thread ", thread_name[0] ? thread_name : "?",
                            " made a forbidden system call: ", name ? name : "syscall " };
    for (int i = 0; i < N(parts); i++)
        for (const char *p = parts[i]; *p && n < (int)sizeof line - 16; p++) line[n++] = *p;
    if (!name) { // the number, in decimal
        char digits[12]; int d = 0; unsigned v = (unsigned)nr;
        do { digits[d++] = (char)('0' + v % 10); v /= 10; } while (v && d < 11);
        while (d) line[n++] = digits[--d];
    }
    if (nr == SCMP_SYS(ioctl) && context) { // which request: the second argument, in hex
        unsigned long request = (unsigned long)((ucontext_t *)context)->uc_mcontext.gregs[REG_RSI];
        const char *p = " request 0x";
        while (*p) line[n++] = *p++;
        int shift = 28;
        while (shift > 0 && !((request >> shift) & 0xf)) shift -= 4;
        for (; shift >= 0; shift -= 4) line[n++] = "0123456789abcdef"[(request >> shift) & 0xf];
    }
    line[n++] = '\n';
    (void)!write(2, line, (size_t)n);
    syscall(SYS_exit_group, 1); // a Skiff error (exit status 1), its line printed
}

int skiff_seccomp_prepare(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigsys_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, 0) != 0) return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    return 0;
}

static int allow(scmp_filter_ctx ctx, const int *calls, int count) {
    for (int i = 0; i < count; i++) {
        int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, calls[i], 0);
        if (r != 0 && r != -EEXIST) return r; // roles overlap in the spawner's union
    }
    return 0;
}

static int allow_ioctls(scmp_filter_ctx ctx, const unsigned long *requests, int count) {
    for (int i = 0; i < count; i++) {
        int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                                 SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, requests[i] & 0xffffffffUL));
        if (r != 0 && r != -EEXIST) return r;
    }
    return 0;
}

// socket(2) for Unix stream sockets only.
static int allow_unix_sockets(scmp_filter_ctx ctx) {
    int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    return r == -EEXIST ? 0 : r;
}

static int add_role(scmp_filter_ctx ctx, int role);

// The spawner creates the device threads, which inherit its filter before
// adding theirs: it must allow everything they need.
static int add_spawner(scmp_filter_ctx ctx) {
    int r = allow(ctx, spawn_thread_calls, N(spawn_thread_calls));
    for (int role = SKIFF_ROLE_VCPU; r == 0 && role < SKIFF_ROLE_COUNT; role++)
        if (role != SKIFF_ROLE_SPAWNER) r = add_role(ctx, role);
    return r;
}

static int add_role(scmp_filter_ctx ctx, int role) {
    int r = allow(ctx, common_calls, N(common_calls));
    if (r) return r;
    switch (role) {
    case SKIFF_ROLE_MAIN:
        if ((r = allow(ctx, main_calls, N(main_calls)))) return r;
        if ((r = allow(ctx, eventfd_calls, N(eventfd_calls)))) return r;
        return allow_ioctls(ctx, main_ioctls, N(main_ioctls));
    case SKIFF_ROLE_VCPU:
        // MMIO writes activate and reset devices: eventfds, madvise (balloon).
        if ((r = allow(ctx, eventfd_calls, N(eventfd_calls)))) return r;
        return allow_ioctls(ctx, vcpu_ioctls, N(vcpu_ioctls));
    case SKIFF_ROLE_CONTROL:
        if ((r = allow(ctx, control_calls, N(control_calls)))) return r;
        if ((r = allow(ctx, eventfd_calls, N(eventfd_calls)))) return r;
        return allow_ioctls(ctx, control_ioctls, N(control_ioctls));
    case SKIFF_ROLE_CONSOLE:
        return allow_ioctls(ctx, console_ioctls, N(console_ioctls));
    case SKIFF_ROLE_SPAWNER:
        return add_spawner(ctx);
    case SKIFF_ROLE_BLOCK:
        return allow(ctx, block_calls, N(block_calls));
    case SKIFF_ROLE_NET:
        return allow(ctx, net_calls, N(net_calls));
    case SKIFF_ROLE_VSOCK:
        if ((r = allow(ctx, vsock_calls, N(vsock_calls)))) return r;
        return allow_unix_sockets(ctx);
    case SKIFF_ROLE_RNG:
    case SKIFF_ROLE_BALLOON:
        return 0;
    case SKIFF_ROLE_VCPU_DEVICES:
        if ((r = allow(ctx, block_calls, N(block_calls)))) return r;
        if ((r = allow(ctx, eventfd_calls, N(eventfd_calls)))) return r;
        return allow_ioctls(ctx, vcpu_ioctls, N(vcpu_ioctls));
    default:
        return -EINVAL;
    }
}

int skiff_seccomp_install(int role, const char *name, int spawn_processes) {
    strncpy(thread_name, name ? name : "", sizeof thread_name - 1);
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
    if (!ctx) return -ENOMEM;
    int r = add_role(ctx, role);
    if (r == 0 && spawn_processes) r = allow(ctx, spawn_process_calls, N(spawn_process_calls));
    if (r == 0) r = seccomp_load(ctx);
    seccomp_release(ctx);
    return r;
}

long skiff_seccomp_forbidden_call(void) {
    return syscall(SYS_ptrace, 0, 0, 0, 0); // PTRACE_TRACEME: in no role's list
}

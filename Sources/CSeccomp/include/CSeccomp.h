// seccomp-BPF allow-lists for the per-VM process, one per thread role,
// built with Debian's libseccomp. A thread installs its role's filter as
// the first thing it runs; a call outside it raises SIGSYS, whose handler
// prints one line naming the call and the thread, and ends the process.
#ifndef SKIFF_CSECCOMP_H
#define SKIFF_CSECCOMP_H

enum skiff_thread_role {
    SKIFF_ROLE_MAIN = 0,      // builds the VM, then waits for signals
    SKIFF_ROLE_VCPU,          // KVM_RUN and the port/MMIO devices it calls
    SKIFF_ROLE_CONTROL,       // control socket: pause, resume, snapshots
    SKIFF_ROLE_CONSOLE,       // host terminal -> serial port
    SKIFF_ROLE_SPAWNER,       // creates every thread started after the filters
    SKIFF_ROLE_BLOCK,         // virtio-blk worker
    SKIFF_ROLE_NET,           // virtio-net worker
    SKIFF_ROLE_VSOCK,         // virtio-vsock worker
    SKIFF_ROLE_RNG,           // virtio-rng worker
    SKIFF_ROLE_BALLOON,       // virtio-balloon worker
    SKIFF_ROLE_VCPU_DEVICES,  // a deterministic machine's vCPU: it serves virtio-blk and -rng itself
    SKIFF_ROLE_COUNT
};

/// Installs the SIGSYS handler (once per process). Returns 0 or -errno.
int skiff_seccomp_prepare(void);

/// Installs `role`'s filter on the calling thread (after
/// PR_SET_NO_NEW_PRIVS). `name` is the thread's name for the SIGSYS line.
/// `spawn_processes` adds what running host programs needs (the main
/// thread of an unjailed VMM that set up host networking). Returns 0 or -errno.
int skiff_seccomp_install(int role, const char *name, int spawn_processes);

/// For the tests only: makes a system call no role allows.
long skiff_seccomp_forbidden_call(void);

#endif

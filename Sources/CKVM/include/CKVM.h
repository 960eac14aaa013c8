// The parts of <linux/kvm.h> and the C library that Swift cannot import on
// its own: ioctl request numbers (function-like macros), atomics on memory
// Swift does not own (kvm_run, guest memory), and a few small wrappers.
#ifndef SKIFF_CKVM_H
#define SKIFF_CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/sysinfo.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <linux/falloc.h>
#include <sys/random.h>

static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_SET_BOOT_CPU_ID = KVM_SET_BOOT_CPU_ID;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const int CKVM_CAP_IOEVENTFD = KVM_CAP_IOEVENTFD;
static const int CKVM_CAP_IRQFD = KVM_CAP_IRQFD;

static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
// A deterministic machine's interrupts, injected from user space (no irqchip).
static const unsigned long CKVM_INTERRUPT = KVM_INTERRUPT;

// Saving and restoring a VM (snapshots).
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const uint32_t CKVM_MEM_LOG_DIRTY_PAGES = KVM_MEM_LOG_DIRTY_PAGES;

// Exit reasons and capabilities used by Swift code, re-exported as plain
// constants so the enum-like macros import with one type.
static const uint32_t CKVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t CKVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t CKVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t CKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t CKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t CKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t CKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const uint32_t CKVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t CKVM_EXIT_IRQ_WINDOW_OPEN = KVM_EXIT_IRQ_WINDOW_OPEN;
static const uint32_t CKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t CKVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const uint32_t CKVM_EXIT_DEBUG = KVM_EXIT_DEBUG;
static const uint8_t CKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;

static const int CKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int CKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY;
static const int CKVM_CAP_PIT2 = KVM_CAP_PIT2;
static const int CKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;
static const int CKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int CKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const uint32_t CKVM_PIT_SPEAKER_DUMMY = KVM_PIT_SPEAKER_DUMMY;

// ioctl with a pointer or integer argument; Swift's Glibc overlay has
// forms for these, but one typed entry point keeps call sites uniform.
static inline int ckvm_ioctl_ptr(int fd, unsigned long req, void *arg) {
    return ioctl(fd, req, arg);
}
static inline int ckvm_ioctl_val(int fd, unsigned long req, unsigned long arg) {
    return ioctl(fd, req, arg);
}

// kvm_run.immediate_exit is read by the kernel while another thread may
// write it: use real atomics.
static inline void ckvm_set_immediate_exit(struct kvm_run *run, uint8_t v) {
    __atomic_store_n(&run->immediate_exit, v, __ATOMIC_SEQ_CST);
}

// Pointers into kvm_run's exit union (anonymous unions import into Swift as
// computed properties, which copy; devices need the bytes in place).
static inline uint8_t *ckvm_mmio_data(struct kvm_run *r) { return r->mmio.data; }
static inline uint32_t ckvm_system_event_type(struct kvm_run *r) { return r->system_event.type; }

// Loads and stores of virtqueue indices in guest memory, which the guest
// writes concurrently: acquire/release so ring contents are ordered with
// the index, and a full fence for the EVENT_IDX handshake.
static inline uint16_t ckvm_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline void ckvm_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline void ckvm_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// File operations glibc only declares under _GNU_SOURCE (set in ckvm.c).
static const int CKVM_FALLOC_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
static const int CKVM_FALLOC_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
static const int CKVM_FALLOC_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
int ckvm_o_direct(void);
// lseek whence values glibc only names under _GNU_SOURCE (Linux's numbers).
static const int CKVM_SEEK_DATA = 3;
static const int CKVM_SEEK_HOLE = 4;

// Opens /dev/net/tun as the TAP interface `name` (created if missing,
// which needs CAP_NET_ADMIN): no packet info header, non-blocking. Returns
// the fd, or -1 with errno set. `actual` receives the kernel's name.
int ckvm_open_tap(const char *name, char actual[16]);
int ckvm_fallocate(int fd, int mode, off_t offset, off_t length);

// KVM_GET_MSR_INDEX_LIST on the system fd: the MSRs KVM saves and
// restores for a vCPU. Fills up to `capacity` indices; returns how many
// there are, or -1 with errno set.
int ckvm_msr_index_list(int kvm_fd, uint32_t *indices, uint32_t capacity);

// KVM_GET_MSRS / KVM_SET_MSRS for `count` MSRs (`values` read or written).
// Returns how many were processed (KVM stops at the first it refuses), or -1.
int ckvm_get_msrs(int vcpu_fd, const uint32_t *indices, uint64_t *values, uint32_t count);
int ckvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, uint32_t count);

// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (0 to
// start); the SSE4.2 instruction when the CPU has it.
uint32_t ckvm_crc32c(uint32_t crc, const void *data, size_t length);

// Atomically sets bits in a word of a bitmap shared between threads.
// LOCK CMPXCHG16B on guest memory, for a guest instruction KVM's PVM
// emulator lacks: other vCPUs see it as atomic. `p` is 16-byte aligned.
// Returns 1 if it swapped; *lo, *hi receive the old value either way.
int ckvm_cmpxchg16b(void *p, uint64_t *lo, uint64_t *hi, uint64_t new_lo, uint64_t new_hi);

// CPUID as this process sees it (the host CPU, or what the host's own
// hypervisor shows it): out = eax, ebx, ecx, edx.
void ckvm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);

// The KVM_EXIT_INTERNAL_ERROR / emulation-failure fields (an anonymous
// union member that does not import whole).
static inline uint64_t ckvm_emulation_failure_flags(struct kvm_run *r) { return r->emulation_failure.flags; }
static inline uint8_t ckvm_emulation_failure_size(struct kvm_run *r) { return r->emulation_failure.insn_size; }
static inline const uint8_t *ckvm_emulation_failure_bytes(struct kvm_run *r) { return r->emulation_failure.insn_bytes; }
static const uint64_t CKVM_EMULATION_FLAG_INSTRUCTION_BYTES = KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;

static inline void ckvm_atomic_or_u64(uint64_t *word, uint64_t bits) {
    __atomic_fetch_or(word, bits, __ATOMIC_RELAXED);
}
static inline uint64_t ckvm_atomic_exchange_u64(uint64_t *word, uint64_t value) {
    return __atomic_exchange_n(word, value, __ATOMIC_RELAXED);
}

// Installs a handler that does nothing, without SA_RESTART, so that a
// signal aimed at a vCPU thread makes KVM_RUN return with EINTR.
int ckvm_install_kick_handler(int signo);

// Blocks or unblocks a signal in the calling thread.
int ckvm_thread_block_signal(int signo, int block);

#endif

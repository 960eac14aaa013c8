/* Every CPU counts and prints its count, one line at a time:
 *     C<apic id, 2 hex digits> <count, 8 hex digits>
 * under a spinlock, so lines of different CPUs never mix. Counts start
 * at 1 and go up by one: a snapshot test checks the restored guest goes on
 * with no gap and no repeat. The boot CPU starts the others (INIT/SIPI,
 * as probes/smp.S does); they count in real mode from the trampoline. */
#include "common.h"
#define LAPIC_ID    0xfee00020
#define AP_COUNT    0x70f00
#define LINE_LOCK   0x70f10
#define DELAY       1000

/* The counting loop, for 32-bit flat code and 16-bit code alike (the
 * lock's address is given as the code sees it). %ebp: the APIC id. */
.macro COUNT lock
    xor %edi, %edi
100:
    inc %edi
101:
    mov $1, %eax
    xchg %eax, \lock
    test %eax, %eax
    jnz 101b
    mov $COM1, %dx
    mov $'C', %al
    out %al, %dx
    mov %ebp, %ebx
    shl $24, %ebx
    mov $2, %esi
102:
    rol $4, %ebx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 103f
    add $7, %al
103:
    out %al, %dx
    dec %esi
    jnz 102b
    mov $' ', %al
    out %al, %dx
    mov %edi, %ebx
    mov $8, %esi
104:
    rol $4, %ebx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 105f
    add $7, %al
105:
    out %al, %dx
    dec %esi
    jnz 104b
    mov $'\n', %al
    out %al, %dx
    movl $0, \lock
    mov $DELAY, %ecx
106:
    dec %ecx
    jnz 106b
    jmp 100b
.endm

    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    movl $0, AP_COUNT
    movl $0, LINE_LOCK
    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    mov %ebx, %ebp                   /* CPUs in the package, from CPUID */
    START_APS AP_COUNT, ap_timeout
    jmp counting
ap_timeout:
    mov $timeout, %esi
    call puts32
    HALT_FOREVER
counting:
    mov LAPIC_ID, %ebp
    shr $24, %ebp
    COUNT LINE_LOCK

DEFINE_PUTS32
timeout: .asciz "AP-TIMEOUT\n"
PVH_NOTE(entry)

    .section .low, "ax"
    .code16
ap_entry:
    cli
    mov %cs, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %ebp
    lock incl (AP_COUNT - 0x70000)
    COUNT (LINE_LOCK - 0x70000)

/* The boot CPU prints its APIC ID, then starts each other CPU in turn with
 * INIT and STARTUP IPIs through the xAPIC; each AP runs the real-mode
 * trampoline at 0x70000, prints its APIC ID (from CPUID) and counts itself
 * in. Prints "apic-id XX" per CPU, then "cpus-up N" and resets. */
#include "common.h"
#define LAPIC_ID    0xfee00020
#define AP_COUNT    0x70f00

    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    movl $0, AP_COUNT
    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    mov %ebx, %ebp                   /* CPUs in the package, from CPUID */
    mov $idmsg, %esi
    call puts32
    mov LAPIC_ID, %ebx
    shr $24, %ebx
    call hex8
    START_APS AP_COUNT, ap_timeout
    jmp done
ap_timeout:
    mov $timeout, %esi
    call puts32
done:
    mov $upmsg, %esi
    call puts32
    mov AP_COUNT, %ebx
    inc %ebx
    call hex8
    RESET_I8042
    HALT_FOREVER

/* hex8: %bl as two hex digits and a newline */
hex8:
    mov $COM1, %dx
    mov %bl, %al
    shr $4, %al
    call digit
    mov %bl, %al
    call digit
    mov $'\n', %al
    out %al, %dx
    ret
digit:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $7, %al
1:  out %al, %dx
    ret
DEFINE_PUTS32
idmsg:   .asciz "apic-id "
upmsg:   .asciz "cpus-up "
timeout: .asciz "AP-TIMEOUT\n"
PVH_NOTE(entry)

    .section .low, "ax"
    .code16
ap_entry:
    cli
    mov %cs, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0xe00, %sp
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov $(ap_msg - ap_entry), %si
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov %bl, %al
    shr $4, %al
    call ap_digit
    mov %bl, %al
    call ap_digit
    mov $'\n', %al
    out %al, %dx
    lock incl (AP_COUNT - 0x70000)
3:  hlt
    jmp 3b
ap_digit:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $7, %al
1:  out %al, %dx
    ret
ap_msg: .asciz "apic-id "

/* The boot CPU prints its APIC ID, then starts each other CPU in turn with
 * INIT and STARTUP IPIs through the xAPIC; each AP runs the real-mode
 * trampoline at 0x70000, prints its APIC ID (from CPUID) and counts itself
 * in. Prints "apic-id XX" per CPU, then "cpus-up N" and resets. */
#include "common.h"
#define LAPIC_ID    0xfee00020
#define ICR_LOW     0xfee00300
#define ICR_HIGH    0xfee00310
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
    mov $1, %edi
next:
    cmp %ebp, %edi
    jae done
    mov %edi, %eax
    shl $24, %eax
    mov %eax, ICR_HIGH
    movl $0x4500, ICR_LOW            /* INIT, level assert */
    mov %eax, ICR_HIGH
    movl $0x4670, ICR_LOW            /* STARTUP, vector 0x70 -> 0x70000 */
    mov $3000000, %ecx
1:  cmp %edi, AP_COUNT
    je 2f
    loop 1b
    mov $timeout, %esi
    call puts32
    jmp done
2:  inc %edi
    jmp next
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

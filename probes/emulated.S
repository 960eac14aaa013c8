/* Instructions KVM's PVM emulator lacks, at CPL0 in 32-bit protected mode:
 * int3 must raise #BP with the address after it pushed (its handler returns
 * with a 32-bit iret), then popcnt, lsl and stac must compute what hardware
 * computes. Prints one line per check; the harness compares. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    lgdt gdt_ptr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    /* IDT entry 3: a 32-bit interrupt gate to bp_handler */
    mov $bp_handler, %eax
    mov %ax, idt + 3 * 8
    shr $16, %eax
    mov %ax, idt + 3 * 8 + 6
    lidt idt_ptr
    mov $msg_int3, %esi
    call puts32
    int3
after_int3:
    mov $msg_back, %esi
    call puts32
    mov $0xf0f00001, %eax
    popcnt %eax, %ebx
    mov $msg_popcnt, %esi
    call puts32
    call hex32
    mov $0x10, %eax
    lsl %eax, %ebx
    mov $msg_lsl, %esi
    call puts32
    call hex32
    stac
    pushf
    pop %ebx
    clac
    pushf
    pop %eax
    xor %eax, %ebx
    mov $msg_ac, %esi
    call puts32
    call hex32
    mov $msg_end, %esi
    call puts32
    RESET_I8042
    HALT_FOREVER

bp_handler:
    mov $msg_bp, %esi
    call puts32
    mov (%esp), %ebx
    call hex32
    mov $msg_want, %esi
    call puts32
    mov $after_int3, %ebx
    call hex32
    mov $msg_nl, %esi
    call puts32
    iret

DEFINE_PUTS32
DEFINE_HEX32

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    /* 0x08: flat 32-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: flat data, limit 4 GiB */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    .balign 8
idt:
    .quad 0, 0, 0
    .quad 0x00008e0000080000    /* vector 3: offset filled in, selector 0x08, present interrupt gate */
idt_end:
idt_ptr:
    .word idt_end - idt - 1
    .long idt
msg_int3: .asciz "int3\n"
msg_bp: .asciz "bp ret="
msg_want: .asciz " want="
msg_nl: .asciz "\n"
msg_back: .asciz "back\n"
msg_popcnt: .asciz "popcnt="
msg_lsl: .asciz "\nlsl="
msg_ac: .asciz "\nac="
msg_end: .asciz "\nend\n"
PVH_NOTE(entry)

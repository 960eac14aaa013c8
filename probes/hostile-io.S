/* A hostile guest: writes garbage to and reads every I/O port (bytes to
 * all, words and dwords to every 8th), then to the 32-bit MMIO hole every
 * 64 KiB and to every register of the LAPIC and IOAPIC pages. Then it puts
 * the UART back, prints HOSTILE-DONE and halts: Skiff must still be alive. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $start, %esi
    call puts32
    xor %edx, %edx
1:  mov $0xa5, %al
    out %al, %dx
    in %dx, %al
    test $7, %dx                     /* every 8th port: 16- and 32-bit too */
    jnz 2f
    mov $0x5aa5, %ax
    out %ax, %dx
    in %dx, %ax
    mov $0x0badf00d, %eax
    out %eax, %dx
    in %dx, %eax
2:  inc %edx
    cmp $0x10000, %edx
    jb 1b

    mov $0x80000000, %edi            /* the 32-bit hole, every 64 KiB */
3:  movl $0x000000a5, (%edi)
    mov (%edi), %eax
    movb $0xa5, 1(%edi)
    add $0x10000, %edi
    jnz 3b
    mov $0xfee00000, %edi            /* LAPIC registers */
4:  movl $0x000000a5, (%edi)
    mov (%edi), %eax
    add $0x10, %edi
    cmp $0xfee01000, %edi
    jb 4b
    mov $0xfec00000, %edi            /* IOAPIC index/data */
5:  movl $0x000000a5, (%edi)
    mov (%edi), %eax
    add $0x10, %edi
    cmp $0xfec00100, %edi
    jb 5b

    mov $COM1+3, %dx                 /* UART back to 8N1, no loopback */
    mov $0x03, %al
    out %al, %dx
    mov $COM1+4, %dx
    mov $0x08, %al
    out %al, %dx
    mov $COM1+1, %dx
    xor %al, %al
    out %al, %dx
    mov $done, %esi
    call puts32
    HALT_FOREVER
DEFINE_PUTS32
start: .asciz "\nHOSTILE-START\n"
done:  .asciz "\nHOSTILE-DONE\n"
PVH_NOTE(entry)

/* Idles with the LAPIC timer ticking and prints "." on every tick: a
 * guest that always shows, within one tick, that it runs, at almost no
 * CPU cost (snapshot benchmarks restore it, many clones at once).
 * The tick is 1 ms, or 20 ms when the command line starts with "slow".
 * Prints "TICK-START" first. The timer vector's gate is built at run time
 * from the code segment the loader gave us. */
#include "common.h"
#define LAPIC       0xfee00000
#define VECTOR      0x40

    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $1000000, %edi               /* LAPIC timer ticks at 1 GHz under KVM */
    mov 0x18(%ebx), %eax             /* PVH start_info.cmdline_paddr */
    test %eax, %eax
    jz 1f
    cmpb $'s', (%eax)
    jne 1f
    mov $20000000, %edi
1:  lea handler, %eax
    mov %cs, %dx
    mov $(idt + VECTOR * 8), %esi
    mov %ax, (%esi)
    mov %dx, 2(%esi)
    movw $0x8e00, 4(%esi)            /* present, 32-bit interrupt gate */
    shr $16, %eax
    mov %ax, 6(%esi)
    lidt idtr
    mov $start, %esi
    call puts32
    movl $0x1ff, LAPIC + 0xf0        /* software enable, spurious 0xff */
    movl $0xb, LAPIC + 0x3e0         /* divide by 1 */
    movl $(0x20000 | VECTOR), LAPIC + 0x320  /* periodic */
    mov %edi, LAPIC + 0x380
idle:
    sti
    hlt
    jmp idle

/* Interrupts only ever arrive at the hlt above, so the handler drops its
 * frame and goes back there instead of returning: 32-bit iret is one of
 * the instructions PVM hosts cannot emulate. */
handler:
    mov $COM1, %dx
    mov $'.', %al
    out %al, %dx
    movl $0, LAPIC + 0xb0            /* EOI */
    add $12, %esp                    /* EIP, CS, EFLAGS */
    jmp idle

DEFINE_PUTS32
start: .asciz "TICK-START\n"
    .balign 8
idt: .fill 256, 8, 0
idtr: .word 256 * 8 - 1
      .long idt
PVH_NOTE(entry)

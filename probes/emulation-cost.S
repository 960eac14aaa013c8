/* For bench/emulation: loops of N exits of each kind at CPL0, a line after
 * each, so the host can time them: an empty loop (KVM's emulator alone),
 * port writes (an exit to the VMM and back: what a paravirtual call costs),
 * and instructions Skiff completes: popcnt (registers only), XSAVE and
 * XRSTOR of x87/SSE/AVX state (KVM_GET/SET_XSAVE and a guest-memory copy). */
#include "common.h"
#define N 4000
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov %cr4, %eax
    or $0x40600, %eax                /* OSFXSR, OSXMMEXCPT, OSXSAVE */
    mov %eax, %cr4
    xor %ecx, %ecx
    mov $7, %eax                     /* XCR0: x87, SSE, AVX */
    xor %edx, %edx
    xsetbv
    mov $msg_go, %esi
    call puts32
    mov $N, %ecx
1:  nop
    loop 1b
    mov $msg_a, %esi
    call puts32
    mov $N, %ecx
2:  out %al, $0x80
    loop 2b
    mov $msg_b, %esi
    call puts32
    mov $N, %ecx
3:  popcnt %ecx, %ebx
    loop 3b
    mov $msg_c, %esi
    call puts32
    mov $7, %eax
    xor %edx, %edx
    mov $N, %ecx
4:  xsave area
    loop 4b
    mov $msg_d, %esi
    call puts32
    mov $7, %eax
    xor %edx, %edx
    mov $N, %ecx
5:  xrstor area
    loop 5b
    mov $msg_e, %esi
    call puts32
    RESET_I8042
    HALT_FOREVER
DEFINE_PUTS32
msg_go: .asciz "go\n"
msg_a: .asciz "empty\n"
msg_b: .asciz "pio\n"
msg_c: .asciz "popcnt\n"
msg_d: .asciz "xsave\n"
msg_e: .asciz "xrstor\n"
    .bss
    .balign 64
area: .skip 4096
PVH_NOTE(entry)

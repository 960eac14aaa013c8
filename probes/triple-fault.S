/* Loads an empty IDT and executes ud2: #UD, #GP and #DF cannot be
 * delivered, so the CPU shuts down (a triple fault). */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $msg, %esi
    call puts32
    lidt idtr
    ud2
    HALT_FOREVER
DEFINE_PUTS32
    .balign 8
idtr: .word 0
      .long 0
msg: .asciz "BEFORE-TRIPLE-FAULT\n"
PVH_NOTE(entry)

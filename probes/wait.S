/* Prints WAITING and halts with interrupts off: a guest that does nothing
 * until the host stops it. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $msg, %esi
    call puts32
    HALT_FOREVER
DEFINE_PUTS32
msg: .asciz "WAITING\n"
PVH_NOTE(entry)

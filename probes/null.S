/* The null probe: prints a marker and resets through the i8042. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $msg, %esi
    call puts32
    RESET_I8042
    HALT_FOREVER
DEFINE_PUTS32
msg: .asciz "SKIFF-PROBE-OK\n"
PVH_NOTE(entry)

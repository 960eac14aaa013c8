/* Executes popcnt at CPL0, which KVM's PVM emulator lacks (elsewhere the
 * probe just resets): Skiff must stop with a one-line reason. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $msg, %esi
    call puts32
    popcnt %eax, %eax
    RESET_I8042
    HALT_FOREVER
DEFINE_PUTS32
msg: .asciz "BEFORE-POPCNT\n"
PVH_NOTE(entry)

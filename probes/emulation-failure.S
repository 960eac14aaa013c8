/* Executes crc32 at CPL0, which neither KVM's PVM emulator nor Skiff's
 * completion of missing instructions has (elsewhere the probe just
 * resets): Skiff must stop with a one-line reason naming the bytes. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
    mov $msg, %esi
    call puts32
    crc32l %eax, %eax
    RESET_I8042
    HALT_FOREVER
DEFINE_PUTS32
msg: .asciz "BEFORE-CRC32\n"
PVH_NOTE(entry)

/* A hostile guest that exits as fast as it can (port 0x80, which no device
 * claims) forever, printing a dot every 20000 exits so the host can see it
 * is still served. */
#include "common.h"
    .code32
    .text
    .globl entry
entry:
    SETUP_STACK
1:  mov $20000, %ecx
2:  out %al, $0x80
    loop 2b
    mov $COM1, %dx
    mov $'.', %al
    out %al, %dx
    jmp 1b
PVH_NOTE(entry)

/* Prints terminal control sequences, as a hostile guest would to reach
 * the host's terminal: an OSC title change, a CSI clear screen, a raw C1
 * CSI byte, a UTF-8-encoded C1 CSI, a lone continuation byte, BEL, DEL;
 * and text that must pass as it is (UTF-8 "é", tab, backspace). Resets. */
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
msg:
    .ascii "ESC-START\n"
    .ascii "\033]0;owned\007|\033[2J|\2332J|\302\233|\200|\177|caf\303\251\tx\by\n"
    .asciz "ESC-END\n"
PVH_NOTE(entry)

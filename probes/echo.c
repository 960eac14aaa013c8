/* A console for attach's tests: prints ECHO-READY, then answers each line
 * typed on its serial port with the line in capitals ("hello" -> "HELLO"),
 * polling the UART's line status; it never ends by itself. */
#include "rt/rt.h"

int main(void) {
    puts_("ECHO-READY\n");
    char line[128];
    int n = 0;
    for (;;) {
        if (!(inb(0x3fd) & 1)) { __asm__ volatile("pause"); continue; }
        char c = (char)inb(0x3f8);
        if (c == '\r' || c == '\n') {
            if (!n) continue;
            line[n++] = '\n';
            line[n] = 0;
            puts_(line);
            n = 0;
        } else if (n < 120) {
            line[n++] = (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
        }
    }
}

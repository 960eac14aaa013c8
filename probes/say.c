/* Prints each command-line word after "say" up to "--" (the VMM appends
 * words of its own after), one per line with '_' made a space, then resets: a guest that says how it ended ("skiff: exit 7",
 * "Kernel panic - not syncing: ...") for the tests of skiff run's exit status. */
#include "rt/rt.h"

int main(void) {
    const char *p = rt_cmdline();
    while (*p && !(p[0] == 's' && p[1] == 'a' && p[2] == 'y' && (p[3] == ' ' || !p[3]))) p++;
    if (!*p) return 0;
    p += 3;
    char line[256];
    while (*p) {
        while (*p == ' ') p++;
        int n = 0;
        while (*p && *p != ' ' && n < 254) { line[n++] = *p == '_' ? ' ' : *p; p++; }
        if (!n || (n == 2 && line[0] == '-' && line[1] == '-')) break;
        line[n++] = '\n';
        line[n] = 0;
        puts_(line);
    }
    return 0;
}

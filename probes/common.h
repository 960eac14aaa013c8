/* Shared by the probe guests: a PVH entry note and 32-bit helpers that
 * talk to the 8250 at 0x3f8 and the i8042 reset line. They run at CPL0,
 * which PVM hosts emulate: keep them to a few hundred instructions. */
#define COM1 0x3f8

#define PVH_NOTE(sym) \
    .pushsection .note.Xen, "a"; .balign 4; \
    .long 4; .long 4; .long 18; .asciz "Xen"; .long sym; \
    .popsection

/* puts32: print the NUL-terminated string at %esi (clobbers eax, edx, esi) */
#define DEFINE_PUTS32 \
puts32: \
    mov $COM1, %dx; \
1:  lodsb; \
    test %al, %al; \
    jz 2f; \
    out %al, %dx; \
    jmp 1b; \
2:  ret

/* hex32: print %ebx as 8 hex digits (clobbers eax, ecx, edx) */
#define DEFINE_HEX32 \
hex32: \
    mov $8, %ecx; \
    mov $COM1, %dx; \
1:  rol $4, %ebx; \
    mov %bl, %al; \
    and $0xf, %al; \
    add $'0', %al; \
    cmp $'9', %al; \
    jbe 2f; \
    add $7, %al; \
2:  out %al, %dx; \
    loop 1b; \
    ret

/* PVH gives no stack: each probe starts with this. */
#define SETUP_STACK mov $0x90000, %esp

#define RESET_I8042 mov $0xfe, %al; out %al, $0x64
#define HALT_FOREVER 9: hlt; jmp 9b

/* START_APS count, timeout: starts CPUs 1 .. %ebp-1 one at a time with
 * INIT and STARTUP IPIs through the xAPIC (vector 0x70: the real-mode
 * trampoline at 0x70000); each AP adds one to the dword at `count` when
 * it is up. Jumps to `timeout` if one does not come. Clobbers eax, ecx, edi. */
.macro START_APS count, timeout
    mov $1, %edi
200:
    cmp %ebp, %edi
    jae 203f
    mov %edi, %eax
    shl $24, %eax
    mov %eax, 0xfee00310             /* ICR high: destination */
    movl $0x4500, 0xfee00300         /* INIT */
    mov %eax, 0xfee00310
    movl $0x4670, 0xfee00300         /* STARTUP, vector 0x70 */
    mov $3000000, %ecx
201:
    cmp %edi, \count
    je 202f
    loop 201b
    jmp \timeout
202:
    inc %edi
    jmp 200b
203:
.endm

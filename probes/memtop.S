/* Entered in 64-bit mode (no PVH note; Skiff identity-maps all RAM) with
 * RSI at the zero page. Finds the top of RAM from the e820 map, writes and
 * reads back patterns at the top, just below the 32-bit hole and just
 * above 4 GiB, and prints "MEMTOP <top> OK" or "... BAD". */
    .code64
    .text
    .globl entry
entry:
    mov $0x90000, %rsp
    movzbl 0x1e8(%rsi), %ecx
    lea 0x2d0(%rsi), %rdi
    xor %r8, %r8
1:  test %ecx, %ecx
    jz 2f
    cmpl $1, 16(%rdi)
    jne 3f
    mov (%rdi), %rax
    add 8(%rdi), %rax
    cmp %r8, %rax
    cmova %rax, %r8
3:  add $20, %rdi
    dec %ecx
    jmp 1b
2:  mov $msg, %rsi
    call puts64
    mov %r8, %rbx
    call hex64
    movabs $0x5aa55aa5deadbeef, %r9
    xor %r10, %r10                   /* error count */
    mov %r9, -8(%r8)
    mov $0x7ffffff8, %r11
    mov %r9, (%r11)
    movabs $0x100000000, %r12
    cmp %r12, %r8
    jbe 4f
    mov %r9, (%r12)
    cmp (%r12), %r9
    setne %al
    add %al, %r10b
4:  cmp -8(%r8), %r9
    setne %al
    add %al, %r10b
    cmp (%r11), %r9
    setne %al
    add %al, %r10b
    mov $ok, %rsi
    test %r10, %r10
    jz 5f
    mov $bad, %rsi
5:  call puts64
    mov $0xfe, %al
    out %al, $0x64
6:  hlt
    jmp 6b

puts64:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

hex64:
    mov $16, %ecx
    mov $0x3f8, %dx
1:  rol $4, %rbx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $7, %al
2:  out %al, %dx
    loop 1b
    ret

msg: .asciz "MEMTOP "
ok:  .asciz " OK\n"
bad: .asciz " BAD\n"

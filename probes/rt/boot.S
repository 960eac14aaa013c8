/* Probe runtime: PVH 32-bit entry -> long mode -> CPL3 main().
 * Identity-maps 4 GiB with 2 MiB user-accessible pages (RAM and MMIO
 * alike), loads a GDT with user segments and a TSS, and an IDT whose #GP
 * handler performs the port I/O (in/out) and hlt that CPL3 code may not
 * do: on PVM hosts CPL0 is emulated, so only those instructions pay for it.
 * Any other exception prints "FAULT <vector>" and resets. Saves EBX (the
 * PVH start_info) for rt_cmdline(). Runs under Skiff and QEMU alike. */
#define COM1 0x3f8
    .code32
    .section .text.boot, "ax"
    .globl entry
entry:
    mov %ebx, pvh_start_info
    mov $kstack_top, %esp
    /* page tables: PML4 -> PDPT -> 4 PDs of 2 MiB pages, P|W|U|PS */
    mov $pd, %edi
    xor %eax, %eax
    mov $0x87, %ecx
1:  mov %ecx, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %ecx
    add $8, %edi
    inc %eax
    cmp $2048, %eax
    jb 1b
    mov $pdpt, %edi
    mov $pd, %eax
    or $7, %eax
    mov $4, %ecx
2:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 2b
    mov $pdpt, %eax
    or $7, %eax
    mov %eax, pml4
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax                 /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax                 /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    and $~0x4, %eax                 /* no x87 emulation */
    or $0x80000023, %eax            /* PG, NE, MP, PE */
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    /* TSS descriptor base */
    lea tss(%rip), %rax
    mov %ax, gdt+0x28+2
    shr $16, %rax
    mov %al, gdt+0x28+4
    mov %ah, gdt+0x28+7
    shr $16, %rax
    mov %eax, gdt+0x28+8
    lea kstack_top(%rip), %rax
    mov %rax, tss+4                 /* rsp0 */
    mov $0x28, %ax
    ltr %ax
    /* IDT: every exception to fault_stub, #GP to gp_handler; vectors
     * 32-47 (the PIC's IRQs 0-15, for probes that program it and sti) to
     * irq_stubs, which count them in irq_count */
    lea idt(%rip), %rdi
    xor %ecx, %ecx
3:  lea fault_stub(%rip), %rax
    cmp $32, %ecx
    jb 10f
    lea irq_stubs(%rip), %rax
    mov %ecx, %edx
    sub $32, %edx
    shl $4, %edx
    add %rdx, %rax
    jmp 4f
10: cmp $13, %ecx
    jne 4f
    lea gp_handler(%rip), %rax
4:  mov %ax, (%rdi)
    movw $0x08, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    mov %ecx, %eax
    add $16, %rdi
    inc %ecx
    cmp $48, %ecx
    jb 3b
    lidt idt_ptr(%rip)
    /* to CPL3: SS, RSP, RFLAGS, CS, RIP */
    pushq $0x23
    lea ustack_top(%rip), %rax
    push %rax
    pushq $0x2
    pushq $0x1b
    lea user_start(%rip), %rax
    push %rax
    iretq

user_start:
    call main
    mov $0xfe, %al                  /* main returned: reset */
    out %al, $0x64
5:  jmp 5b

/* #GP from CPL3: emulate out/in/hlt at the faulting RIP. Stack: rax, rdx,
 * rsi, error code, rip, cs, rflags, rsp, ss. */
gp_handler:
    push %rax
    push %rdx
    push %rsi
    mov 32(%rsp), %rsi
    mov 8(%rsp), %rdx
    mov 16(%rsp), %rax
    movzbl (%rsi), %esi
    cmp $0xee, %esi
    je do_outb
    cmp $0xef, %esi
    je do_outl
    cmp $0xec, %esi
    je do_inb
    cmp $0xed, %esi
    je do_inl
    cmp $0xf4, %esi
    je do_hlt
    cmp $0xfb, %esi
    je do_sti
    cmp $0xfa, %esi
    je do_cli
    mov $13, %eax
    jmp fatal
do_sti: orq $0x200, 48(%rsp)        /* IF in the saved RFLAGS */
    jmp gp_done
do_cli: andq $~0x200, 48(%rsp)
    jmp gp_done
do_outb: out %al, %dx
    jmp gp_done
do_outl: out %eax, %dx
    jmp gp_done
do_inb: in %dx, %al
    mov %al, 16(%rsp)
    jmp gp_done
do_inl: in %dx, %eax
    mov %eax, 16(%rsp)
    jmp gp_done
do_hlt: hlt
    jmp do_hlt
gp_done:
    incq 32(%rsp)
    pop %rsi
    pop %rdx
    pop %rax
    add $8, %rsp
    iretq

/* IRQ n (vector 32 + n): counted, EOI'd (the slave too from IRQ 8), and
 * back. 16 bytes each, so the IDT's loop can find them. */
    .balign 16
irq_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 16
    pushq $\n
    jmp irq_common
    .endr
irq_common:
    push %rax
    push %rdx
    mov 16(%rsp), %rax
    lea irq_count(%rip), %rdx
    incq (%rdx,%rax,8)
    mov $0x20, %al
    cmpq $8, 16(%rsp)
    jb 11f
    out %al, $0xa0
11: out %al, $0x20
    pop %rdx
    pop %rax
    add $8, %rsp
    iretq

fault_stub:
    mov $0xff, %eax
fatal:
    mov %eax, %ebx
    mov $COM1, %dx
    lea fault_msg(%rip), %rsi
6:  lodsb
    test %al, %al
    jz 7f
    out %al, %dx
    jmp 6b
7:  mov %bl, %al
    shr $4, %al
    call hexdigit
    mov %bl, %al
    call hexdigit
    mov $'\n', %al
    out %al, %dx
    mov $0xfe, %al
    out %al, $0x64
8:  hlt
    jmp 8b
hexdigit:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 9f
    add $7, %al
9:  out %al, %dx
    ret

    .section .rodata
fault_msg: .asciz "\nFAULT "
    .section .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 kernel code 64 */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00affa000000ffff        /* 0x18 user code 64 */
    .quad 0x00cff2000000ffff        /* 0x20 user data */
    .quad 0x0000890000000067        /* 0x28 TSS (base filled in) */
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
idt_ptr:
    .word 48 * 16 - 1
    .quad idt

    .pushsection .note.Xen, "a"
    .balign 4
    .long 4, 4, 18
    .asciz "Xen"
    .long entry
    .popsection

    .section .bss
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096 * 4
idt:  .skip 48 * 16
tss:  .skip 104
    .balign 16
kstack: .skip 16384
kstack_top:
ustack: .skip 65536
ustack_top:
    .globl pvh_start_info
pvh_start_info: .quad 0
    .globl irq_count
    .balign 8
irq_count: .skip 16 * 8

/* Start-up code for guest_smp's application processors. The boot CPU
 * copies the bytes from ap_trampoline_start to ap_trampoline_end to
 * AP_TRAMPOLINE (0x30000) and fills in the three words at the end; a
 * Startup IPI with vector 0x30 then starts an AP in real mode at
 * CS:IP = 0x3000:0000 (Intel SDM vol. 3 §8.4.4.1, MP initialization). The
 * code goes to protected mode, then to long mode on the boot CPU's page
 * tables, takes its stack and jumps to its C entry. Everything it touches
 * is addressed at its copy, so each address is AP_TRAMPOLINE plus an
 * offset from ap_trampoline_start. */

#define BASE 0x30000
#define AT(sym) (BASE + ((sym) - ap_trampoline_start))

    .section .rodata
    .balign 16
    .globl ap_trampoline_start, ap_trampoline_end
    .globl ap_tramp_cr3, ap_tramp_stack, ap_tramp_entry

    .code16
ap_trampoline_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl tr_gdt_desc - ap_trampoline_start
    movl %cr0, %eax
    orl $1, %eax                    /* CR0.PE */
    movl %eax, %cr0
    ljmpl $0x08, $AT(tr32)

    .code32
tr32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl AT(ap_tramp_cr3), %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax           /* CR0.PG */
    movl %eax, %cr0
    ljmp $0x18, $AT(tr64)

    .code64
tr64:
    movq AT(ap_tramp_stack), %rsp
    movq AT(ap_tramp_entry), %rax
    jmp *%rax

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
    .quad 0x00af9a000000ffff        /* 0x18: 64-bit code */
tr_gdt_desc:
    .word tr_gdt_desc - tr_gdt - 1
    .long AT(tr_gdt)
    .balign 8
ap_tramp_cr3:   .quad 0
ap_tramp_stack: .quad 0
ap_tramp_entry: .quad 0
ap_trampoline_end:

    .section .note.GNU-stack, "", @progbits

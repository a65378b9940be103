/* Entry for sbx test guests: the PVH ABI hands over in 32-bit protected
 * mode with paging off and EBX = hvm_start_info. Build an identity map of
 * the first 4 GiB (2 MiB pages; MMIO devices live just below 4 GiB), enter
 * long mode, and call
 * guest_main(start_info). If guest_main returns, reboot through the i8042
 * (how a guest ends its VM). Avoids anything PVM cannot emulate. */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4              /* namesz: "Xen\0" */
    .long 4              /* descsz */
    .long 18             /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    movl %ebx, %esi                 /* keep start_info */

    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    xorl %ecx, %ecx                 /* pdpt[0..3] -> the four page directories */
0:  movl %ecx, %eax
    shll $12, %eax
    addl $pd, %eax
    orl $3, %eax
    movl %eax, pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 0b
    xorl %ecx, %ecx                 /* 2048 2 MiB pages = 4 GiB */
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* present, writable, 2 MiB */
    movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 1b

    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq stack_top(%rip), %rsp
    movl %esi, %edi                 /* zero-extends: start_info */
    call guest_main
    .globl guest_reboot
guest_reboot:
    movb $0xfe, %al
    outb %al, $0x64                 /* i8042: pulse reset line */
2:  pause
    jmp 2b

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096
    .balign 16
    .skip 16384
stack_top:

    /* No executable stack. */
    .section .note.GNU-stack, "", @progbits
